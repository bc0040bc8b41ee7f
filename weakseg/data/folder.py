"""Any folder of images with masks, and optionally image labels (CSV) and boxes (COCO JSON).

Layout::

    root/images/<name>.<ext>          required
    root/masks/<name>.png             optional; binary (0/255 or 0/1) or class indices (mask_mode='index')
    root/labels.csv                   optional; columns name,label  (several labels separated by ';')
    root/boxes.json                   optional; COCO: images[].file_name, annotations[].bbox = [x, y, w, h]
    root/<split>.txt or root/splits/<split>.txt   optional; one name per line (split 'all' = every image)

A folder without split lists is one split: every split name (``all``, ``trainval``, ``test``, ...) is every image,
with a warning for names other than ``all``. Once it has split lists, a split without its list is an error.

Bad files get a clear answer (see :mod:`weakseg.io` and :mod:`weakseg.data.checks`): index masks must hold
declared classes (``mask_classes``) or 255, binary masks must be binary, boxes are clipped to the image or, when
empty, inverted or outside it, an error naming ``boxes.json``; with ``tag_classes`` declared, a tag outside them is
an error naming ``labels.csv``.
"""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np

from weakseg.data.base import SegmentationDataset
from weakseg.data.checks import binarize, check_boxes, check_mask_classes, tag_indices
from weakseg.data.registry import register_dataset
from weakseg.data.sample import Sample
from weakseg.errors import DataFileError, DatasetNotFoundError
from weakseg.io import list_images, read_image, read_label_image


def read_labels_csv(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{name: [label, ...]} and the sorted label vocabulary."""
    table: dict[str, list[str]] = {}
    try:
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            if not reader.fieldnames or not {"name", "label"} <= set(reader.fieldnames):
                raise DataFileError(path, "labels CSV needs the columns 'name' and 'label'")
            for row in reader:
                if not (row["name"] or "").strip():
                    raise DataFileError(path, f"line {reader.line_num} of the labels CSV has no name")
                labels = [s.strip() for s in (row["label"] or "").split(";") if s.strip()]
                table[Path(row["name"].strip()).stem] = labels
    except (UnicodeDecodeError, csv.Error) as err:
        raise DataFileError(path, f"cannot read the labels CSV ({err})") from err
    vocab = sorted({label for labels in table.values() for label in labels})
    return table, vocab


def read_coco_boxes(path: Path) -> dict[str, np.ndarray]:
    """{image stem: (N, 4) x_min, y_min, x_max, y_max} from a COCO detection file."""
    try:
        coco = json.loads(path.read_text())
        files = {img["id"]: Path(img["file_name"]).stem for img in coco["images"]}
        boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        for ann in coco.get("annotations", []):
            x, y, w, h = (float(v) for v in ann["bbox"])  # numbers now: a null or a word fails here
            boxes.setdefault(files[ann["image_id"]], []).append((x, y, x + w, y + h))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DataFileError(path, f"cannot read COCO boxes ({err})") from err
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}


NOT_SPLIT_LISTS = ("readme", "licen", "notes")
"""Text files in a dataset root whose name starts with one of these are documentation, not split lists."""


def split_lists(root: Path) -> dict[str, Path]:
    """{split name: list file} from ``root/<split>.txt`` and ``root/splits/<split>.txt`` (the latter wins)."""
    found = {}
    for folder in (root, root / "splits"):
        if folder.is_dir():
            for path in sorted(folder.glob("*.txt")):
                if path.is_file() and not path.stem.lower().startswith(NOT_SPLIT_LISTS):
                    found[path.stem] = path
    return found


@register_dataset("folder")
class FolderDataset(SegmentationDataset):
    """Images with optional masks, labels and boxes from a plain folder (see the module docstring)."""

    def __init__(
        self,
        root: str | Path,
        split: str = "all",
        mask_mode: str = "binary",
        mask_classes: list[str] | None = None,
        download: bool = False,
        tag_classes: list[str] | None = None,
    ):
        super().__init__(root, split)
        if download:
            raise DatasetNotFoundError("Folder", self.root, "A folder dataset has no archive to download.")
        image_dir = self.root / "images"
        if not image_dir.is_dir():
            raise DatasetNotFoundError("Folder", self.root, "Expected an images/ folder (and optionally masks/).")
        self._files = {p.stem: p for p in list_images(image_dir)}
        if not self._files:
            raise DatasetNotFoundError("Folder", image_dir, "The folder holds no images.")
        lists = split_lists(self.root)
        if split == "all" or not lists:
            if split != "all":
                warnings.warn(
                    f"'{self.root}' has no split lists: split '{split}' is every image (as 'all')", stacklevel=2
                )
            self.names = sorted(self._files)
        else:
            split_file = lists.get(split)
            if split_file is None:
                raise DataFileError(
                    self.root / f"{split}.txt", f"split list is missing (this folder lists {', '.join(sorted(lists))})"
                )
            self.names = [s.strip() for s in split_file.read_text().splitlines() if s.strip()]
            if not self.names:
                raise DataFileError(split_file, "split list names no images")
            missing = [n for n in self.names if n not in self._files]
            if missing:
                raise DataFileError(image_dir / missing[0], f"image listed in '{split_file.name}' is missing")
        if mask_mode not in ("binary", "index"):
            raise ValueError("mask_mode must be 'binary' or 'index'")
        self.mask_mode = mask_mode
        if mask_classes:
            self.mask_classes = list(mask_classes)
        self._mask_dir = self.root / "masks"
        self._labels_file = self.root / "labels.csv"
        self._labels, vocabulary = read_labels_csv(self._labels_file) if self._labels_file.is_file() else ({}, [])
        self.tag_classes = list(tag_classes) if tag_classes else vocabulary
        self._boxes_file = self.root / "boxes.json"
        self._boxes = read_coco_boxes(self._boxes_file) if self._boxes_file.is_file() else {}

    def _mask_file(self, name: str) -> Path | None:
        if not self._mask_dir.is_dir():
            return None
        for ext in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
            path = self._mask_dir / f"{name}{ext}"
            if path.is_file():
                return path
        raise DataFileError(self._mask_dir / f"{name}.png", "mask file is missing")

    def load(self, name: str) -> Sample:
        image = read_image(self._files[name])
        mask = None
        mask_file = self._mask_file(name)
        if mask_file is not None:
            raw = read_label_image(mask_file)
            if raw.shape != image.shape[:2]:
                raise DataFileError(mask_file, f"mask size {raw.shape} != image size {image.shape[:2]}")
            if self.mask_mode == "index":
                mask = check_mask_classes(raw, self.mask_classes, mask_file)
            else:
                mask = binarize(raw, mask_file)
        labels = tag_indices(self._labels.get(name, []), self.tag_classes, self._labels_file, name)
        boxes = check_boxes(self._boxes.get(name, np.zeros((0, 4))), image.shape[:2], self._boxes_file, name)
        return Sample(image=image, mask=mask, labels=labels, boxes=boxes, name=name)
