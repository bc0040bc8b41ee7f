"""Pictures: mask overlays, heatmaps, side-by-side panels."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch

from weakseg.data.prepared import PreparedSplit
from weakseg.io import write_png
from weakseg.sources.target import Target

PALETTE = np.array(
    [[0, 0, 0], [255, 64, 64], [64, 200, 64], [64, 128, 255], [255, 200, 0], [200, 64, 255], [0, 220, 220]],
    np.uint8,
)


def colorize(mask: np.ndarray) -> np.ndarray:
    """Class indices (H, W) as RGB; ignore (255) is grey."""
    colors = PALETTE[np.minimum(mask, len(PALETTE) - 1)]
    colors[mask == 255] = (128, 128, 128)
    return colors


def overlay(image: np.ndarray, mask: np.ndarray, alpha: float = 0.45, contour: bool = True) -> np.ndarray:
    """Blend the non-background classes of ``mask`` over an RGB image, with their outlines."""
    out = image.astype(np.float32).copy()
    fg = (mask > 0) & (mask != 255)
    out[fg] = (1 - alpha) * out[fg] + alpha * colorize(mask)[fg]
    out = out.clip(0, 255).astype(np.uint8)
    if contour:
        for cls in np.unique(mask[fg]):
            contours, _ = cv2.findContours((mask == cls).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
            cv2.drawContours(out, contours, -1, tuple(int(c) for c in PALETTE[min(cls, len(PALETTE) - 1)]), 2)
    return out


def heatmap(image: np.ndarray, values: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """A [0, 1] map (H, W) as a JET heatmap blended over an RGB image."""
    colored = cv2.applyColorMap((np.clip(values, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return ((1 - alpha) * image + alpha * colored).clip(0, 255).astype(np.uint8)


def panel(images: list[np.ndarray], height: int = 256) -> np.ndarray:
    """Images side by side at a common height."""
    scaled = [cv2.resize(im, (max(1, round(im.shape[1] * height / im.shape[0])), height)) for im in images]
    scaled = [np.repeat(s[..., None], 3, 2) if s.ndim == 2 else s for s in scaled]
    return np.concatenate(scaled, axis=1)


def save_label_examples(path: str | Path, split: PreparedSplit, targets: list[Target], count: int = 6) -> None:
    """A picture: per row an image, each source's labels (soft maps as heatmaps, a dimmed image where the source
    has no label), then the ground truth; the images labelled by the most sources first."""
    order = torch.stack([t.labelled for t in targets], 1).sum(1).argsort(descending=True, stable=True)
    rows = []
    for i in order[:count].tolist():
        image = split.image_rows[i].permute(1, 2, 0).numpy()
        cells = [image]
        for t in targets:
            labels = t.labels[i].numpy()
            if not t.labelled[i]:
                cells.append((image * 0.3).astype(np.uint8))
            else:
                cells.append(heatmap(image, labels / 255) if t.soft else overlay(image, labels))
        if split.mask_rows is not None:
            cells.append(overlay(image, split.mask_rows[i].numpy()))
        rows.append(panel(cells, height=160))
    if rows:
        write_png(path, np.concatenate(rows, axis=0))
