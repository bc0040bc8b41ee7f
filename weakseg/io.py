"""Reading images and masks with clear errors, and writing files atomically."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from weakseg.errors import DataFileError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_GREY_TOLERANCE = 32
"""Largest difference between the colour channels of a JPEG mask that still counts as grey (chroma noise)."""


def _head(path: Path, count: int = 32) -> bytes:
    with open(path, "rb") as fh:
        return fh.read(count)


def _jpeg_is_complete(path: Path) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (trailing zero padding allowed): a file cut short
    does not, and its decoder would fill the missing rows with grey instead of failing."""
    with open(path, "rb") as fh:
        fh.seek(0, os.SEEK_END)
        fh.seek(max(0, fh.tell() - 64))
        return fh.read().rstrip(b"\x00").endswith(b"\xff\xd9")


def _check_complete(path: Path, head: bytes, what: str) -> None:
    """Raise if a JPEG is truncated. The end marker is looked for first (one small read); only a file without it
    is decoded once more by Pillow, which tells a truncated file from one with trailing data."""
    if not head.startswith(JPEG_MAGIC) or _jpeg_is_complete(path):
        return
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise DataFileError(path, f"{what} file is truncated or corrupt ({err})") from err


def read_image(path: str | Path) -> np.ndarray:
    """Read an image as an RGB uint8 array of shape (H, W, 3).

    The stored pixel grid is returned as it is: an EXIF orientation tag is not applied, exactly as for masks
    (:func:`read_mask`), so that an image and its mask stay aligned. A truncated JPEG is an error, never an image
    whose missing rows are grey.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "image file is missing")
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DataFileError(path, "image file cannot be decoded")
    _check_complete(path, _head(path), "image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _to_single_channel(mask: np.ndarray, path: Path, lossy: bool) -> np.ndarray:
    """One label channel from a BGR or BGRA mask, or an error naming the file when the colours are not a label.

    - BGRA whose alpha is not simply opaque everywhere, and whose visible pixels (alpha > 0) have one colour: the
      label is the alpha channel (a label drawn as transparency).
    - BGRA with both colour and alpha varying: an error (which of them holds the label is unknown).
    - otherwise (BGR, or BGRA opaque or evenly translucent): grey (all channels equal; in a JPEG within
      :data:`JPEG_GREY_TOLERANCE`) gives the channel maximum; a colour mask is an error.
    """
    colour = mask[..., :3]
    if mask.shape[2] == 4:
        alpha = mask[..., 3]
        low, high = int(alpha.min()), int(alpha.max())
        if not (low == high == np.iinfo(mask.dtype).max):
            visible = colour[alpha > 0]
            if not len(visible) or (visible == visible[0]).all():
                return alpha
            if low != high:
                raise DataFileError(
                    path,
                    "mask has labels in both its colours and its transparency (RGBA); "
                    "save it as a single-channel mask (grey levels or class indices)",
                )
    spread = colour.max(axis=2) - colour.min(axis=2)
    if int(spread.max()) <= (JPEG_GREY_TOLERANCE if lossy else 0):
        return colour.max(axis=2)
    worst = np.unravel_index(int(spread.argmax()), spread.shape)
    example = tuple(int(v) for v in colour[worst][::-1])
    raise DataFileError(
        path,
        f"colour mask (pixels such as RGB {example} are not grey): store class indices in a single-channel "
        "or palette PNG",
    )


def read_label_image(path: str | Path) -> np.ndarray:
    """Read a label image as the integer values it stores, shape (H, W), dtype uint8 or wider (16-bit PNG).

    Grey images give their values (PNGs of 1, 2 or 4 bits per pixel: the raw sample values, e.g. 0/1), palette
    PNGs their palette indices, colour and RGBA images one channel as :func:`_to_single_channel` decides.
    Floating-point values must be whole numbers and no value may be negative. Anything else, and a truncated
    file, raises :class:`DataFileError` naming the file. EXIF orientation is never applied.
    """
    path = Path(path)
    if not path.is_file():
        raise DataFileError(path, "mask file is missing")
    head = _head(path)
    png = head.startswith(PNG_MAGIC) and len(head) >= 26
    bit_depth, colour_type = (head[24], head[25]) if png else (8, -1)
    if colour_type == 3:  # palette PNG: the indices are the labels (OpenCV would expand them to colours)
        from PIL import Image

        try:
            with Image.open(path) as im:
                mask = np.array(im.getchannel(0) if im.mode == "PA" else im)
        except (OSError, SyntaxError, ValueError) as err:
            raise DataFileError(path, f"mask file cannot be decoded ({err})") from err
        if mask.ndim != 2:
            raise DataFileError(path, f"palette mask decoded with {mask.shape[2]} channels")
    else:
        mask = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if mask is None:
            raise DataFileError(path, "mask file cannot be decoded")
        _check_complete(path, head, "mask")
        if mask.ndim == 3 and mask.dtype.kind == "f":
            raise DataFileError(path, f"mask is a floating-point colour image ({mask.dtype}, {mask.shape[2]} channels)")
        if mask.ndim == 3:
            mask = _to_single_channel(mask, path, lossy=head.startswith(JPEG_MAGIC))
        if colour_type == 0 and bit_depth < 8:  # OpenCV scales 1/2/4-bit samples to 0-255; keep the stored values
            mask = mask // (255 // (2**bit_depth - 1))
    if mask.dtype.kind == "f":
        if not np.isfinite(mask).all() or (mask != np.round(mask)).any():
            raise DataFileError(path, f"mask holds values that are not whole numbers ({mask.dtype} image)")
        mask = mask.astype(np.int64)
    if mask.dtype.kind not in "ui":  # bool
        mask = mask.astype(np.uint8)
    if mask.size and int(mask.min()) < 0:
        raise DataFileError(path, f"mask holds negative values (as low as {int(mask.min())})")
    return mask


def read_mask(path: str | Path) -> np.ndarray:
    """Read a single-channel label image as uint8 (H, W): :func:`read_label_image`, whose values must fit 0-255
    (a 16-bit mask with larger values is an error naming the file and its largest value, never wrapped)."""
    mask = read_label_image(path)
    if mask.dtype != np.uint8:
        top = int(mask.max()) if mask.size else 0
        if top > 255:
            raise DataFileError(path, f"mask values up to {top} do not fit 0-255 ({mask.dtype} image)")
        mask = mask.astype(np.uint8)
    return mask


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


TEMPORARY_SUFFIX = ".tmp"
_HOST = re.sub(r"[^A-Za-z0-9]+", "-", socket.gethostname()).strip("-") or "host"
_TEMPORARY = re.compile(r"\..+\.(?P<host>[A-Za-z0-9-]+)-(?P<pid>[0-9]+)\.[a-z0-9_]{8}\.tmp")
"""The name of an :func:`atomic_path` temporary: ``.<name>.<host>-<pid of the writer>.<8 random characters>.tmp``."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds. The file gets the
    permissions a plain ``open`` would give it (0666 less the umask), not mkstemp's private 0600.

    The temporary is hidden and ends in ``.tmp``, never in the suffix of `path` (writers that need the format
    from the suffix give it explicitly): one left behind by a process killed mid-write is never listed as an
    output (``*.png``, :func:`list_images`), and :func:`remove_temporaries` deletes it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.{_HOST}-{os.getpid()}."
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=TEMPORARY_SUFFIX, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def temporary_folder(beside: str | Path) -> Path:
    """A new empty folder next to ``beside``, named as :func:`atomic_path` names its temporaries (so that
    :func:`remove_temporaries` deletes it once its writer has ended)."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{beside.name}.{_HOST}-{os.getpid()}."
    return Path(tempfile.mkdtemp(prefix=prefix, suffix=TEMPORARY_SUFFIX, dir=beside.parent))


@contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``path`` that becomes ``path`` only if the block succeeds; when another
    process made ``path`` meanwhile, that one is kept and this one removed."""
    path = Path(path)
    tmp = temporary_folder(path)
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        try:
            os.rename(tmp, path)
        except OSError:
            if not path.is_dir():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _writer_gone(host: str, pid: int) -> bool:
    """Whether the process that made a temporary has ended (known only for a process of this machine)."""
    if host != _HOST:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_temporaries(folder: str | Path, recursive: bool = True) -> int:
    """Delete the :func:`atomic_path` and :func:`atomic_folder` temporaries in ``folder`` (and below) whose writer
    has ended: writes that a kill or a crash cut short. Those of running processes (a write in progress) are kept.
    Returns how many."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    found = list(folder.rglob(f"*{TEMPORARY_SUFFIX}") if recursive else folder.glob(f"*{TEMPORARY_SUFFIX}"))
    removed = 0
    for path in found:
        match = _TEMPORARY.fullmatch(path.name)
        if match and _writer_gone(match["host"], int(match["pid"])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically (a crash never leaves a half-written file)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def write_text(path: str | Path, text: str) -> None:
    """Write text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv(path: str | Path, rows: list[dict[str, Any]], fields: list[str]) -> None:
    """Write rows as CSV with a header, atomically (a log rewritten whole each epoch is never half there)."""
    text = StringIO()
    writer = csv.DictWriter(text, fields)
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, text.getvalue())


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 image (grey or RGB) atomically, as PNG (or as the path's suffix says: JPEG for .jpg)."""
    path = Path(path)
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    encoded, data = cv2.imencode(path.suffix or ".png", array)  # the format from the suffix (.jpg: JPEG)
    if not encoded:
        raise DataFileError(path, "cannot write image")
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.tobytes())


def list_images(folder: str | Path) -> list[Path]:
    """Image files in a folder, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
