"""Geometry to the model's input size (resize or letterbox pad) and batch augmentation on tensors."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.errors import ConfigError

FIT_MODES = ("resize", "pad")


@dataclass(frozen=True)
class Geometry:
    """How a native (height, width) image maps onto the model input: content occupies [0:ch, 0:cw]."""

    height: int
    width: int
    content_h: int
    content_w: int

    def to_native(self, maps: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """Map (C, S, S) model-resolution maps back onto the native (C, H, W) grid."""
        content = maps[:, : self.content_h, : self.content_w].unsqueeze(0)
        kwargs = {"align_corners": False} if mode == "bilinear" else {}
        return F.interpolate(content, size=(self.height, self.width), mode=mode, **kwargs)[0]


def check_size(size: int) -> int:
    if size <= 0 or size % 32:
        raise ConfigError(f"input size must be a positive multiple of 32 (the encoder's stride), not {size}")
    return size


def _resize(array: np.ndarray, width: int, height: int, nearest: bool) -> np.ndarray:
    if nearest:
        interp = cv2.INTER_NEAREST
    else:
        interp = cv2.INTER_AREA if width * height < array.shape[0] * array.shape[1] else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interp)


def fit_sample(sample: Sample, size: int, mode: str = "resize") -> tuple[Sample, Geometry]:
    """Bring a sample to size x size: ``resize`` stretches, ``pad`` keeps the aspect ratio and pads
    bottom/right (image 0, mask ignore). Boxes and clicks are scaled with the image."""
    if mode not in FIT_MODES:
        raise ConfigError(f"fit must be one of {FIT_MODES}, not '{mode}'")
    h, w = sample.size
    if mode == "resize":
        ch, cw = size, size
    else:
        scale = size / max(h, w)
        ch, cw = max(1, round(h * scale)), max(1, round(w * scale))
    image = _resize(sample.image, cw, ch, nearest=False)
    mask = None if sample.mask is None else _resize(sample.mask, cw, ch, nearest=True)
    if mode == "pad":
        image = np.pad(image, ((0, size - ch), (0, size - cw), (0, 0)))
        if mask is not None:
            mask = np.pad(mask, ((0, size - ch), (0, size - cw)), constant_values=IGNORE_INDEX)
    boxes = sample.boxes * np.array([cw / w, ch / h, cw / w, ch / h], np.float32)
    points = sample.points * np.array([cw / w, ch / h, 1], np.float32)
    fitted = Sample(image=image, mask=mask, labels=list(sample.labels), boxes=boxes, name=sample.name, points=points)
    return fitted, Geometry(h, w, ch, cw)


def flip_batch(
    images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator, dim: int, p: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Flip a random subset of the batch along ``dim`` (-1 horizontal, -2 vertical)."""
    chosen = torch.rand(images.shape[0], generator=generator) < p
    if not chosen.any():
        return images, masks
    idx = chosen.nonzero().squeeze(1).to(images.device)
    images = images.clone()
    images[idx] = images[idx].flip(dim)
    if masks is not None:
        masks = masks.clone()
        masks[idx] = masks[idx].flip(dim)
    return images, masks


AUGMENTATIONS = {"hflip": -1, "vflip": -2}


def augment_batch(
    images: torch.Tensor, masks: torch.Tensor | None, names: list[str], generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply the named flip augmentations (``hflip``, ``vflip``) to a batch."""
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation '{name}'; known: {', '.join(AUGMENTATIONS)}")
        images, masks = flip_batch(images, masks, generator, AUGMENTATIONS[name])
    return images, masks


def draw_flips(
    count: int, names: list[str], generator: torch.Generator, p: float = 0.5
) -> list[tuple[int, torch.Tensor]]:
    """The random part of :func:`augment_batch` for a batch of ``count``: per named flip, its dimension and which
    images it flips, drawn from ``generator`` exactly as :func:`augment_batch` draws them."""
    flips = []
    for name in names:
        if name not in AUGMENTATIONS:
            raise ConfigError(f"unknown augmentation '{name}'; known: {', '.join(AUGMENTATIONS)}")
        flips.append((AUGMENTATIONS[name], torch.rand(count, generator=generator) < p))
    return flips


def apply_flips(
    images: torch.Tensor, masks: torch.Tensor | None, flips: list[tuple[int, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Apply flips from :func:`draw_flips` to a batch (in place: the batch is a fresh copy of its rows)."""
    for dim, chosen in flips:
        if chosen.any():
            idx = chosen.nonzero().squeeze(1).to(images.device)
            images[idx] = images[idx].flip(dim)
            if masks is not None:
                masks[idx] = masks[idx].flip(dim)
    return images, masks
