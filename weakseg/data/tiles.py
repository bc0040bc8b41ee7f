"""Tile geometry for large images: the window grids of training tiles and of sliding-window inference, and the
cutting of a sample (image, mask, boxes, clicks) into training tiles at native resolution.

Two grids, for two jobs:

- **training tiles** (:func:`padded_starts`, :func:`tile_sample`): windows start at ``0, s, 2s, ...`` (stride
  ``s = tile - overlap``) until the image is covered; the last one reaches past the right / bottom border and is
  zero-padded there. With ``overlap = 0`` the tiles partition the image (the point-label study's setting: 1500 x
  1500 aerial images cut into 512 px tiles, zero padding at the borders), so no pixel is learned twice.
- **inference windows** (:func:`axis_starts`, used by :func:`weakseg.tiling.predict_tiled`): the last window is
  flush with the border instead, so that only an image smaller than a tile is ever padded, and each output pixel
  is taken from the window where it lies farthest from a window border (:func:`owned_spans`).

A tile's mask is padded with ``IGNORE_INDEX``, not background: the padding is not part of the image, so a model
must neither learn nor be scored on it (zero pixels labelled background would teach it that black borders are
background, which the whole-image prediction never sees).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.errors import ConfigError


def check_tiling(tile: int, overlap: int) -> None:
    """Refuse a tile size or overlap that cannot tile an image."""
    if tile < 1:
        raise ConfigError(f"tile must be a positive number of pixels, not {tile}")
    if not 0 <= overlap < tile:
        raise ConfigError(f"overlap must be at least 0 and smaller than the tile ({tile}), not {overlap}")


def axis_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Inference window starts along one axis of ``length`` pixels: stride ``tile - overlap``, the last flush
    with the end (just ``[0]`` when the axis is no longer than a tile; that window is zero-padded)."""
    check_tiling(tile, overlap)
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    return [*starts, length - tile]


def owned_spans(starts: list[int], length: int, tile: int) -> list[tuple[int, int]]:
    """Per window along one axis, the half-open range ``[lo, hi)`` of image pixels it writes: cut at the
    midpoints of consecutive windows' overlaps, so the ranges partition ``[0, length)``."""
    cuts = [(a + tile + b) // 2 for a, b in itertools.pairwise(starts)]
    return list(zip([0, *cuts], [*cuts, length], strict=True))


def tile_grid(height: int, width: int, tile: int = 512, overlap: int = 64) -> list[tuple[int, int]]:
    """Top-left corners ``(y, x)`` of the inference windows covering a ``height x width`` image, row by row."""
    return [(y, x) for y in axis_starts(height, tile, overlap) for x in axis_starts(width, tile, overlap)]


def padded_starts(length: int, tile: int, overlap: int = 0) -> list[int]:
    """Training tile starts along one axis: ``0, s, 2s, ...`` (``s = tile - overlap``) while the previous tiles
    leave pixels uncovered; the last tile may reach past the end (zero-padded). ``overlap = 0``: a partition."""
    check_tiling(tile, overlap)
    return list(range(0, max(length - overlap, 1), tile - overlap))


@dataclass(frozen=True)
class TileOrigin:
    """Where a training tile comes from: image ``image`` (its name) of native size ``height x width``, at rows
    ``y:y + tile`` and columns ``x:x + tile`` (the part past the image's border is padding)."""

    image: str
    y: int
    x: int
    height: int
    width: int

    def content(self, tile: int) -> tuple[int, int]:
        """(height, width) of the part of the tile inside the image (the rest is padding)."""
        return min(tile, self.height - self.y), min(tile, self.width - self.x)


def tile_name(image: str, y: int, x: int) -> str:
    """The row name of the tile of ``image`` at ``(y, x)``: ``name@y,x``."""
    return f"{image}@{y},{x}"


def crop_tile(array: np.ndarray, origin: TileOrigin, tile: int, fill: int) -> np.ndarray:
    """The ``tile x tile`` piece of a native-resolution ``array`` (H, W, ...) at ``origin``, padded with ``fill``
    past the image's border (0 for an image, ``IGNORE_INDEX`` for a label map)."""
    ch, cw = origin.content(tile)
    piece = array[origin.y : origin.y + ch, origin.x : origin.x + cw]
    if (ch, cw) == (tile, tile):
        return np.ascontiguousarray(piece)
    widths = ((0, tile - ch), (0, tile - cw)) + ((0, 0),) * (array.ndim - 2)
    return np.pad(piece, widths, constant_values=fill)


def tile_sample(sample: Sample, tile: int, overlap: int = 0) -> list[tuple[Sample, TileOrigin]]:
    """Cut ``sample`` into ``tile x tile`` training tiles at native resolution (:func:`padded_starts` on both
    axes, row by row): the image zero-padded, the mask padded with ``IGNORE_INDEX``; clicks in a tile shifted
    into it (a click on an overlap lies in each tile that holds it); boxes clipped to the tile's part of the image
    and shifted (a box outside it is left out); the image's tags carried by every tile.

    Tags are image-level statements ("the image shows a polyp"); a tile may not show the object, so a tag is an
    upper bound on what a tile shows. Methods that learn from tags are therefore not run on tiles (see
    :data:`weakseg.methods.base.METHODS` metadata ``tiles``); the tags are carried so that a tiled split keeps
    every field of its images."""
    height, width = sample.size
    out = []
    for y in padded_starts(height, tile, overlap):
        for x in padded_starts(width, tile, overlap):
            origin = TileOrigin(sample.name, y, x, height, width)
            ch, cw = origin.content(tile)
            image = crop_tile(sample.image, origin, tile, 0)
            mask = None if sample.mask is None else crop_tile(sample.mask, origin, tile, IGNORE_INDEX)
            points = sample.points
            if len(points):
                px, py = np.floor(points[:, 0]), np.floor(points[:, 1])
                inside = (px >= x) & (px < x + cw) & (py >= y) & (py < y + ch)
                points = (points[inside] - np.array([x, y, 0], np.float32)).astype(np.float32)
            boxes = sample.boxes
            if len(boxes):
                clipped = np.clip(boxes - np.array([x, y, x, y], np.float32), 0, [cw, ch, cw, ch])
                keep = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
                boxes = clipped[keep].astype(np.float32)
            piece = Sample(
                image=image,
                mask=mask,
                labels=list(sample.labels),
                boxes=boxes,
                name=tile_name(sample.name, y, x),
                points=points,
            )
            out.append((piece, origin))
    return out


def assemble(
    origins: list[TileOrigin], images: np.ndarray, masks: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """The whole image (H, W, 3) and mask (H, W) of one image from its tiles: ``images`` (K, 3, T, T) and
    ``masks`` (K, T, T) of the K tiles at ``origins`` (which must cover the image, as :func:`tile_sample`'s do)."""
    if not origins:
        raise ValueError("no tiles to assemble")
    first, tile = origins[0], images.shape[-1]
    image = np.zeros((first.height, first.width, 3), np.uint8)
    mask = None if masks is None else np.full((first.height, first.width), IGNORE_INDEX, np.uint8)
    for k, origin in enumerate(origins):
        if (origin.image, origin.height, origin.width) != (first.image, first.height, first.width):
            raise ValueError(f"tiles of different images ('{first.image}', '{origin.image}') cannot be assembled")
        ch, cw = origin.content(tile)
        image[origin.y : origin.y + ch, origin.x : origin.x + cw] = images[k, :, :ch, :cw].transpose(1, 2, 0)
        if mask is not None:
            mask[origin.y : origin.y + ch, origin.x : origin.x + cw] = masks[k, :ch, :cw]
    return image, mask
