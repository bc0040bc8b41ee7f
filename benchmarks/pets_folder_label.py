"""Issue 13's check of ``weakseg label``: the pet subset as a user's folder, labelled, exported, scored.

    python benchmarks/pets_folder_label.py --data-root ../shared/data --work runs/pets-folder [label options]

1. Writes ``WORK/folder``: every image of the Oxford-IIIT Pet subset (trainval and test) in ``images/``; the tight
   box of each pet (each trimap object) for every image in ``boxes.json`` (COCO); the trimaps of 5 % of the
   trainval images (chosen with the budget's seeded rule) as masks; the breed tags in ``labels.csv``. No other
   ground truth is in the folder.
2. Runs ``weakseg label WORK/folder --out WORK/label --export coco`` (extra arguments are passed on), timed.
3. Decodes the exported COCO RLE with pycocotools and scores every image that had no mask against its trimap
   (boundary ignored): mean per-image IoU, and the share of masks with IoU < 0.7 among the 10 % ranked worst by
   ``review.csv`` against that share overall. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from weakseg.budget import choose_subset
from weakseg.data import build_dataset
from weakseg.data.sample import IGNORE_INDEX
from weakseg.io import write_png
from weakseg.labelling import read_review
from weakseg.sources.boxes import boxes_from_mask


def write_folder(data_root: Path, folder: Path, coverage: float, seed: int) -> dict[str, np.ndarray]:
    """The pet subset as a plain folder; returns the trimaps (0/1, 255 boundary) of every image by name."""
    root = data_root / "oxford-iiit-pet-subset"
    splits = {split: build_dataset("oxford_pet", root, split) for split in ("trainval", "test")}
    masked = set(choose_subset(splits["trainval"].names, coverage, seed, "masks"))
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pet"}]}
    rows, truth = ["name,label"], {}
    for ds in splits.values():
        for name in ds.names:
            sample = ds[ds.names.index(name)]
            truth[name] = sample.mask
            os.symlink((root / "images" / f"{name}.jpg").resolve(), folder / "images" / f"{name}.jpg")
            height, width = sample.mask.shape
            coco["images"].append(
                {"id": len(coco["images"]) + 1, "file_name": f"{name}.jpg", "height": height, "width": width}
            )
            for x0, y0, x1, y1 in boxes_from_mask(sample.mask).tolist():
                coco["annotations"].append(
                    {"id": len(coco["annotations"]) + 1, "image_id": len(coco["images"]), "category_id": 1,
                     "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
                )  # fmt: skip
            rows.append(f"{name},{ds.tag_classes[sample.labels[0]]}")
            if name in masked:  # a user's mask: the pet (trimap class 1) as 255, the trimap boundary as background
                write_png(folder / "masks" / f"{name}.png", np.where(sample.mask == 1, 255, 0).astype(np.uint8))
    (folder / "boxes.json").write_text(json.dumps(coco))
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    return truth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/pets-folder"))
    parser.add_argument("--coverage", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0)
    args, label_args = parser.parse_known_args()
    from pycocotools.coco import COCO

    truth = write_folder(args.data_root, args.work / "folder", args.coverage, args.seed)
    masked = {p.stem for p in (args.work / "folder" / "masks").glob("*.png")}
    command = ["weakseg", "label", str(args.work / "folder"), "--out", str(args.work / "label"), "--export", "coco"]
    started = time.perf_counter()
    subprocess.run([*command, *label_args], check=True)
    minutes = (time.perf_counter() - started) / 60
    coco = COCO(str(args.work / "label" / "export" / "coco" / "annotations.json"))
    scores = {}
    for image in coco.dataset["images"]:
        name = Path(image["file_name"]).stem
        if name in masked:
            continue
        pred = np.zeros((image["height"], image["width"]), bool)
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            pred |= coco.annToMask(ann).astype(bool)
        known = truth[name] != IGNORE_INDEX
        fg = (truth[name] == 1) & known
        union = int(((pred & known) | fg).sum())
        scores[name] = float((pred & fg).sum() / union) if union else 1.0
    review = [r["name"] for r in read_review(args.work / "label" / "review.csv") if r["name"] in scores]
    worst = review[: max(1, len(review) // 10)]
    bad = {n for n, s in scores.items() if s < 0.7}
    line = {
        "bench": "pets_folder_label",
        "command": " ".join([*command, *label_args]),
        "minutes": round(minutes, 1),
        "images_scored": len(scores),
        "masks_given": len(masked),
        "mean_iou": round(float(np.mean(list(scores.values()))), 4),
        "share_below_0.7": round(len(bad) / len(scores), 4),
        "share_below_0.7_in_worst_10pct": round(len(bad & set(worst)) / len(worst), 4),
    }
    print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
