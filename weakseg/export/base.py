"""What every exporter shares: a folder of masks read as class-index images, the class names, the image file
names and sizes the annotation tool will see, and the registry of formats.

Mask values: with one class (the default, ``foreground``) 0 is background and 1 or 255 foreground (binary 0/1
or 0/255 masks); with several classes 0 is background, k is ``classes[k - 1]`` and 255 (``IGNORE_INDEX``) means
unlabelled, exported as background. Any other value is an error naming the file.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError, DataFileError
from weakseg.io import list_images, read_mask
from weakseg.progress import progress_bar
from weakseg.registry import Registry

DEFAULT_CLASSES = ("foreground",)
DEFAULT_IMAGE_EXT = ".jpg"
PALETTE = ("#ff3838", "#2c99a8", "#ffb21d", "#48f90a", "#cf56ff", "#1f77ff", "#ff9d97", "#3ddb86", "#8438ff")
"""Label colours (CVAT, Label Studio), cycled by class index."""


@dataclass(frozen=True)
class MaskItem:
    """One mask and the image it labels."""

    name: str  # the mask's file stem, also the image's
    mask_path: Path
    file_name: str  # the image file name the annotation tool will see
    image_path: Path | None = None  # the source image, when --images was given


@dataclass
class LabelSet:
    """The masks to export, in name order; iterate for ``(item, class-index image)`` pairs."""

    mask_dir: Path
    classes: list[str]  # foreground class names: class index k is classes[k - 1]
    items: list[MaskItem]
    on_read: Callable[[], None] | None = None  # called after each pair was handled (progress)

    def __len__(self) -> int:
        return len(self.items)

    def __iter__(self) -> Iterator[tuple[MaskItem, np.ndarray]]:
        for item in self.items:
            yield item, self.read(item)
            if self.on_read is not None:
                self.on_read()

    def class_name(self, class_id: int) -> str:
        return self.classes[class_id - 1]

    def read(self, item: MaskItem) -> np.ndarray:
        """The mask as a uint8 class-index image (0 = background or unlabelled), checked against the image size."""
        mask = read_mask(item.mask_path)
        if item.image_path is not None:
            width, height = image_size(item.image_path)
            if (height, width) != mask.shape:
                raise DataFileError(
                    item.mask_path,
                    f"mask is {mask.shape[1]}x{mask.shape[0]} but its image {item.image_path.name} is {width}x{height}",
                )
        return class_indices(mask, self.classes, item.mask_path)


def present_classes(labels: np.ndarray) -> list[int]:
    """Foreground class indices that occur in a class-index image, ascending."""
    return [int(v) for v in np.flatnonzero(np.bincount(labels.ravel(), minlength=1)) if v != 0]


def class_indices(mask: np.ndarray, classes: Sequence[str], path: Path) -> np.ndarray:
    """Map a raw mask to class indices 0..len(classes) (see the module docstring for the values accepted)."""
    counts = np.bincount(mask.ravel(), minlength=256)
    if len(classes) == 1:
        allowed = {0, 1, 255}
        labels = (mask > 0).astype(np.uint8)
    else:
        allowed = {*range(len(classes) + 1), IGNORE_INDEX}
        labels = np.where(mask == IGNORE_INDEX, 0, mask).astype(np.uint8)
    bad = [int(v) for v in np.flatnonzero(counts) if int(v) not in allowed]
    if bad:
        names = ", ".join(classes)
        raise DataFileError(
            path,
            f"mask value {bad[0]} is beyond the {len(classes)} declared class(es) ({names}); "
            "name every class in index order with --classes (255 = unlabelled)",
        )
    return labels


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image's stored pixel grid, as ``weakseg.io.read_image`` reads it (EXIF orientation
    not applied), from its header only."""
    try:
        with Image.open(path) as image:
            return image.size
    except (OSError, ValueError) as err:
        raise DataFileError(path, f"image file cannot be read ({err})") from err


def find_mask_folder(directory: str | Path) -> Path:
    """``DIR/masks`` (as ``weakseg pseudo-label`` writes it), or DIR itself when it is a folder named ``masks``."""
    directory = Path(directory)
    if (directory / "masks").is_dir():
        return directory / "masks"
    if directory.name == "masks" and directory.is_dir():
        return directory
    raise DataFileError(directory / "masks", "no masks folder (expected DIR/masks/<name>.png, as pseudo-label writes)")


def parse_classes(classes: str | Sequence[str] | None) -> list[str]:
    """Foreground class names from a list or a comma-separated string; default one class, ``foreground``."""
    if classes is None:
        return list(DEFAULT_CLASSES)
    names = [c.strip() for c in classes.split(",")] if isinstance(classes, str) else [str(c).strip() for c in classes]
    if not names or any(not n for n in names):
        raise ConfigError(f"class names must be non-empty, got {classes!r}")
    if len(set(names)) != len(names):
        raise ConfigError(f"class names must be unique, got {classes!r}")
    if len(names) > 254:
        raise ConfigError(f"at most 254 classes fit a uint8 mask with 255 = unlabelled, got {len(names)}")
    return names


def collect_masks(
    directory: str | Path,
    classes: str | Sequence[str] | None = None,
    images: str | Path | None = None,
    image_ext: str = DEFAULT_IMAGE_EXT,
) -> LabelSet:
    """The masks of ``directory`` (see ``find_mask_folder``) with the names of their images: the real file names
    in ``images`` when given (every mask must have one there), else ``<name><image_ext>``."""
    mask_dir = find_mask_folder(directory)
    mask_paths = sorted(p for p in mask_dir.glob("*.png") if p.is_file())
    if not mask_paths:
        raise DataFileError(mask_dir, "masks folder holds no .png masks")
    image_files: dict[str, Path] = {}
    if images is not None:
        images = Path(images)
        if not images.is_dir():
            raise DataFileError(images, "images folder is missing")
        image_files = {p.stem: p for p in list_images(images)}
    ext = image_ext if not image_ext or image_ext.startswith(".") else f".{image_ext}"
    items = []
    for path in mask_paths:
        image_path = None
        if images is not None:
            image_path = image_files.get(path.stem)
            if image_path is None:
                raise DataFileError(path, f"no image named '{path.stem}.*' for this mask in {images}")
        items.append(MaskItem(path.stem, path, image_path.name if image_path else f"{path.stem}{ext}", image_path))
    return LabelSet(mask_dir, parse_classes(classes), items)


Exporter = Callable[..., Path]
"""``exporter(labels: LabelSet, out: Path, **options) -> Path`` writes the format under ``out`` and returns the
main file it wrote."""
EXPORTERS: Registry[Exporter] = Registry("export format", normalize=lambda name: name.strip().lower())
E = TypeVar("E", bound=Exporter)


def register_exporter(name: str) -> Callable[[E], E]:
    """Function decorator: make an exporter available to ``export_labels(..., format=name)``."""
    return EXPORTERS.register(name)


def list_exporters() -> list[str]:
    return EXPORTERS.names()


def get_exporter(name: str) -> Exporter:
    """The exporter registered as ``name`` (case-insensitive); ConfigError listing the known ones otherwise."""
    return EXPORTERS.get(name)


def describe_exporter(name: str) -> str:
    """The first paragraph of an exporter's docstring, as one line."""
    return " ".join((inspect.getdoc(get_exporter(name)) or "").split("\n\n")[0].split())


def export_labels(
    directory: str | Path,
    format: str,
    out: str | Path | None = None,
    classes: str | Sequence[str] | None = None,
    images: str | Path | None = None,
    image_ext: str = DEFAULT_IMAGE_EXT,
    progress: bool = False,
    **options: Any,
) -> Path:
    """Export the masks of ``directory`` (``DIR/masks/<name>.png``) in ``format`` (``list_exporters()``) under
    ``out`` (default ``DIR/export/<format>``); returns the main file written. ``options`` go to the exporter."""
    exporter = get_exporter(format)
    accepted = list(inspect.signature(exporter).parameters)[2:]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ConfigError(f"format '{format}' has no option {', '.join(unknown)}; its options: {accepted or 'none'}")
    labels = collect_masks(directory, classes, images, image_ext)
    out = Path(out) if out is not None else labels.mask_dir.parent / "export" / EXPORTERS.resolve(format)
    with progress_bar(progress) as bar:
        task = bar.add_task(f"export {format}", total=len(labels))
        labels.on_read = lambda: bar.advance(task)
        return exporter(labels, out, **options)
