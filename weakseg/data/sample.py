"""The one sample schema every dataset yields."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
"""Mask value for pixels that are not scored and not learned from (trimap boundary, padding, unlabelled)."""


@dataclass
class Sample:
    """One image with whatever labels the dataset has.

    image:  RGB uint8 (H, W, 3).
    mask:   uint8 (H, W) class indices, ``IGNORE_INDEX`` where unknown; None when the dataset has no masks.
    labels: image-level class indices (tags); one for single-label datasets.
    boxes:  float32 (N, 4) boxes as x_min, y_min, x_max, y_max in pixels (max exclusive), possibly empty.
    name:   identifier, unique within the dataset (the file stem).
    points: float32 (K, 3) clicks as x, y in pixels and the clicked class index (0: a background click).
    """

    image: np.ndarray
    mask: np.ndarray | None
    labels: list[int] = field(default_factory=list)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    name: str = ""
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the image."""
        return int(self.image.shape[0]), int(self.image.shape[1])
