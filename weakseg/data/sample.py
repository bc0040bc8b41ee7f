"""The one sample schema every dataset yields."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

IGNORE_INDEX = 255
"""Mask value for pixels that are not scored and not learned from (trimap boundary, padding, unlabelled)."""

NEGATIVE_TAG = "none"
"""The image-level tag of a negative: an image that shows no foreground class (``labels.csv``: ``name,none``).
Its classifier target has no foreground class, its CAM maps are all zero and its pseudo-label is all background."""


def negative_tag(tag_classes: Sequence[str]) -> int | None:
    """The index of :data:`NEGATIVE_TAG` among the tag classes, or None when there is no such class."""
    return list(tag_classes).index(NEGATIVE_TAG) if NEGATIVE_TAG in tag_classes else None


def negative_images(labels: Sequence[Sequence[int]], tag_classes: Sequence[str]) -> list[bool]:
    """Per image, whether its tags are just :data:`NEGATIVE_TAG`."""
    negative = negative_tag(tag_classes)
    return [negative is not None and list(tags) == [negative] for tags in labels]


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
