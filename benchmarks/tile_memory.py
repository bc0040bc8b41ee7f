"""Peak memory of ``weakseg train`` on large images: training on tiles (``dataset.tile``) against training on whole
images at native resolution, as the image side L grows.

For each L a folder dataset of 4 training images and 1 test image of L x L px (ellipses on noise, 0/255 masks) is
written, and two child processes run ``weakseg train`` on it with the point-label setting (method ``points``, 1 %
of the pixels, partial cross-entropy; U-Net, EfficientNet-Lite0 without pretrained weights), one epoch of
``--steps`` batches of ``--batch`` rows, no validation split:

- ``tiles``: ``dataset.tile=T`` (rows are T x T tiles at native resolution), the test image scored whole by sliding
  windows (``train.eval_overlap``);
- ``whole``: ``dataset.size=L`` (each image fitted to its own size: native resolution, no tiles), only for
  L <= ``--whole-max`` (the whole-image pass outgrows the machine's memory beyond that).

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``); the peak of ``RssAnon`` (memory that is not a mapped
file) is polled every 50 ms (:func:`benchmarks.train_memory.measure`). One JSON line per run, with the load
average, since the machine may be shared. Everything written is removed at the end.

python benchmarks/tile_memory.py                         # L = 512, 1024, 2048; tiles of 256, batch 4
python benchmarks/tile_memory.py --sides 1024 3072 --tile 512 --whole-max 0
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.train_memory import load, measure


def make_dataset(root: Path, side: int, train: int = 4, test: int = 1, seed: int = 0) -> None:
    """``train`` + ``test`` images of ``side`` x ``side`` px, each with a few ellipses, and their masks."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = [f"img_{i}" for i in range(train + test)]
    for name in names:
        image = cv2.GaussianBlur(rng.integers(0, 90, (side, side, 3), dtype=np.uint8), (5, 5), 0)
        mask = np.zeros((side, side), np.uint8)
        for _ in range(max(1, side // 256)):
            center = tuple(int(v) for v in rng.integers(side // 8, 7 * side // 8, 2))
            axes = tuple(int(v) for v in rng.integers(side // 32, side // 8, 2))
            cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = (0.3 * image[mask > 0] + 0.7 * rng.integers(150, 255, 3)).astype(np.uint8)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    (root / "trainval.txt").write_text("".join(f"{n}\n" for n in names[:train]))
    (root / "test.txt").write_text("".join(f"{n}\n" for n in names[train:]))


def run(mode: str, root: Path, side: int, args: argparse.Namespace, work: Path) -> dict:
    """One ``weakseg train`` child on ``root`` (``mode``: tiles or whole); its measurements."""
    dataset = {"name": "folder", "root": str(root), "train_split": "trainval", "test_split": "test"}
    dataset |= {"val_fraction": 0}
    dataset |= {"tile": args.tile} if mode == "tiles" else {"size": side}
    train = {"epochs": 1, "batch_size": args.batch, "epoch_images": args.batch * args.steps, "progress": False}
    train |= {"eval_batch_size": args.batch, "eval_overlap": args.overlap}
    config = {
        "dataset": dataset,
        "budget": {"density": 1},
        "method": {"name": "points"},
        "model": {"arch": "unet", "weights": None},
        "train": train,
    }
    path, out = work / f"{mode}-{side}.yaml", work / f"run-{mode}-{side}"
    path.write_text(json.dumps(config))  # JSON is YAML
    env = os.environ | {"WEAKSEG_CACHE": str(work / "cache"), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    command = [sys.executable, "-m", "weakseg", "--quiet", "train", "-c", str(path), "--out", str(out)]
    result = measure(command, env, work / f"{mode}-{side}.log")
    metrics = json.loads((out / "metrics.json").read_text())[-1]["metrics"]
    shutil.rmtree(out, ignore_errors=True)
    return result | {"test_dice": round(metrics["dice"], 4), "test_images": metrics["images"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sides", type=int, nargs="+", default=[512, 1024, 2048], help="image sides (x 32)")
    parser.add_argument("--tile", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32, help="train.eval_overlap of the sliding windows")
    parser.add_argument("--batch", type=int, default=4, help="rows (tiles or whole images) per batch")
    parser.add_argument("--steps", type=int, default=2, help="batches in the one epoch")
    parser.add_argument("--whole-max", type=int, default=1024, help="largest side trained as whole images")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="weakseg-tiles-", dir=args.work))
    try:
        for side in args.sides:
            root = work / f"data-{side}"
            make_dataset(root, side)
            for mode in ("tiles", "whole") if side <= args.whole_max else ("tiles",):
                row = {"bench": "tile_memory", "mode": mode, "side": side, "batch": args.batch}
                row |= {"tile": args.tile if mode == "tiles" else None, "load_before": load()}
                row |= run(mode, root, side, args, work) | {"load_after": load()}
                print(json.dumps(row), flush=True)
            shutil.rmtree(root)
            shutil.rmtree(work / "cache", ignore_errors=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
