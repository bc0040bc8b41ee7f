"""Realistic-enough synthetic segmentation data: textured images with a bright blob and its mask."""

from __future__ import annotations

import cv2
import numpy as np
import torch

from weakseg.data.prepared import PreparedSplit
from weakseg.data.transforms import Geometry


def blob_split(n: int, size: int = 64, seed: int = 0) -> PreparedSplit:
    """``n`` images with one ellipse each (random place, size, colour) on a noisy background."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        image = rng.integers(0, 90, (size, size, 3), dtype=np.uint8)
        image = cv2.GaussianBlur(image, (5, 5), 0)
        mask = np.zeros((size, size), np.uint8)
        center = tuple(int(v) for v in rng.integers(size // 4, 3 * size // 4, 2))
        axes = tuple(int(v) for v in rng.integers(size // 8, size // 4, 2))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        color = rng.integers(150, 255, 3)
        image[mask == 1] = (0.3 * image[mask == 1] + 0.7 * color).astype(np.uint8)
        images.append(torch.from_numpy(image).permute(2, 0, 1))
        masks.append(torch.from_numpy(mask))
    return PreparedSplit(
        names=[f"blob_{i}" for i in range(n)],
        images=torch.stack(images),
        masks=torch.stack(masks),
        labels=[[0]] * n,
        boxes=[np.zeros((0, 4), np.float32)] * n,
        geometry=[Geometry(size, size, size, size)] * n,
        mask_classes=["background", "blob"],
        tag_classes=["blob"],
    )


def tagged_blob_split(n: int, size: int = 64, seed: int = 0) -> PreparedSplit:
    """Like :func:`blob_split`, tagged with the blob's colour: 0 = reddish, 1 = bluish (alternating)."""
    split = blob_split(n, size, seed)
    rng = np.random.default_rng(seed + 1)
    images = split.images.clone()
    labels = []
    for i in range(n):
        tag = i % 2
        inside = split.masks[i].bool()
        color = torch.tensor([230, 60, 40] if tag == 0 else [40, 80, 230], dtype=torch.float32)
        color = color + torch.from_numpy(rng.integers(-20, 20, 3)).float()
        images[i][:, inside] = (0.2 * images[i][:, inside].float() + 0.8 * color[:, None]).to(torch.uint8)
        labels.append([tag])
    split.images, split.labels, split.tag_classes = images, labels, ["red", "blue"]
    return split
