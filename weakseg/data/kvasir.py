"""Kvasir-SEG polyps in its official layout: images/, masks/, kavsir_bboxes.json, train.txt / val.txt."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from weakseg.data.base import SegmentationDataset
from weakseg.data.checks import check_boxes
from weakseg.data.download import fetch_archives, hoist
from weakseg.data.registry import register_dataset
from weakseg.data.sample import Sample
from weakseg.errors import DataFileError, DatasetNotFoundError
from weakseg.io import read_image, read_mask

URLS = ["https://datasets.simula.no/downloads/kvasir-seg.zip"]
VAL_SIZE = 120


def read_boxes_json(path: Path) -> dict[str, np.ndarray]:
    """``kavsir_bboxes.json`` as {name: (N, 4) x_min, y_min, x_max, y_max}."""
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise DataFileError(path, f"cannot read box file ({err})") from err
    out = {}
    for name, entry in data.items():
        boxes = [(b["xmin"], b["ymin"], b["xmax"], b["ymax"]) for b in entry.get("bbox", [])]
        out[name] = np.asarray(boxes, np.float32).reshape(-1, 4)
    return out


@register_dataset("kvasir")
class KvasirSeg(SegmentationDataset):
    """Kvasir-SEG. Masks are JPEG and thresholded at 128; every image carries the tag ``polyp``.

    Splits: ``train`` and ``val`` from the official ``train.txt`` / ``val.txt`` (``test`` is an alias of
    ``val``, since the official split has no third part), ``all``. Without split files a fixed seeded
    880 / 120 split is used, with a warning.
    """

    mask_classes = ["background", "polyp"]
    tag_classes = ["polyp"]

    def __init__(self, root: str | Path, split: str = "train", download: bool = False):
        super().__init__(root, split)
        if download and not (self.root / "images").is_dir():
            fetch_archives(URLS, self.root)
            hoist(self.root, "Kvasir-SEG")
        if not (self.root / "images").is_dir() or not (self.root / "masks").is_dir():
            raise DatasetNotFoundError(
                "Kvasir-SEG",
                self.root,
                "Expected images/ and masks/ (official layout); get it from "
                "https://datasets.simula.no/kvasir-seg/ or pass --download.",
            )
        split_name = "val" if split == "test" else split
        if split_name == "all":
            self.names = sorted(p.stem for p in (self.root / "images").glob("*.jpg"))
        elif split_name in ("train", "val"):
            self.names = self._split_names(split_name)
        else:
            raise DataFileError(self.root / f"{split}.txt", "unknown split (use train, val, test or all)")
        self._box_file = self.root / "kavsir_bboxes.json"
        self._boxes = read_boxes_json(self._box_file) if self._box_file.is_file() else {}

    def _split_names(self, split: str) -> list[str]:
        path = self.root / f"{split}.txt"
        if path.is_file():
            names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
            if not names:
                raise DataFileError(path, "split list names no images")
            return names
        warnings.warn(f"'{path}' not found: using a fixed seeded {VAL_SIZE}-image validation split", stacklevel=3)
        every = sorted(p.stem for p in (self.root / "images").glob("*.jpg"))
        order = np.random.default_rng(0).permutation(len(every))
        n_val = min(VAL_SIZE, round(0.12 * len(every)))  # 120 of the official 1000
        chosen = order[len(every) - n_val :] if split == "val" else order[: len(every) - n_val]
        return [every[i] for i in sorted(chosen)]

    def load(self, name: str) -> Sample:
        image = read_image(self.root / "images" / f"{name}.jpg")
        raw = read_mask(self.root / "masks" / f"{name}.jpg")
        if raw.shape != image.shape[:2]:
            raise DataFileError(self.root / "masks" / f"{name}.jpg", "mask size differs from image size")
        mask = (raw >= 128).astype(np.uint8)
        boxes = check_boxes(self._boxes.get(name, np.zeros((0, 4))), image.shape[:2], self._box_file, name)
        return Sample(image=image, mask=mask, labels=[0], boxes=boxes, name=name)
