"""COCO JSON with RLE masks (pycocotools' compressed RLE, counts as a string)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from pycocotools import mask as mask_utils

from weakseg import __version__
from weakseg.errors import ConfigError
from weakseg.export.base import LabelSet, present_classes, register_exporter
from weakseg.io import write_json

COCO_MODES = ("semantic", "instance")


def encode_rle(region: np.ndarray) -> dict:
    """COCO compressed RLE of a boolean (H, W) region, JSON-ready (counts as str)."""
    rle = mask_utils.encode(np.asfortranarray(region, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def connected_parts(region: np.ndarray) -> list[np.ndarray]:
    """The 8-connected components of a boolean region (holes stay holes), largest first."""
    count, components, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8), connectivity=8)
    order = sorted(range(1, count), key=lambda i: -stats[i, cv2.CC_STAT_AREA])
    return [components == i for i in order]


def annotation(region: np.ndarray, ann_id: int, image_id: int, class_id: int, crowd: bool) -> dict:
    segmentation = encode_rle(region)
    rle = {"size": segmentation["size"], "counts": segmentation["counts"].encode("ascii")}
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": class_id,
        "segmentation": segmentation,
        "area": int(mask_utils.area(rle)),
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "iscrowd": int(crowd),
    }


@register_exporter("coco")
def export_coco(labels: LabelSet, out: Path, mode: str = "semantic") -> Path:
    """COCO annotations.json with RLE masks: per class present (semantic, iscrowd=1) or per connected component
    (instance, iscrowd=0, 8-connectivity); categories 1..C-1 are the mask's class indices."""
    if mode not in COCO_MODES:
        raise ConfigError(f"COCO mode must be one of {', '.join(COCO_MODES)}, got '{mode}'")
    images, annotations = [], []
    for image_id, (item, class_map) in enumerate(labels, start=1):
        height, width = class_map.shape
        images.append({"id": image_id, "file_name": item.file_name, "width": width, "height": height})
        for class_id in present_classes(class_map):
            region = class_map == class_id
            for part in [region] if mode == "semantic" else connected_parts(region):
                annotations.append(annotation(part, len(annotations) + 1, image_id, class_id, mode == "semantic"))
    categories = [{"id": k, "name": name, "supercategory": "object"} for k, name in enumerate(labels.classes, 1)]
    data = {
        "info": {"description": f"weakseg export-labels ({mode} masks)", "version": __version__},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": categories,
    }
    path = out / "annotations.json"
    write_json(path, data)
    return path
