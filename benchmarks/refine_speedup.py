"""Refinement throughput: the pipeline in-process (workers=1) vs in N worker processes, on real pet photos.

    python benchmarks/refine_speedup.py --pipeline "otsu | grabcut:iters=5" --images 120 --workers 2

Prints one JSON line. The soft maps are NOT real CAMs: a deterministic coarse pseudo-CAM (a centred Gaussian
blob modulated by the image's saturation, pooled to 1/16 resolution and upsampled) that only exists to give
the steps realistic work; the masks it yields mean nothing. Timing rules (see ``bench_refine``): serial after one
excluded warm-up image; ``parallel_img_s``/``speedup`` include the pool start-up (one-shot ``refine_many``);
``parallel_warm_img_s``/``speedup_warm`` reuse the started pool (a long-lived ``Refiner``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from weakseg.bench import pseudo_cam
from weakseg.refine import bench_refine, parse_pipeline

IMAGES_DIR = Path("oxford-iiit-pet-subset") / "images"


def load_images(data_root: Path, n: int, size: int) -> list[np.ndarray]:
    """The first ``n`` pet images (sorted by name, repeated if there are fewer), RGB uint8 size×size."""
    folder = data_root / IMAGES_DIR
    paths = sorted(folder.glob("*.jpg"))
    if not paths:
        sys.exit(f"no .jpg images in '{folder}' (pass --data-root)")
    images = []
    for i in range(n):
        bgr = cv2.imread(str(paths[i % len(paths)]), cv2.IMREAD_COLOR)
        if bgr is None:
            sys.exit(f"cannot read '{paths[i % len(paths)]}'")
        images.append(cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB))
    return images


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data"))
    parser.add_argument("--pipeline", default="otsu | grabcut:iters=5")
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--chunksize", type=int, default=None)
    args = parser.parse_args(argv)
    pipeline = parse_pipeline(args.pipeline)
    images = load_images(args.data_root, args.images, args.size)
    softs = [pseudo_cam(image) for image in images]
    result = bench_refine(pipeline, images, softs, args.workers, args.chunksize)
    print(json.dumps({**result, "size": args.size, "soft": "pseudo-cam"}))


if __name__ == "__main__":
    main()
