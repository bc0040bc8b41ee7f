"""CVAT for images 1.1 XML with ``<mask>`` shapes.

A mask shape is CVAT's RLE over the region's bounding box (``left``, ``top``, ``width``, ``height``): run lengths
of the box's pixels read row by row, alternating background and foreground and starting with a background run
(0 long when the box's first pixel is foreground), written as ``"a, b, c"`` (CVAT's own exporter and
``cvat_sdk.masks.encode_mask`` use the same convention). One mask per class present per image.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from weakseg.export.base import PALETTE, LabelSet, present_classes, register_exporter
from weakseg.io import atomic_path


def cvat_rle(region: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """CVAT run lengths of a non-empty boolean region over its bounding box, and the box (left, top, width,
    height)."""
    rows = np.flatnonzero(region.any(axis=1))
    cols = np.flatnonzero(region.any(axis=0))
    top, left = int(rows[0]), int(cols[0])
    height, width = int(rows[-1]) - top + 1, int(cols[-1]) - left + 1
    flat = region[top : top + height, left : left + width].ravel()
    changes = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], changes, [flat.size]))
    runs = np.diff(bounds).tolist()
    if flat[0]:
        runs.insert(0, 0)
    return runs, (left, top, width, height)


def meta(labels: LabelSet) -> ET.Element:
    meta_el = ET.Element("meta")
    task = ET.SubElement(meta_el, "task")
    for tag, text in (("name", "weakseg export"), ("size", str(len(labels))), ("mode", "annotation")):
        ET.SubElement(task, tag).text = text
    labels_el = ET.SubElement(task, "labels")
    for i, name in enumerate(labels.classes):
        label = ET.SubElement(labels_el, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "color").text = PALETTE[i % len(PALETTE)]
        ET.SubElement(label, "type").text = "mask"
        ET.SubElement(label, "attributes")
    return meta_el


@register_exporter("cvat")
def export_cvat(labels: LabelSet, out: Path) -> Path:
    """CVAT for images 1.1 annotations.xml: one <mask> (CVAT's bounding-box RLE) per class present per image."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    root.append(meta(labels))
    for image_id, (item, class_map) in enumerate(labels):
        height, width = class_map.shape
        image = ET.SubElement(
            root, "image", id=str(image_id), name=item.file_name, width=str(width), height=str(height)
        )
        for class_id in present_classes(class_map):
            runs, (left, top, box_width, box_height) = cvat_rle(class_map == class_id)
            attributes = {
                "label": labels.class_name(class_id),
                "source": "auto",
                "occluded": "0",
                "rle": ", ".join(map(str, runs)),
                "left": str(left),
                "top": str(top),
                "width": str(box_width),
                "height": str(box_height),
                "z_order": "0",
            }
            ET.SubElement(image, "mask", attributes)
    ET.indent(root)
    path = out / "annotations.xml"
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
    return path
