"""Oxford-IIIT Pet in its official layout: images/, annotations/{trimaps,xmls,list.txt,trainval.txt,test.txt}."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from weakseg.data.base import SegmentationDataset
from weakseg.data.checks import check_boxes
from weakseg.data.download import fetch_archives
from weakseg.data.registry import register_dataset
from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.errors import DataFileError, DatasetNotFoundError
from weakseg.io import read_image, read_mask

URLS = [
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/images.tar.gz",
    "https://www.robots.ox.ac.uk/~vgg/data/pets/data/annotations.tar.gz",
]
SPECIES = ["cat", "dog"]


def read_list(path: Path) -> list[tuple[str, int, int]]:
    """Rows of an official list file as (name, class_id, species_id); comment lines are skipped."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if not parts or parts[0].startswith("#"):
            continue
        try:
            row = (parts[0], int(parts[1]), int(parts[2]))
        except (IndexError, ValueError):
            raise DataFileError(path, f"malformed line '{line}' in list file") from None
        if row[2] not in (1, 2):
            raise DataFileError(path, f"species id {row[2]} of '{row[0]}' is neither 1 (cat) nor 2 (dog)")
        rows.append(row)
    return rows


def breed_of(name: str) -> str:
    """Breed name from an image name such as ``american_bulldog_100``."""
    return name.rsplit("_", 1)[0]


def read_head_boxes(path: Path) -> np.ndarray:
    """Head boxes from a VOC xml file, as (N, 4) x_min, y_min, x_max, y_max (max exclusive)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataFileError(path, f"cannot parse box file ({err})") from err
    boxes = []
    for box in root.iter("bndbox"):
        x0, y0, x1, y1 = (float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax"))
        boxes.append((x0 - 1, y0 - 1, x1, y1))
    return np.asarray(boxes, np.float32).reshape(-1, 4)


@register_dataset("oxford_pet")
class OxfordPet(SegmentationDataset):
    """Oxford-IIIT Pet. Masks: trimap 1 = pet -> 1, 2 = background -> 0, 3 = boundary -> ignore.

    Tags are the breeds present in ``list.txt`` (37 in the full dataset), or the species with ``tags='species'``.
    With ``masks='tags'`` the pet's pixels carry its tag's class instead (1 + the tag index: background / cat /
    dog with species tags, background + one class per breed with breed tags), a multi-class task whose ground
    truth follows from each image's tag. Splits: ``trainval``, ``test``, ``all``. Boxes are the head boxes
    (trainval images only).
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "trainval",
        tags: str = "breed",
        download: bool = False,
        masks: str = "pet",
    ):
        super().__init__(root, split)
        self.tags = tags
        if masks not in ("pet", "tags"):
            raise ValueError(f"masks must be 'pet' or 'tags', not '{masks}'")
        self.masks = masks
        ann = self.root / "annotations"
        if download and not (ann / "list.txt").is_file():
            fetch_archives(URLS, self.root)
        list_file = ann / ("list.txt" if split == "all" else f"{split}.txt")
        if not self.root.is_dir() or not (self.root / "images").is_dir():
            raise DatasetNotFoundError(
                "Oxford-IIIT Pet",
                self.root,
                "Expected images/ and annotations/ (official layout); get it from "
                "https://www.robots.ox.ac.uk/~vgg/data/pets/ or pass --download.",
            )
        if split not in ("trainval", "test", "all"):
            raise DataFileError(list_file, "unknown split (use trainval, test or all)")
        if not list_file.is_file():
            raise DataFileError(list_file, "split list is missing")
        rows = read_list(list_file)
        if not rows:
            raise DataFileError(list_file, "split list names no images")
        every = read_list(ann / "list.txt") if (ann / "list.txt").is_file() else rows
        breeds = {cid: breed_of(n) for n, cid, _ in every}
        unknown = [(n, c) for n, c, _ in rows if c not in breeds]
        if unknown:
            raise DataFileError(list_file, f"class id {unknown[0][1]} of '{unknown[0][0]}' is not in list.txt")
        self.class_ids = sorted(breeds)
        if tags == "species":
            self.tag_classes = list(SPECIES)
            self._tags = {n: s - 1 for n, _, s in rows}
        elif tags == "breed":
            self.tag_classes = [breeds[c] for c in self.class_ids]
            index = {c: i for i, c in enumerate(self.class_ids)}
            self._tags = {n: index[c] for n, c, _ in rows}
        else:
            raise ValueError(f"tags must be 'breed' or 'species', not '{tags}'")
        self.species = {n: SPECIES[s - 1] for n, _, s in rows}
        self.names = [n for n, _, _ in rows]
        self.mask_classes = ["background", *self.tag_classes] if masks == "tags" else ["background", "pet"]

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.jpg"

    def mask_path(self, name: str) -> Path:
        return self.root / "annotations" / "trimaps" / f"{name}.png"

    def load(self, name: str) -> Sample:
        image = read_image(self.image_path(name))
        trimap = read_mask(self.mask_path(name))
        if trimap.shape != image.shape[:2]:
            raise DataFileError(self.mask_path(name), f"trimap size {trimap.shape} != image size {image.shape[:2]}")
        if not np.isin(trimap, (1, 2, 3)).all():
            bad = sorted(set(np.unique(trimap).tolist()) - {1, 2, 3})
            raise DataFileError(self.mask_path(name), f"trimap values {bad} are not 1, 2 or 3")
        mask = np.full(trimap.shape, IGNORE_INDEX, np.uint8)
        mask[trimap == 1] = 1 + self._tags[name] if self.masks == "tags" else 1
        mask[trimap == 2] = 0
        xml = self.root / "annotations" / "xmls" / f"{name}.xml"
        boxes = read_head_boxes(xml) if xml.is_file() else np.zeros((0, 4), np.float32)
        boxes = check_boxes(boxes, image.shape[:2], xml, name)
        return Sample(image=image, mask=mask, labels=[self._tags[name]], boxes=boxes, name=name)
