"""The ``boxes`` supervision source: boxes painted as masks (filled rectangles or inscribed ellipses).

Boxes follow the ``Sample.boxes`` convention: float (N, 4) ``x_min, y_min, x_max, y_max`` in pixels, max
exclusive. A pixel belongs to a box when its centre does (``x_min <= x + 0.5 < x_max``), so integer boxes paint
exactly the slice ``[y_min:y_max, x_min:x_max]``. Boxes are clipped to the image first; an ellipse is the one
inscribed in the clipped (and shrunk) box.
"""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from weakseg.errors import ConfigError

SHAPES = ("rect", "ellipse")
_CHUNK_PIXELS = 1 << 24  # boxes × pixels painted at once by box_masks (bounds its memory)


def check_boxes(boxes: np.ndarray | list, where: str = "boxes") -> np.ndarray:
    """Boxes as float32 (N, 4); a clear ConfigError for anything else (wrong shape, NaN, infinity)."""
    try:
        arr = np.asarray(boxes, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{where}: not a numeric (N, 4) box array ({err})") from err
    if arr.size == 0:
        return np.zeros((0, 4), np.float32)
    if arr.ndim == 1 and arr.shape[0] == 4:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise ConfigError(f"{where}: expected (N, 4) boxes as x_min, y_min, x_max, y_max, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ConfigError(f"{where}: boxes contain NaN or infinite coordinates")
    return arr


def _check_options(shape_kind: str, shrink: float) -> None:
    if shape_kind not in SHAPES:
        raise ConfigError(f"unknown box shape '{shape_kind}'; known: {', '.join(SHAPES)}")
    if not 0.0 <= shrink < 1.0:
        raise ConfigError(f"box shrink must be in [0, 1) (a fraction of width and height), got {shrink}")


def fit_boxes(boxes: np.ndarray, shape: tuple[int, int], shrink: float = 0.0) -> np.ndarray:
    """Boxes clipped to an image of ``shape`` (H, W), then shrunk by ``shrink`` of their width and height
    (symmetrically); degenerate boxes are dropped."""
    arr = check_boxes(boxes).copy()
    height, width = shape
    arr[:, [0, 2]] = arr[:, [0, 2]].clip(0, width)
    arr[:, [1, 3]] = arr[:, [1, 3]].clip(0, height)
    if shrink:
        half_w = (arr[:, 2] - arr[:, 0]) * (shrink / 2)
        half_h = (arr[:, 3] - arr[:, 1]) * (shrink / 2)
        arr += np.stack([half_w, half_h, -half_w, -half_h], axis=1)
    return arr[(arr[:, 2] > arr[:, 0]) & (arr[:, 3] > arr[:, 1])]


def _span(lo: float, hi: float) -> tuple[int, int]:
    """Pixel indices whose centres lie in [lo, hi): start, stop (a slice)."""
    return math.ceil(lo - 0.5), math.ceil(hi - 0.5)


def box_mask(shape: tuple[int, int], boxes: np.ndarray, shape_kind: str = "rect", shrink: float = 0.0) -> np.ndarray:
    """A uint8 (H, W) 0/1 mask: the union of the boxes, painted as filled rectangles or inscribed ellipses.

    ``shrink`` removes that fraction of each box's width and height, half on each side (0.1 → 90 % of the
    width and height). No boxes give an all-zero mask.
    """
    _check_options(shape_kind, shrink)
    height, width = int(shape[0]), int(shape[1])
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in fit_boxes(boxes, (height, width), shrink).tolist():
        c0, c1 = _span(x0, x1)
        r0, r1 = _span(y0, y1)
        if c1 <= c0 or r1 <= r0:
            continue
        if shape_kind == "rect":
            mask[r0:r1, c0:c1] = 1
            continue
        cx, cy, ax, ay = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
        dx = ((np.arange(c0, c1) + 0.5 - cx) / ax) ** 2
        dy = ((np.arange(r0, r1) + 0.5 - cy) / ay) ** 2
        mask[r0:r1, c0:c1] |= (dy[:, None] + dx[None, :] < 1).astype(np.uint8)
    return mask


def box_masks(
    boxes_per_image: list[np.ndarray], size: int, shape_kind: str = "rect", shrink: float = 0.0
) -> torch.Tensor:
    """Masks (N, S, S) uint8 0/1 for square images of side ``size`` (a prepared split: boxes already at model
    scale, one array per image), painted like :func:`box_mask` but batched in torch."""
    _check_options(shape_kind, shrink)
    out = torch.zeros((len(boxes_per_image), size, size), dtype=torch.uint8)
    fitted = [fit_boxes(b, (size, size), shrink) for b in boxes_per_image]
    owner = np.repeat(np.arange(len(fitted)), [len(b) for b in fitted])
    if not len(owner):
        return out
    every = torch.from_numpy(np.concatenate(fitted)).double()
    centres = torch.arange(size, dtype=torch.float64) + 0.5
    step = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, len(owner), step):
        x0, y0, x1, y1 = every[start : start + step].unbind(1)
        if shape_kind == "rect":
            inside_x = (centres >= x0[:, None]) & (centres < x1[:, None])
            inside_y = (centres >= y0[:, None]) & (centres < y1[:, None])
            painted = inside_y[:, :, None] & inside_x[:, None, :]
        else:
            dx = ((centres - ((x0 + x1) / 2)[:, None]) / ((x1 - x0) / 2)[:, None]) ** 2
            dy = ((centres - ((y0 + y1) / 2)[:, None]) / ((y1 - y0) / 2)[:, None]) ** 2
            painted = dy[:, :, None] + dx[:, None, :] < 1
        chunk = owner[start : start + step]
        firsts = np.flatnonzero(np.r_[True, chunk[1:] != chunk[:-1]])  # owners are sorted: one run per image
        for first, stop in zip(firsts.tolist(), [*firsts[1:].tolist(), len(chunk)], strict=True):
            out[int(chunk[first])] |= painted[first:stop].any(0).to(torch.uint8)
    return out


def boxes_from_mask(mask: np.ndarray, min_fraction: float = 0.1, ignore_index: int = 255) -> np.ndarray:
    """Object boxes as an annotator would draw them, for a dataset with masks but no object boxes: the tight box
    of every 8-connected region of every foreground class, keeping regions of at least ``min_fraction`` of the
    class's largest region (specks are not objects). float32 (N, 4), max exclusive."""
    boxes = []
    for c in np.unique(mask):
        if c == 0 or c == ignore_index:
            continue
        _, _, stats, _ = cv2.connectedComponentsWithStats((mask == c).astype(np.uint8), connectivity=8)
        areas = stats[1:, cv2.CC_STAT_AREA]
        for x, y, w, h, area in stats[1:]:
            if area >= min_fraction * areas.max():
                boxes.append((x, y, x + w, y + h))
    return np.asarray(boxes, np.float32).reshape(-1, 4)
