"""Boxes → masks: how close each box-prompted mask generator comes to the ground truth, and how fast.

    python benchmarks/box_to_mask.py --data-root ../shared/data --dataset oxford_pet --generators box grabcut

For every image of the split, the generator gets the image at native resolution and its boxes (Kvasir: the
dataset's boxes; pets: the tight box of each object of the trimap, as an annotator would draw it) and its mask is
scored against the ground truth with the boundary ignored: pooled IoU (one confusion matrix over all pixels)
and the mean of per-image IoUs. Seconds per image are wall-clock over the whole split, after one warm-up image.
Prints one JSON line per generator.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from weakseg.data import build_dataset
from weakseg.data.sample import IGNORE_INDEX
from weakseg.sources.boxes import boxes_from_mask
from weakseg.sources.sam import build_mask_generator

ROOTS = {"oxford_pet": ("oxford-iiit-pet-subset", "trainval"), "kvasir": ("kvasir-seg", "train")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default="../shared/data")
    parser.add_argument("--dataset", choices=sorted(ROOTS), default="oxford_pet")
    parser.add_argument("--generators", nargs="+", default=["box", "grabcut"])
    parser.add_argument("--images", type=int, default=0, help="first N images only (0: all)")
    args = parser.parse_args()
    root, split = ROOTS[args.dataset]
    ds = build_dataset(args.dataset, f"{args.data_root}/{root}", split)
    samples = [ds[i] for i in range(args.images or len(ds))]
    for name in args.generators:
        generator = build_mask_generator(name)
        boxes = [s.boxes if args.dataset == "kvasir" else boxes_from_mask(s.mask) for s in samples]
        generator([samples[0].image], [boxes[0]])  # warm-up (loads a model)
        started = time.perf_counter()
        masks = generator([s.image for s in samples], boxes)
        seconds = time.perf_counter() - started
        inter = union = 0
        per_image = []
        for sample, mask in zip(samples, masks, strict=True):
            known = sample.mask != IGNORE_INDEX
            pred, truth = mask.astype(bool) & known, (sample.mask == 1) & known
            i, u = int((pred & truth).sum()), int((pred | truth).sum())
            inter, union = inter + i, union + u
            per_image.append(i / u if u else 1.0)
        line = {
            "bench": "box_to_mask",
            "dataset": args.dataset,
            "generator": name,
            "identity": generator.identity(),
            "images": len(samples),
            "boxes": int(sum(len(b) for b in boxes)),
            "pooled_iou": round(inter / union, 4),
            "mean_iou": round(float(np.mean(per_image)), 4),
            "s_per_image": round(seconds / len(samples), 4),
        }
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
