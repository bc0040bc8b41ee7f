"""Scoring: a model on a prepared split (at native resolution when available), or a folder of masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from weakseg.data.base import SegmentationDataset
from weakseg.data.prepared import PreparedSplit, iterate_batches
from weakseg.errors import DataFileError
from weakseg.io import read_mask
from weakseg.metrics import ConfusionMatrix
from weakseg.models.segmenter import Segmenter
from weakseg.runtime import autocast


@torch.no_grad()
def predict_probabilities(
    model: Segmenter, images: torch.Tensor, tta: list[str] | tuple[str, ...] = (), amp: bool = True
) -> torch.Tensor:
    """Class probabilities (N, C, S, S); ``tta=['hflip']`` averages with the flipped prediction."""
    with autocast(images.device, amp):
        probs = model.probabilities(model(images))
        for name in tta:
            dim = {"hflip": -1, "vflip": -2}[name]
            probs = probs + model.probabilities(model(images.flip(dim))).flip(dim)
    return probs / (1 + len(tta))


@torch.no_grad()
def evaluate_model(
    model: Segmenter,
    split: PreparedSplit,
    device: torch.device,
    batch_size: int = 32,
    native: bool = True,
    tta: list[str] | tuple[str, ...] = (),
    amp: bool = True,
    progress: bool = False,
) -> dict[str, float | list[float]]:
    """Metrics of ``model`` on ``split``. With ``native`` and native masks kept, predictions are resized
    back to each image's own resolution and scored against the original ground truth."""
    model.eval().to(memory_format=torch.channels_last)
    cm = ConfusionMatrix(len(split.mask_classes))
    use_native = native and split.native_masks is not None
    if split.masks is None and not use_native:
        raise ValueError("this split has no ground-truth masks to evaluate against")
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("evaluating", total=len(split))
        for images, masks, index in iterate_batches(split, batch_size, device):
            probs = predict_probabilities(model, images, tta, amp)
            if use_native:
                for prob, i in zip(probs, index, strict=True):
                    native_prob = split.geometry[i].to_native(prob)
                    cm.update(native_prob.argmax(0), torch.from_numpy(split.native_masks[i]).to(device))
            else:
                cm.update(probs.argmax(1), masks)
            bar.advance(task, len(index))
    return cm.compute()


def evaluate_mask_folder(
    folder: str | Path, dataset: SegmentationDataset, binary_threshold: int = 128
) -> dict[str, float | list[float]]:
    """Score a folder of predicted masks (``<name>.png``, class indices or 0/255) against a dataset's ground
    truth at native resolution. Every image of the dataset must have a predicted mask."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(folder, "prediction folder is missing")
    cm = ConfusionMatrix(dataset.num_mask_classes)
    for name in dataset.names:
        sample = dataset.load(name)
        if sample.mask is None:
            raise DataFileError(dataset.root, "the dataset has no ground-truth masks")
        pred = read_mask(folder / f"{name}.png")
        if pred.shape != sample.mask.shape:
            raise DataFileError(folder / f"{name}.png", f"size {pred.shape} != ground truth {sample.mask.shape}")
        if dataset.num_mask_classes == 2 and pred.max() > 1:
            pred = (pred >= binary_threshold).astype(np.uint8)
        cm.update(pred, sample.mask)
    return cm.compute()
