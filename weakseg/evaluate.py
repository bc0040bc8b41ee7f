"""Scoring: a model on a prepared split (at native resolution when available, by sliding windows over whole images
for a tiled split), or a folder of masks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from weakseg.data.base import SegmentationDataset
from weakseg.data.prepared import PreparedSplit, iterate_batches
from weakseg.errors import ConfigError, DataFileError
from weakseg.io import read_mask
from weakseg.metrics import ConfusionMatrix
from weakseg.models.segmenter import Segmenter, predict_probabilities
from weakseg.progress import progress_bar
from weakseg.tiling import predict_tiled


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
    tile: int | None = None,
    overlap: int = 64,
) -> dict[str, float | list[float]]:
    """Metrics of ``model`` on ``split``. With ``native`` and native masks kept, predictions are resized
    back to each image's own resolution and scored against the original ground truth.

    A tiled split (rows are tiles of larger images) is scored image by image, never tile by tile: each image is
    reassembled from its tiles and predicted whole at native resolution by sliding ``tile x tile`` windows
    (default: the split's tile size) overlapping by ``overlap`` (:func:`weakseg.tiling.predict_tiled`,
    ``batch_size`` windows at a time), then scored against its whole mask."""
    model.eval().to(memory_format=torch.channels_last)
    if split.tiled:
        return _evaluate_whole_images(model, split, device, tile or split.size, overlap, batch_size, tta, amp, progress)
    cm = ConfusionMatrix(len(split.mask_classes))
    use_native = native and split.native_masks is not None
    if split.mask_rows is None and not use_native:
        raise ValueError("this split has no ground-truth masks to evaluate against")
    if not len(split):
        raise ConfigError("nothing to evaluate: the split holds no images")
    if not use_native and not all(split.labelled):
        missing = [n for n, has in zip(split.names, split.labelled, strict=True) if not has]
        raise ConfigError(f"{len(missing)} image(s) to evaluate on have no mask (e.g. '{missing[0]}')")
    with progress_bar(progress) as bar:
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


def _evaluate_whole_images(
    model: Segmenter,
    split: PreparedSplit,
    device: torch.device,
    tile: int,
    overlap: int,
    batch_size: int,
    tta: list[str] | tuple[str, ...],
    amp: bool,
    progress: bool,
) -> dict[str, float | list[float]]:
    """Metrics of ``model`` on the whole images of a tiled split, predicted by sliding windows (see
    :func:`evaluate_model`); memory: one image, its mask and probabilities, and one batch of windows."""
    if split.mask_rows is None:
        raise ValueError("this split has no ground-truth masks to evaluate against")
    images = split.rows_by_image()
    if not images:
        raise ConfigError("nothing to evaluate: the split holds no images")
    labelled = dict(zip(split.image_of, split.labelled, strict=True))
    missing = [name for name in images if not labelled[name]]
    if missing:
        raise ConfigError(f"{len(missing)} image(s) to evaluate on have no mask (e.g. '{missing[0]}')")
    cm = ConfusionMatrix(len(split.mask_classes))
    with progress_bar(progress) as bar:
        task = bar.add_task("evaluating (sliding windows)", total=len(images))
        for rows in images.values():
            image, mask = split.assemble(rows)
            probs = predict_tiled(model, image, tile, overlap, batch_size, device, tta, amp)
            cm.update(torch.from_numpy(probs.argmax(0)), torch.from_numpy(mask))
            bar.advance(task)
    return cm.compute()


def evaluate_mask_folder(
    folder: str | Path, dataset: SegmentationDataset, binary_threshold: int = 128
) -> dict[str, float | list[float]]:
    """Score a folder of predicted masks (``<name>.png``, class indices or 0/255) against a dataset's ground
    truth at native resolution. Every image of the dataset must have a predicted mask; an image whose own files
    are bad stops the scoring, or with the dataset's ``on_error='skip'`` is left out (``dataset.skipped``)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataFileError(folder, "prediction folder is missing")
    if not len(dataset):
        raise ConfigError(f"nothing to evaluate: split '{dataset.split}' of '{dataset.root}' holds no images")
    cm = ConfusionMatrix(dataset.num_mask_classes)
    scored = 0
    for name in dataset.names:
        sample = dataset.try_load(name)
        if sample is None:
            continue
        if sample.mask is None:
            raise DataFileError(dataset.root, "the dataset has no ground-truth masks")
        pred = read_mask(folder / f"{name}.png")
        if pred.shape != sample.mask.shape:
            raise DataFileError(folder / f"{name}.png", f"size {pred.shape} != ground truth {sample.mask.shape}")
        if dataset.num_mask_classes == 2 and pred.max() > 1:
            pred = (pred >= binary_threshold).astype(np.uint8)
        cm.update(pred, sample.mask)
        scored += 1
    if not scored:
        raise ConfigError(f"nothing to evaluate: every image of split '{dataset.split}' was skipped as unreadable")
    return cm.compute()
