"""Reading images and masks with clear errors, and writing files atomically."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from weakseg.errors import DataFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an RGB uint8 array of shape (H, W, 3)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "image file is missing")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise DataFileError(path, "image file cannot be decoded")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel label image as uint8 (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "mask file is missing")
    mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if mask is None:
        raise DataFileError(path, "mask file cannot be decoded")
    if mask.ndim == 3:
        mask = mask[..., :3].max(axis=2)
    return mask.astype(np.uint8, copy=False)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 image (grey or RGB) as PNG, atomically."""
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    with atomic_path(path) as tmp:
        if not cv2.imwrite(str(tmp), array):
            raise DataFileError(path, "cannot write image")


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
