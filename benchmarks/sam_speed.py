"""Issue 14: LiteMedSAM box → masks, today's path (PyTorch float32) against the fast one (ONNX Runtime, the default
on a CPU): the speed ratio and how far the masks move.

    python benchmarks/sam_speed.py --data-root ../shared/data --images 30 --pairs 3 --threads 2

Images: the first ``--images`` Kvasir-SEG train images with the dataset's boxes and the first ``--images``
Oxford-IIIT Pet trainval images with the tight box of each object of their trimap (as an annotator would draw
it), at native resolution, all decoded before timing. ``weakseg.bench.bench_sam`` then runs each side once untimed
on two images (model load, the one-off ONNX export or its session), then ``--pairs`` alternating timed pairs
(baseline, fast; fast, baseline; ...), each side over every image: the whole generator call per image
(preprocessing, network, upsampling to native size, threshold). ``ratio``: the median of the per-pair ratios
baseline seconds / fast seconds. ``iou_vs_baseline``: per dataset, the min and mean over images of the IoU of the
fast mask against the baseline mask; ``quality_gate``: every image at least ``--min-iou``. Prints one JSON line.
``--baseline`` and ``--fast`` take other generator options (KEY=VALUE), e.g. ``--fast threshold=0.3``.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import numpy as np
import torch

from weakseg.bench import bench_sam
from weakseg.data import build_dataset
from weakseg.sources.boxes import boxes_from_mask


def option(text: str) -> tuple[str, Any]:
    """KEY=VALUE, the value as JSON when it parses (numbers, true/false), else as text."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got '{text}'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def real_images(data_root: str, count: int) -> dict[str, tuple[list[np.ndarray], list[np.ndarray]]]:
    """name → (images, boxes): the first ``count`` Kvasir train and pet trainval images."""
    kvasir = build_dataset("kvasir", os.path.join(data_root, "kvasir-seg"), "train")
    pets = build_dataset("oxford_pet", os.path.join(data_root, "oxford-iiit-pet-subset"), "trainval")
    kv = [kvasir[i] for i in range(min(count, len(kvasir)))]
    pet = [pets[i] for i in range(min(count, len(pets)))]
    return {
        "kvasir": ([s.image for s in kv], [s.boxes for s in kv]),
        "pets": ([s.image for s in pet], [boxes_from_mask(s.mask) for s in pet]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--images", type=int, default=30, help="images per dataset")
    parser.add_argument("--pairs", type=int, default=3, help="alternating timed pairs (at least 3 for a median)")
    parser.add_argument("--threads", type=int, default=0, help="torch (and ONNX Runtime) threads; 0: torch's default")
    parser.add_argument("--min-iou", type=float, default=0.99, help="the quality gate, per image")
    parser.add_argument("--baseline", nargs="*", type=option, default=[("backend", "torch")])
    parser.add_argument("--fast", nargs="*", type=option, default=[])
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    data = real_images(args.data_root, args.images)
    result = bench_sam(data, "litemedsam", dict(args.baseline), dict(args.fast), pairs=args.pairs, min_iou=args.min_iou)
    print(json.dumps({**result, "data_root": args.data_root}), flush=True)


if __name__ == "__main__":
    main()
