"""Any folder of images with masks, and optionally image labels (CSV) and boxes (COCO JSON).

Layout::

    root/images/<name>.<ext>          required
    root/masks/<name>.png             optional; binary (0/255 or 0/1) or class indices (mask_mode='index')
    root/labels.csv                   optional; columns name,label  (several labels separated by ';')
    root/boxes.json                   optional; COCO: images[].file_name, annotations[].bbox = [x, y, w, h]
    root/<split>.txt or root/splits/<split>.txt   optional; one name per line (split 'all' = every image)
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from weakseg.data.base import SegmentationDataset
from weakseg.data.registry import register_dataset
from weakseg.data.sample import Sample
from weakseg.errors import DataFileError, DatasetNotFoundError
from weakseg.io import list_images, read_image, read_mask


def read_labels_csv(path: Path) -> tuple[dict[str, list[str]], list[str]]:
    """{name: [label, ...]} and the sorted label vocabulary."""
    table: dict[str, list[str]] = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "label"} <= set(reader.fieldnames):
            raise DataFileError(path, "labels CSV needs the columns 'name' and 'label'")
        for row in reader:
            labels = [s.strip() for s in row["label"].split(";") if s.strip()]
            table[Path(row["name"]).stem] = labels
    vocab = sorted({label for labels in table.values() for label in labels})
    return table, vocab


def read_coco_boxes(path: Path) -> dict[str, np.ndarray]:
    """{image stem: (N, 4) x_min, y_min, x_max, y_max} from a COCO detection file."""
    try:
        coco = json.loads(path.read_text())
        files = {img["id"]: Path(img["file_name"]).stem for img in coco["images"]}
        boxes: dict[str, list[tuple[float, float, float, float]]] = {}
        for ann in coco.get("annotations", []):
            x, y, w, h = ann["bbox"]
            boxes.setdefault(files[ann["image_id"]], []).append((x, y, x + w, y + h))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise DataFileError(path, f"cannot read COCO boxes ({err})") from err
    return {k: np.asarray(v, np.float32).reshape(-1, 4) for k, v in boxes.items()}


def binarize(raw: np.ndarray) -> np.ndarray:
    """0/255 (or JPEG-noisy) masks threshold at 128; 0/1 masks stay as they are."""
    return (raw >= 128 if raw.max() > 1 else raw > 0).astype(np.uint8)


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
        if split == "all":
            self.names = sorted(self._files)
        else:
            split_file = next(
                (p for p in (self.root / f"{split}.txt", self.root / "splits" / f"{split}.txt") if p.is_file()),
                None,
            )
            if split_file is None:
                raise DataFileError(self.root / f"{split}.txt", "split list is missing")
            self.names = [s.strip() for s in split_file.read_text().splitlines() if s.strip()]
            missing = [n for n in self.names if n not in self._files]
            if missing:
                raise DataFileError(image_dir / missing[0], f"image listed in '{split_file.name}' is missing")
        if mask_mode not in ("binary", "index"):
            raise ValueError("mask_mode must be 'binary' or 'index'")
        self.mask_mode = mask_mode
        if mask_classes:
            self.mask_classes = list(mask_classes)
        self._mask_dir = self.root / "masks"
        labels_file = self.root / "labels.csv"
        self._labels, self.tag_classes = read_labels_csv(labels_file) if labels_file.is_file() else ({}, [])
        boxes_file = self.root / "boxes.json"
        self._boxes = read_coco_boxes(boxes_file) if boxes_file.is_file() else {}

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
            raw = read_mask(mask_file)
            if raw.shape != image.shape[:2]:
                raise DataFileError(mask_file, f"mask size {raw.shape} != image size {image.shape[:2]}")
            mask = raw if self.mask_mode == "index" else binarize(raw)
        vocab = {c: i for i, c in enumerate(self.tag_classes)}
        labels = [vocab[c] for c in self._labels.get(name, [])]
        boxes = self._boxes.get(name, np.zeros((0, 4), np.float32))
        return Sample(image=image, mask=mask, labels=labels, boxes=boxes, name=name)
