"""YOLO segmentation labels (Ultralytics): one polygon per outer contour, coordinates normalised to [0, 1].

Polygons cannot hold holes: a hole inside a region is filled in the export. Contours of fewer than 3 points
(single pixels, 1-pixel lines) are dropped. Vertices are pixel centres as ``cv2.findContours`` gives them
(``CHAIN_APPROX_SIMPLE``), divided by the image width and height, the convention Ultralytics' own mask converter
uses; ``cv2.fillPoly`` of the scaled-back points redraws the region with its holes filled.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import yaml

from weakseg.export.base import LabelSet, present_classes, register_exporter
from weakseg.io import write_text

DECIMALS = 6


def polygons(region: np.ndarray) -> list[np.ndarray]:
    """Outer contours of a boolean region as (N, 2) integer x, y vertex arrays with N >= 3."""
    contours, _ = cv2.findContours(region.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    return [c.reshape(-1, 2) for c in contours if len(c) >= 3]


def label_lines(class_map: np.ndarray) -> list[str]:
    """``cls x1 y1 x2 y2 ...`` lines for one image (cls = mask class index - 1)."""
    height, width = class_map.shape
    lines = []
    for class_id in present_classes(class_map):
        for polygon in polygons(class_map == class_id):
            coords = " ".join(f"{x / width:.{DECIMALS}f} {y / height:.{DECIMALS}f}" for x, y in polygon.tolist())
            lines.append(f"{class_id - 1} {coords}")
    return lines


@register_exporter("yolo")
def export_yolo(labels: LabelSet, out: Path) -> Path:
    """YOLO-seg labels/<name>.txt (outer-contour polygons, holes filled) and data.yaml with the class names."""
    for item, class_map in labels:
        lines = label_lines(class_map)
        write_text(out / "labels" / f"{Path(item.file_name).stem}.txt", "".join(f"{line}\n" for line in lines))
    data = {"path": ".", "train": "images", "val": "images", "names": dict(enumerate(labels.classes))}
    header = (
        "# weakseg export-labels: YOLO segmentation labels in labels/, one file per image (class x1 y1 x2 y2 ...).\n"
        "# Put the images in images/ beside labels/ (or point path/train/val at them) before training.\n"
    )
    path = out / "data.yaml"
    write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path
