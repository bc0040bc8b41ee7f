"""Pictures: mask overlays, heatmaps, side-by-side panels."""

from __future__ import annotations

import cv2
import numpy as np

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
