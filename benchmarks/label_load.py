"""Issue 14's load test of ``weakseg label``: thousands of images, corrupt files mixed in, killed and resumed.

    python benchmarks/label_load.py --data-root ../shared/data --work runs/label-load --images 3000 --kills 2

1. Writes ``WORK/folder``: ``--images`` images that repeat the Oxford-IIIT Pet subset's 600 (symlinks named
   ``<pet>__<k>``), the tight box of each pet for every image in ``boxes.json`` (COCO), and ``--corrupt`` bad
   files among them (truncated JPEGs, an empty file, text named .jpg, a mask holding class indices 0/1/2
   where the folder's masks are binary), each a name of its own.
2. Runs ``weakseg label WORK/folder --out WORK/label --on-error skip --generator none --no-segmenter``
   (box-initialised GrabCut for every image; extra arguments are passed on), SIGKILLs the whole process group at
   ``--kills`` seeded random moments, and starts the same command again until it exits by itself.
3. Checks: ``skipped.json`` lists exactly the corrupt files; every other image has its mask; every copy of a pet
   has a byte-identical mask (GrabCut is seeded, so a copy written before a kill and one written after must agree:
   nothing half-written survives a kill); no temporary file is left. Peak RSS of the command (the largest over its
   starts, children included) and the wall time go into one JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from weakseg.data import build_dataset
from weakseg.sources.boxes import boxes_from_mask


def write_folder(data_root: Path, folder: Path, images: int, corrupt: int, seed: int) -> set[str]:
    """The repeated pet folder; returns the names of the corrupt items."""
    root = data_root / "oxford-iiit-pet-subset"
    pets = [(ds, name) for split in ("trainval", "test") for ds in [build_dataset("oxford_pet", root, split)]
            for name in ds.names]  # fmt: skip
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(exist_ok=True)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "pet"}]}
    boxes = {}
    for ds, name in pets:
        mask = ds[ds.names.index(name)].mask
        boxes[name] = (mask.shape, boxes_from_mask(mask).tolist())
    bad = set()
    rng = random.Random(seed)
    slots = sorted(rng.sample(range(images), corrupt))
    for i in range(images):
        ds, pet = pets[i % len(pets)]
        name = f"{pet}__{i // len(pets)}"
        source = (root / "images" / f"{pet}.jpg").resolve()
        target = folder / "images" / f"{name}.jpg"
        if i in slots:
            kind = slots.index(i) % 4
            name = f"corrupt{slots.index(i)}_{pet}"
            target = folder / "images" / f"{name}.jpg"
            if kind == 0:
                target.write_bytes(source.read_bytes()[:300])  # truncated JPEG
            elif kind == 1:
                target.write_bytes(b"")  # empty file
            elif kind == 2:
                target.write_text("not an image\n")  # text named .jpg
            else:  # a good image whose mask holds class indices 0/1/2, not a binary mask
                os.symlink(source, target)
                values = np.zeros(boxes[pet][0], np.uint8)
                values[: len(values) // 3], values[len(values) // 3 : 2 * len(values) // 3] = 1, 2
                Image.fromarray(values).save(folder / "masks" / f"{name}.png")
            bad.add(name)
        elif not target.exists():
            os.symlink(source, target)
        (height, width), pet_boxes = boxes[pet]
        coco["images"].append({"id": i + 1, "file_name": target.name, "height": height, "width": width})
        for x0, y0, x1, y1 in pet_boxes:
            coco["annotations"].append(
                {"id": len(coco["annotations"]) + 1, "image_id": i + 1, "category_id": 1,
                 "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0}
            )  # fmt: skip
    (folder / "boxes.json").write_text(json.dumps(coco))
    return bad


def run_with_kills(command: list[str], kills: int, seed: int, window: tuple[float, float]) -> tuple[int, float, int]:
    """Run ``command``, SIGKILL its process group ``kills`` times at seeded random moments, start it again each
    time, until it exits by itself; returns (starts, wall seconds, peak RSS in MiB over the starts)."""
    rng = random.Random(seed)
    started, starts, peak = time.perf_counter(), 0, 0
    for attempt in range(kills + 1):
        starts += 1
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        proc = subprocess.Popen(command, start_new_session=True)
        if attempt < kills:
            delay = rng.uniform(*window)
            try:
                proc.wait(timeout=delay)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                print(f"killed after {delay:.0f} s", file=sys.stderr, flush=True)
                continue
        else:
            proc.wait()
        peak = max(peak, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before)
        if proc.returncode == 0:
            break
        raise SystemExit(f"weakseg label failed with exit code {proc.returncode}")
    return starts, time.perf_counter() - started, peak // 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/label-load"))
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--corrupt", type=int, default=8)
    parser.add_argument("--kills", type=int, default=2)
    parser.add_argument("--kill-window", type=float, nargs=2, default=(60.0, 400.0), help="seconds after a start")
    parser.add_argument("--seed", type=int, default=0)
    args, label_args = parser.parse_known_args()

    folder, out = args.work / "folder", args.work / "label"
    bad = write_folder(args.data_root, folder, args.images, args.corrupt, args.seed)
    command = ["weakseg", "label", str(folder), "--out", str(out), "--on-error", "skip", "--generator", "none"]
    command += ["--no-segmenter", *label_args]
    starts, seconds, peak_mib = run_with_kills(command, args.kills, args.seed, tuple(args.kill_window))

    skipped = {item["name"] for item in json.loads((out / "skipped.json").read_text())}
    names = {p.stem for p in (folder / "images").iterdir()}
    written = {p.stem for p in (out / "masks").glob("*.png")}
    copies: dict[str, set[str]] = defaultdict(set)
    for name in written:
        copies[name.split("__")[0]].add(hashlib.sha1((out / "masks" / f"{name}.png").read_bytes()).hexdigest())
    leftovers = [str(p) for p in out.rglob("*") if ".tmp" in p.name]
    line = {
        "bench": "label_load",
        "command": " ".join(command),
        "images": len(names),
        "corrupt": len(bad),
        "starts": starts,
        "minutes": round(seconds / 60, 1),
        "peak_rss_mib": peak_mib,
        "skipped_exactly_the_corrupt": skipped == bad,
        "masks_missing": len(names - bad - written),
        "pets_whose_copies_differ": sum(1 for digests in copies.values() if len(digests) > 1),
        "temporaries_left": len(leftovers),
    }
    print(json.dumps(line), flush=True)
    ok = line["skipped_exactly_the_corrupt"] and not line["masks_missing"] and not line["pets_whose_copies_differ"]
    return 0 if ok and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
