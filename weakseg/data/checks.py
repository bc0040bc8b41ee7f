"""Checks every loader applies to what it read: a sample loads correctly or its file is named with the problem.

Rules (one line each, see the functions):

- class-index masks hold declared classes only (``0 .. C-1``) or ``IGNORE_INDEX``;
- binary masks are 0/1, 0 and one other value, or 0-255 grey levels thresholded at 128; anything else (such as
  class indices 0/1/2 in binary mode, or 16-bit grey levels) is an error, never an empty mask;
- boxes (x_min, y_min, x_max, y_max) must be numbers with x_max > x_min and y_max > y_min, and overlap the image;
  a box partly outside the image is clipped to it;
- clicks (x, y) must lie inside the image;
- tags must be in the dataset's vocabulary.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import DataFileError


def _values(values: Iterable[int], limit: int = 8) -> str:
    values = sorted(int(v) for v in values)
    return ", ".join(map(str, values[:limit])) + (f" and {len(values) - limit} more" if len(values) > limit else "")


def check_mask_classes(mask: np.ndarray, classes: Sequence[str], path: str | Path) -> np.ndarray:
    """``mask`` as uint8 when every value is a declared class index or ``IGNORE_INDEX``; else an error naming the
    file, the values that are not classes and the declared classes."""
    present = np.flatnonzero(np.bincount(mask.ravel(), minlength=256)) if mask.dtype == np.uint8 else np.unique(mask)
    bad = [int(v) for v in present if not (int(v) < len(classes) or int(v) == IGNORE_INDEX)]
    if bad:
        raise DataFileError(
            path,
            f"mask values {_values(bad)} are not class indices: {len(classes)} classes are declared "
            f"(0-{len(classes) - 1}: {', '.join(classes)}; {IGNORE_INDEX} = ignore); declare them with mask_classes",
        )
    return mask.astype(np.uint8, copy=False)


def binarize(raw: np.ndarray, path: str | Path = "") -> np.ndarray:
    """A binary mask (0 background, 1 foreground) from what a mask file stores:

    - values 0/1: as they are;
    - 0 and one other value (0/255, 0/65535, 0/3, ...), or that value alone: it is the foreground;
    - 0-255 grey levels (JPEG noise, smoothed edges): foreground from 128 up;
    - anything else (several small values such as class indices, or 16-bit grey levels): an error naming the file.
    """
    top = int(raw.max()) if raw.size else 0
    if top <= 1:
        return (raw > 0).astype(np.uint8)
    present = np.flatnonzero(np.bincount(raw.ravel(), minlength=2)) if raw.dtype == np.uint8 else np.unique(raw)
    if np.count_nonzero(present) == 1:
        return (raw > 0).astype(np.uint8)
    if 128 <= top <= 255:
        return (raw >= 128).astype(np.uint8)
    raise DataFileError(
        path,
        f"not a binary mask: values {_values(present)} (not 0/1, not 0 and one value, not 0-255 grey levels); "
        "for class indices use mask_mode 'index'",
    )


def check_boxes(boxes: np.ndarray, size: tuple[int, int], path: str | Path, name: str) -> np.ndarray:
    """``boxes`` (N, 4) x_min, y_min, x_max, y_max, clipped to an image of ``size`` (height, width); a box that is
    not numbers, empty, inverted or entirely outside the image is an error naming the file, the image and the box."""
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    height, width = size
    for k, box in enumerate(boxes):
        x0, y0, x1, y1 = (float(v) for v in box)
        text = f"box {k} of '{name}' (x_min, y_min, x_max, y_max = {x0:g}, {y0:g}, {x1:g}, {y1:g})"
        if not np.isfinite(box).all():
            raise DataFileError(path, f"{text} has a coordinate that is not a number")
        if x1 < x0 or y1 < y0:
            raise DataFileError(path, f"{text} is inverted (max < min)")
        if x1 == x0 or y1 == y0:
            raise DataFileError(path, f"{text} is empty (zero width or height)")
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            raise DataFileError(path, f"{text} lies outside the {width}x{height} image")
    if len(boxes):
        boxes = boxes.copy()
        boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, width)
        boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, height)
    return boxes


def check_points(points: np.ndarray, size: tuple[int, int], path: str | Path, name: str) -> np.ndarray:
    """``points`` (N, 2) x, y in pixels, each a number inside an image of ``size`` (height, width); a click outside
    is an error naming the file, the image and the click (a click is never moved into the image)."""
    points = np.asarray(points, np.float32).reshape(-1, 2)
    height, width = size
    for k, (x, y) in enumerate(points):
        if not (np.isfinite(x) and np.isfinite(y) and 0 <= x < width and 0 <= y < height):
            raise DataFileError(
                path, f"click {k} of '{name}' (x, y = {x:g}, {y:g}) lies outside the {width}x{height} image"
            )
    return points


def tag_indices(tags: Sequence[str], vocabulary: Sequence[str], path: str | Path, name: str) -> list[int]:
    """Indices of ``tags`` in ``vocabulary``; a tag outside it is an error naming the file and the image."""
    index = {tag: i for i, tag in enumerate(vocabulary)}
    unknown = [tag for tag in tags if tag not in index]
    if unknown:
        raise DataFileError(
            path,
            f"tag(s) {', '.join(repr(t) for t in unknown)} of '{name}' are not among the declared tag classes "
            f"({', '.join(vocabulary) or 'none'})",
        )
    return [index[tag] for tag in tags]
