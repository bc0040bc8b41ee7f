"""Any folder of images with whatever labels each image has: a mask, boxes, clicks, tags, drawn shapes.

Layout::

    root/images/<name>.<ext>          required
    root/masks/<name>.png             optional, for some images or all; binary (0/255 or 0/1) or class indices
                                      (mask_mode='index'); an image without one is unlabelled
    root/labels.csv                   optional; columns name,label  (several labels separated by ';'; the label
                                      'none' marks a negative: an image with no foreground class, alone)
    root/boxes.json                   optional; COCO: images[].file_name, annotations[].bbox = [x, y, w, h]
    root/clicks.csv                   optional; columns name,x,y,label (label: a class, positive or negative)
    root/annotations/                 optional; any files of :mod:`weakseg.data.annotations` (COCO, Label Studio
                                      JSON, CVAT XML, clicks CSV; sub-folders of YOLO txt or Pascal VOC XML)
    root/<split>.txt or root/splits/<split>.txt   optional; one name per line (split 'all' = every image)

Every source adds to the others: boxes from ``boxes.json`` and from annotation files, tags from ``labels.csv`` and
from Label Studio choices or CVAT tags. Drawn shapes (polygons, RLE, brush masks) are an image's mask when it has
no mask file. Class names map onto the mask classes: in binary mode every name but ``background`` is the
foreground; in index mode a name must be one of ``mask_classes``.

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

from weakseg.data.annotations import BACKGROUND, ImageLabels, merge, read_annotations
from weakseg.data.base import SegmentationDataset
from weakseg.data.checks import binarize, check_boxes, check_mask_classes, check_points, tag_indices
from weakseg.data.registry import register_dataset
from weakseg.data.sample import NEGATIVE_TAG, Sample
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
        annotations: list[str] | None = None,
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
        self._boxes_file = self.root / "boxes.json"
        self._boxes = read_coco_boxes(self._boxes_file) if self._boxes_file.is_file() else {}
        self.annotation_files = [str(p) for p in self._annotation_sources(annotations or [])]
        foreground = self.mask_classes[1] if len(self.mask_classes) > 1 else "foreground"
        self._annotations = merge(
            *(read_annotations(p, self._image_size, foreground) for p in map(Path, self.annotation_files))
        )
        vocabulary = sorted({*vocabulary, *(t for entry in self._annotations.values() for t in entry.tags)})
        self.tag_classes = list(tag_classes) if tag_classes else vocabulary

    def _annotation_sources(self, extra: list[str]) -> list[Path]:
        """``clicks.csv``, everything in ``annotations/``, and the ``annotations`` option's paths (under root)."""
        found = [self.root / "clicks.csv"] if (self.root / "clicks.csv").is_file() else []
        folder = self.root / "annotations"
        if folder.is_dir():
            found += sorted(p for p in folder.iterdir() if p.is_dir() or p.suffix.lower() in (".json", ".xml", ".csv"))
        for item in extra:
            path = self.root / item
            if not path.exists():
                raise DataFileError(path, "annotation file is missing")
            found.append(path)
        return found

    def _image_size(self, name: str) -> tuple[int, int]:
        """(height, width) of an image, from its header."""
        from PIL import Image

        if name not in self._files:
            raise DataFileError(self.root / "images" / name, "annotated image is missing")
        with Image.open(self._files[name]) as im:
            return im.height, im.width

    def _class_index(self, label: str, name: str) -> int:
        """The mask class of an annotation's class name (binary: anything but background is the foreground)."""
        if self.mask_mode == "binary":
            return 0 if label == BACKGROUND else 1
        if label not in self.mask_classes:
            raise DataFileError(
                self.root,
                f"class '{label}' of an annotation of '{name}' is not among mask_classes "
                f"({', '.join(self.mask_classes)})",
            )
        return self.mask_classes.index(label)

    def _annotated(self, name: str, size: tuple[int, int]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
        """(mask of the drawn shapes or None, boxes (N, 4), clicks (K, 3)) of one image from annotation files."""
        entry = self._annotations.get(name, ImageLabels())
        where = self.annotation_files[0] if self.annotation_files else self.root
        if entry.size is not None and entry.size != size:
            raise DataFileError(where, f"annotations of '{name}' are for a {entry.size} image, the image is {size}")
        shapes = {shape.label: self._class_index(shape.label, name) for shape in entry.shapes}
        mask = entry.mask(shapes, *size) if entry.shapes else None
        boxes = np.asarray([b[:4] for b in entry.boxes], np.float32).reshape(-1, 4)
        xy = check_points(np.asarray([p[:2] for p in entry.points], np.float32), size, where, name)
        classes = np.asarray([self._class_index(p[2], name) for p in entry.points], np.float32)
        return mask, boxes, np.column_stack([xy, classes]).astype(np.float32).reshape(-1, 3)

    def _mask_file(self, name: str) -> Path | None:
        """The image's mask file, or None when it has none (unlabelled)."""
        if not self._mask_dir.is_dir():
            return None
        for ext in (".png", ".bmp", ".tif", ".tiff", ".jpg", ".jpeg"):
            path = self._mask_dir / f"{name}{ext}"
            if path.is_file():
                return path
        return None

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
        drawn, more_boxes, points = self._annotated(name, image.shape[:2])
        mask = drawn if mask is None else mask
        tags = [*self._labels.get(name, [])]
        tags += [t for t in self._annotations.get(name, ImageLabels()).tags if t not in tags]
        if NEGATIVE_TAG in tags and len(tags) > 1:
            raise DataFileError(
                self._labels_file, f"'{name}' is tagged '{NEGATIVE_TAG}' (no foreground class) and also {tags}"
            )
        labels = tag_indices(tags, self.tag_classes, self._labels_file, name)
        boxes = np.concatenate([self._boxes.get(name, np.zeros((0, 4), np.float32)), more_boxes])
        boxes = check_boxes(boxes, image.shape[:2], self._boxes_file, name)
        return Sample(image=image, mask=mask, labels=labels, boxes=boxes, name=name, points=points)
