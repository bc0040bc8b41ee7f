"""Masks from box prompts for a whole dataset split: generated at native resolution (cached on disk as PNGs),
then fitted to the model size like the ground truth, so a cache serves every model size."""

from __future__ import annotations

from pathlib import Path

import torch
from rich.progress import Progress

from weakseg.data.base import SegmentationDataset
from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.data.transforms import fit_sample
from weakseg.sources.sam import CachedMaskGenerator, MaskGenerator


def prompted_masks(
    dataset: SegmentationDataset,
    names: list[str],
    generator: MaskGenerator,
    cache_dir: str | Path,
    size: int,
    fit: str = "resize",
    progress: bool = True,
) -> torch.Tensor:
    """(N, size, size) uint8 masks for the named images: 0/1 from the generator prompted with each image's boxes,
    ``IGNORE_INDEX`` everywhere for an image without boxes (nothing is known about it) and in padding."""
    index = {n: i for i, n in enumerate(dataset.names)}
    cached = CachedMaskGenerator(generator, cache_dir)
    out = torch.full((len(names), size, size), IGNORE_INDEX, dtype=torch.uint8)
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(f"{generator.name} masks", total=len(names))
        for j, name in enumerate(names):
            sample = dataset[index[name]]
            if len(sample.boxes):
                mask = cached([sample.image], [sample.boxes], [name])[0]
                fitted, _ = fit_sample(Sample(sample.image, mask, boxes=sample.boxes, name=name), size, fit)
                out[j] = torch.from_numpy(fitted.mask)
            bar.advance(task)
    return out
