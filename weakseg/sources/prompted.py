"""Masks from box prompts for a whole dataset split: generated at native resolution (cached on disk as PNGs),
then fitted to the model size like the ground truth, so a cache serves every model size."""

from __future__ import annotations

from pathlib import Path

import torch

from weakseg.data.base import SegmentationDataset
from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.data.transforms import fit_sample
from weakseg.progress import progress_bar
from weakseg.sources.boxes import boxes_from_mask
from weakseg.sources.sam import CachedMaskGenerator, MaskGenerator


def prompted_masks(
    dataset: SegmentationDataset,
    names: list[str],
    generator: MaskGenerator,
    cache_dir: str | Path,
    size: int,
    fit: str = "resize",
    progress: bool = True,
    boxes_from_masks: bool = False,
) -> torch.Tensor:
    """(N, size, size) uint8 masks for the named images: 0/1 from the generator prompted with each image's boxes
    (or, with ``boxes_from_masks``, the boxes of the objects of its ground-truth mask), ``IGNORE_INDEX``
    everywhere for an image without boxes (nothing is known about it) and in padding."""
    index = {n: i for i, n in enumerate(dataset.names)}
    cached = CachedMaskGenerator(generator, cache_dir)
    out = torch.full((len(names), size, size), IGNORE_INDEX, dtype=torch.uint8)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"{generator.name} masks", total=len(names))
        for j, name in enumerate(names):
            sample = dataset[index[name]]
            boxes = boxes_from_mask(sample.mask) if boxes_from_masks and sample.mask is not None else sample.boxes
            if len(boxes):
                mask = cached([sample.image], [boxes], [name])[0]
                fitted, _ = fit_sample(Sample(sample.image, mask, boxes=boxes, name=name), size, fit)
                out[j] = torch.from_numpy(fitted.mask)
            bar.advance(task)
    return out
