"""Sliding-window inference for large images: overlapping tiles, stitched by keeping each tile's central part.
(The window grids live in :mod:`weakseg.data.tiles`, beside the training tiles; they are re-exported here.)

Stitching rule ("central crop"): along each axis the windows start at ``0, s, 2s, ...`` with stride
``s = tile - overlap``, the last one flush with the image border. Each window *owns* the pixels between the
midpoints of its overlaps with its neighbours (and up to the image border for the first and last one); the owned
regions of the 2-D grid (a product of the two axes) partition the image, so every output pixel is written once,
from the one tile in which it lies farthest from a tile border. A pixel is thus at least ``overlap // 2`` pixels
from any tile border that is not also an image border. For a translation-equivariant network whose output at a
pixel depends on inputs at most ``r`` pixels away (receptive field ``2r + 1``), ``overlap >= 2r`` makes the tiled
prediction equal to the whole-image one: every pixel's receptive field lies inside its tile, or reaches past an
image border where the tile edge *is* the image edge and the network pads exactly as on the whole image. Networks
that downsample (a U-Net with total stride 32) are equivariant only to shifts that are multiples of the stride:
keep ``tile``, ``overlap`` and, for exactness, the image size multiples of it.

Images smaller than a tile along an axis are zero-padded (bottom / right) to the tile size, so every batch has one
shape; pixels within the receptive field of that padding may then differ slightly from a whole-image pass.

Memory: the output ``(C, H, W)`` float32 map plus one batch of tiles (``batch_size x 3 x tile x tile`` inputs and
the network's activations on them), i.e. bounded independently of the image size apart from the output itself
(and the input image the caller holds, viewed, not copied).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.data.tiles import axis_starts, check_tiling, owned_spans, tile_grid
from weakseg.models.segmenter import Segmenter, predict_probabilities

__all__ = ["as_chw", "axis_starts", "check_tiling", "owned_spans", "predict_tiled", "tile_grid"]


def as_chw(image: np.ndarray | torch.Tensor) -> torch.Tensor:
    """A (3, H, W) CPU/device tensor view of an ``H x W x 3`` uint8 array or a (3, H, W) tensor (uint8 or [0, 1])."""
    if isinstance(image, np.ndarray):
        if image.ndim != 3:
            raise ValueError(f"expected an H x W x C image, got shape {image.shape}")
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)
    if image.ndim != 3:
        raise ValueError(f"expected a (C, H, W) tensor, got shape {tuple(image.shape)}")
    return image


@torch.no_grad()
def predict_tiled(
    model: Segmenter,
    image: np.ndarray | torch.Tensor,
    tile: int = 512,
    overlap: int = 64,
    batch_size: int = 4,
    device: torch.device | None = None,
    tta: list[str] | tuple[str, ...] = (),
    amp: bool = True,
) -> np.ndarray:
    """Class probabilities ``(C, H, W)`` float32 of a whole image, predicted tile by tile (see the module notes
    for the stitching rule and the memory it needs). ``image``: ``H x W x 3`` uint8, or a (3, H, W) tensor, uint8
    or float in [0, 1]; the model normalises internally, as in :func:`predict_probabilities`."""
    check_tiling(tile, overlap)
    device = device or next(model.parameters()).device
    model.eval()
    chw = as_chw(image)
    height, width = chw.shape[-2:]
    ys, xs = axis_starts(height, tile, overlap), axis_starts(width, tile, overlap)
    y_spans, x_spans = owned_spans(ys, height, tile), owned_spans(xs, width, tile)
    windows = [(y, x, ys_, xs_) for y, ys_ in zip(ys, y_spans, strict=True) for x, xs_ in zip(xs, x_spans, strict=True)]
    probs: np.ndarray | None = None
    for first in range(0, len(windows), batch_size):
        batch = windows[first : first + batch_size]
        crops = []
        for y, x, _, _ in batch:
            crop = chw[:, y : y + tile, x : x + tile]
            pad_h, pad_w = tile - crop.shape[-2], tile - crop.shape[-1]
            if pad_h or pad_w:
                crop = F.pad(crop, (0, pad_w, 0, pad_h))
            crops.append(crop)
        tiles = torch.stack(crops).to(device)
        tiles = tiles.float() / 255 if tiles.dtype == torch.uint8 else tiles.float()
        tile_probs = predict_probabilities(model, tiles, tta, amp).float().cpu().numpy()
        if probs is None:
            probs = np.empty((tile_probs.shape[1], height, width), np.float32)
        for p, (y, x, (y_lo, y_hi), (x_lo, x_hi)) in zip(tile_probs, batch, strict=True):
            probs[:, y_lo:y_hi, x_lo:x_hi] = p[:, y_lo - y : y_hi - y, x_lo - x : x_hi - x]
    assert probs is not None  # at least one window always
    return probs
