"""Issue 14: the stage table of ``weakseg label`` before and after the LiteMedSAM speed-up: one folder of boxed
images labelled with LiteMedSAM in PyTorch float32 (``backend=torch``, as before) and in ONNX Runtime (the default
on a CPU).

    python benchmarks/label_stages.py --data-root ../shared/data --dataset kvasir --images 30 --epochs 2 --rounds 3

Writes ``WORK/folder``: the first ``--images`` Kvasir-SEG train images with the dataset's boxes, or Oxford-IIIT
Pet trainval images with the tight box of each pet (COCO ``boxes.json``), symlinked, and nothing else (no masks,
no tags: every image goes through the box generator and GrabCut). Once untimed, LiteMedSAM is exported to ONNX
(``$WEAKSEG_CACHE/onnx``) if it is not already, so that the timed runs only open it. Then runs
``weakseg bench label WORK/folder`` once per path per round, the order alternating, each in a fresh process and
output folder, prints each JSON line, then a markdown table: the median seconds of each stage over the rounds,
the run's wall time and images/s, and the per-round ratio of ``sam`` seconds (before / after) with its median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

from weakseg.bench import LABEL_STAGES
from weakseg.data import build_dataset
from weakseg.sources.boxes import boxes_from_mask

PATHS = {"before (torch fp32)": "backend=torch", "after (onnxruntime)": "backend=onnxruntime"}
DATASETS = {"kvasir": ("kvasir-seg", "train"), "oxford_pet": ("oxford-iiit-pet-subset", "trainval")}


def write_folder(data_root: Path, dataset: str, folder: Path, count: int) -> None:
    """The first ``count`` images of ``dataset`` (symlinks) and their boxes (COCO), no masks and no tags."""
    sub, split = DATASETS[dataset]
    root = data_root / sub
    ds = build_dataset(dataset, root, split)
    shutil.rmtree(folder, ignore_errors=True)
    (folder / "images").mkdir(parents=True)
    coco: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
    for name in ds.names[:count]:
        sample = ds.load(name)
        boxes = sample.boxes if dataset == "kvasir" else boxes_from_mask(sample.mask)
        os.symlink((root / "images" / f"{name}.jpg").resolve(), folder / "images" / f"{name}.jpg")
        image_id = len(coco["images"]) + 1
        height, width = sample.image.shape[:2]
        coco["images"].append({"id": image_id, "file_name": f"{name}.jpg", "height": height, "width": width})
        for x0, y0, x1, y1 in boxes.tolist():
            coco["annotations"].append(
                {"id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )  # fmt: skip
    (folder / "boxes.json").write_text(json.dumps(coco))


def export_once(folder: Path) -> None:
    """LiteMedSAM's ONNX file, made now if missing, so that no timed run pays for the export."""
    import numpy as np

    from weakseg.io import read_image
    from weakseg.sources.sam import build_mask_generator

    image = read_image(next((folder / "images").iterdir()))
    build_mask_generator("litemedsam", backend="onnxruntime")([image], [np.float32([[0, 0, 10, 10]])])


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: one row per stage (median seconds over rounds), one column per path, then wall and images/s."""
    names = list(results)

    def median(name: str, get) -> float:
        return statistics.median(get(r) for r in results[name])

    lines = ["| stage | " + " | ".join(f"{n}, s" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for stage in LABEL_STAGES:
        cells = [f"{median(n, lambda r, s=stage: r['seconds'][s]):.2f}" for n in names]
        lines.append(f"| {stage} | " + " | ".join(cells) + " |")
    lines.append("| **wall** | " + " | ".join(f"**{median(n, lambda r: r['wall_s']):.2f}**" for n in names) + " |")
    lines.append(
        "| images/s | " + " | ".join(f"{median(n, lambda r: r['images_per_s']['run']):.3f}" for n in names) + " |"
    )
    lines.append(
        "| sam images/s | " + " | ".join(f"{median(n, lambda r: r['sam_images_per_s']):.3f}" for n in names) + " |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--dataset", choices=sorted(DATASETS), default="kvasir")
    parser.add_argument("--work", type=Path, default=Path("/tmp/label-stages"))
    parser.add_argument("--images", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=2, help="segmenter epochs (the train stage)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (a run of each path per round)")
    args = parser.parse_args()
    folder = args.work / "folder"
    write_folder(args.data_root, args.dataset, folder, args.images)
    export_once(folder)
    results: dict[str, list[dict]] = {name: [] for name in PATHS}
    for round_ in range(args.rounds):
        order = list(PATHS) if round_ % 2 == 0 else list(PATHS)[::-1]
        for name in order:
            command = [sys.executable, "-m", "weakseg", "bench", "label", str(folder), "--epochs", str(args.epochs)]
            command += ["--generator-option", PATHS[name]]
            run = subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True)
            line = run.stdout.strip().splitlines()[-1]
            print(json.dumps({"path": name, "round": round_, **json.loads(line)}), flush=True)
            results[name].append(json.loads(line))
    print(table(results))
    before, after = (results[name] for name in PATHS)
    ratios = [round(b["seconds"]["sam"] / a["seconds"]["sam"], 3) for b, a in zip(before, after, strict=True)]
    print(f"\nsam seconds, before / after, per round: {ratios}; median {statistics.median(ratios):.2f}")


if __name__ == "__main__":
    sys.exit(main())
