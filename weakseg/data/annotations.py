"""Partial labels from the files annotation tools write: boxes, clicks, tags and drawn masks, per image.

Every reader returns ``{image stem: ImageLabels}`` in pixel coordinates of the image as stored (x right, y down,
boxes ``x_min, y_min, x_max, y_max`` with the max exclusive), each label carrying its class name. Formats:

========================  ==========================================================================
COCO JSON                 ``bbox`` → boxes, ``keypoints`` (v > 0) → clicks, ``segmentation``
                          (polygons or RLE) → drawn masks; the category name is the class
YOLO txt folder           ``cls cx cy w h`` boxes or ``cls x1 y1 ...`` polygons (normalised), one file
                          per image; class names from ``classes.txt`` or ``data.yaml``
Pascal VOC XML folder     ``object/name`` and ``bndbox`` (1-based, inclusive) per file
clicks CSV                ``name,x,y,label``; label a class name, ``positive``/``1`` (the foreground
                          class) or ``negative``/``0``/``background`` (a background click)
Label Studio JSON export  ``rectanglelabels``, ``keypointlabels``, ``polygonlabels``, ``brushlabels``
                          (its RLE), ``choices`` (tags); coordinates in percent of the image
CVAT for images 1.1 XML   ``box``, ``points``, ``polygon``, ``mask`` (CVAT's RLE), ``tag``
========================  ==========================================================================

A drawn mask (polygon, RLE, brush) is kept as shapes and painted on request (:meth:`ImageLabels.mask`), later
shapes over earlier ones. Malformed files stop with a :class:`~weakseg.errors.DataFileError` naming the file.
"""

from __future__ import annotations

import csv
import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import yaml

from weakseg.errors import DataFileError

BACKGROUND = "background"
POSITIVE = ("positive", "pos", "1", "true", "fg", "foreground")
NEGATIVE = ("negative", "neg", "0", "false", "bg", BACKGROUND)


@dataclass
class Shape:
    """A drawn region of one class: a polygon ((K, 2) x, y) or a binary bitmap placed at (left, top).

    Polygons are painted as their format's own tools do: ``corners`` (COCO, CVAT, Label Studio: pixel (i, j)
    spans [j, j + 1) x [i, i + 1), rasterised by pycocotools) or ``centres`` (YOLO: vertices are pixel indices,
    filled with the boundary included by ``cv2.fillPoly``, as Ultralytics' ``polygon2mask``)."""

    label: str
    polygon: np.ndarray | None = None
    bitmap: np.ndarray | None = None
    left: int = 0
    top: int = 0
    vertices: str = "corners"

    def paint(self, canvas: np.ndarray, value: int) -> None:
        """Set the shape's pixels of ``canvas`` (H, W) to ``value``."""
        if self.polygon is not None and self.vertices == "centres":
            cv2.fillPoly(canvas, [np.round(self.polygon).astype(np.int32)], int(value))
            return
        if self.polygon is not None:
            from pycocotools import mask as mask_utils

            h, w = canvas.shape
            rle = mask_utils.frPyObjects([self.polygon.astype(np.float64).ravel().tolist()], h, w)
            canvas[mask_utils.decode(rle)[..., 0].astype(bool)] = value
            return
        assert self.bitmap is not None
        h, w = canvas.shape
        bitmap = self.bitmap[max(0, -self.top) : h - self.top, max(0, -self.left) : w - self.left]
        y, x = max(0, self.top), max(0, self.left)
        region = canvas[y : y + bitmap.shape[0], x : x + bitmap.shape[1]]
        region[bitmap.astype(bool)] = value


@dataclass
class ImageLabels:
    """What the files hold for one image; any part may be empty. ``size``: (height, width) when a file says it."""

    boxes: list[tuple[float, float, float, float, str]] = field(default_factory=list)
    points: list[tuple[float, float, str]] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    shapes: list[Shape] = field(default_factory=list)
    size: tuple[int, int] | None = None

    def merge(self, other: ImageLabels) -> None:
        """Add ``other``'s labels to these (tags without repeats)."""
        self.boxes += other.boxes
        self.points += other.points
        self.tags += [t for t in other.tags if t not in self.tags]
        self.shapes += other.shapes
        self.size = self.size or other.size

    def mask(self, classes: list[str] | dict[str, int], height: int, width: int) -> np.ndarray | None:
        """The drawn shapes as a class-index mask (index into ``classes``, or ``classes[label]`` for a mapping;
        background 0), or None without shapes."""
        if not self.shapes:
            return None
        index = classes if isinstance(classes, dict) else {c: i for i, c in enumerate(classes)}
        canvas = np.zeros((height, width), np.uint8)
        for shape in self.shapes:
            if shape.label not in index:
                raise KeyError(shape.label)
            shape.paint(canvas, index[shape.label])
        return canvas


Labels = dict[str, ImageLabels]


def stem(file_name: str) -> str:
    """The image identifier of a file name or path (``a/b/cat_1.jpg`` → ``cat_1``)."""
    return Path(str(file_name).replace("\\", "/")).stem


def _entry(labels: Labels, name: str) -> ImageLabels:
    return labels.setdefault(name, ImageLabels())


def _fail(path: Path, what: str, err: Exception) -> DataFileError:
    return DataFileError(path, f"cannot read {what} ({type(err).__name__}: {err})")


# --- COCO ------------------------------------------------------------------------------------------------------


def _coco_shapes(segmentation, label: str, height: int, width: int) -> list[Shape]:
    if isinstance(segmentation, list):  # polygons [[x1, y1, x2, y2, ...], ...]
        return [Shape(label, polygon=np.asarray(p, np.float64).reshape(-1, 2)) for p in segmentation if len(p) >= 6]
    from pycocotools import mask as mask_utils

    rle = segmentation
    if isinstance(rle.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(rle, height, width)
    return [Shape(label, bitmap=mask_utils.decode(rle).astype(bool))]


def read_coco(path: str | Path) -> Labels:
    """Boxes, clicks and drawn masks from a COCO JSON file (instances, keypoints or both)."""
    path = Path(path)
    labels: Labels = {}
    try:
        coco = json.loads(path.read_text())
        categories = {c["id"]: c["name"] for c in coco.get("categories", [])}
        images = {img["id"]: img for img in coco["images"]}
        for img in images.values():
            _entry(labels, stem(img["file_name"])).size = (int(img["height"]), int(img["width"]))
        for ann in coco.get("annotations", []):
            img = images[ann["image_id"]]
            entry = _entry(labels, stem(img["file_name"]))
            label = categories.get(ann.get("category_id"), str(ann.get("category_id")))
            if ann.get("bbox"):
                x, y, w, h = (float(v) for v in ann["bbox"])
                entry.boxes.append((x, y, x + w, y + h, label))
            keypoints = ann.get("keypoints") or []
            for k in range(0, len(keypoints) - 2, 3):
                if keypoints[k + 2] > 0:
                    entry.points.append((float(keypoints[k]), float(keypoints[k + 1]), label))
            if ann.get("segmentation"):
                entry.shapes += _coco_shapes(ann["segmentation"], label, int(img["height"]), int(img["width"]))
    except (OSError, KeyError, ValueError, TypeError) as err:
        raise _fail(path, "COCO annotations", err) from err
    return labels


# --- YOLO and Pascal VOC boxes ---------------------------------------------------------------------------------


def yolo_class_names(folder: Path) -> list[str] | None:
    """Class names of a YOLO label folder from ``classes.txt`` or ``data.yaml`` beside it or one level up."""
    for where in (folder, folder.parent):
        if (where / "classes.txt").is_file():
            return [s.strip() for s in (where / "classes.txt").read_text().splitlines() if s.strip()]
        if (where / "data.yaml").is_file():
            names = yaml.safe_load((where / "data.yaml").read_text()).get("names")
            return [names[k] for k in sorted(names)] if isinstance(names, dict) else list(names)
    return None


def read_yolo(folder: str | Path, image_size: Callable[[str], tuple[int, int]]) -> Labels:
    """Boxes (``cls cx cy w h``) and polygons (YOLO-seg: ``cls x1 y1 x2 y2 ...``), normalised, from a folder of
    YOLO label files, one per image; ``image_size(stem)`` gives (height, width) of each image."""
    folder = Path(folder)
    names = yolo_class_names(folder)
    labels: Labels = {}
    for file in sorted(folder.glob("*.txt")):
        if file.name == "classes.txt":
            continue
        height, width = image_size(file.stem)
        entry = _entry(labels, file.stem)
        entry.size = (height, width)
        for number, line in enumerate(file.read_text().splitlines(), 1):
            fields = line.split()
            if not fields:
                continue
            try:
                if len(fields) != 5 and (len(fields) < 7 or len(fields) % 2 == 0):
                    raise ValueError(f"{len(fields)} fields: a box has 5, a polygon an odd number >= 7")
                cls, values = int(fields[0]), np.asarray(fields[1:], np.float64)
                label = names[cls] if names is not None else str(cls)
            except (ValueError, IndexError) as err:
                raise DataFileError(file, f"line {number} is not a YOLO box or polygon ({err})") from err
            if len(values) == 4:
                cx, cy, w, h = values
                x0, y0 = (cx - w / 2) * width, (cy - h / 2) * height
                entry.boxes.append((x0, y0, x0 + w * width, y0 + h * height, label))
            else:
                entry.shapes.append(Shape(label, values.reshape(-1, 2) * [width, height], vertices="centres"))
    return labels


def read_voc_boxes(folder: str | Path) -> Labels:
    """Boxes from a folder of Pascal VOC XML files (1-based inclusive pixel coordinates)."""
    labels: Labels = {}
    for file in sorted(Path(folder).glob("*.xml")):
        try:
            root = ET.parse(file).getroot()
            name = stem(root.findtext("filename") or file.stem)
            entry = _entry(labels, name)
            size = root.find("size")
            if size is not None:
                entry.size = (int(size.findtext("height")), int(size.findtext("width")))
            for obj in root.iter("object"):
                box = obj.find("bndbox")
                x0, y0, x1, y1 = (float(box.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax"))
                entry.boxes.append((x0 - 1, y0 - 1, x1, y1, obj.findtext("name").strip()))
        except (ET.ParseError, AttributeError, TypeError, ValueError) as err:
            raise _fail(file, "Pascal VOC annotation", err) from err
    return labels


# --- clicks and tags from CSV -----------------------------------------------------------------------------------


def click_class(label: str, foreground: str) -> str:
    """The class a click's label names: ``positive``-like → ``foreground``, ``negative``-like → background."""
    text = label.strip()
    if text.lower() in POSITIVE:
        return foreground
    if text.lower() in NEGATIVE:
        return BACKGROUND
    return text


def read_clicks_csv(path: str | Path, foreground: str = "foreground") -> Labels:
    """Clicks from a CSV with the columns ``name,x,y,label`` (label optional: positive when missing)."""
    path = Path(path)
    labels: Labels = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "x", "y"} <= set(reader.fieldnames):
            raise DataFileError(path, "clicks CSV needs the columns 'name', 'x', 'y' (and optionally 'label')")
        for number, row in enumerate(reader, 2):
            try:
                x, y = float(row["x"]), float(row["y"])
            except (TypeError, ValueError) as err:
                raise DataFileError(path, f"line {number}: x and y must be numbers") from err
            label = click_class(row.get("label") or "positive", foreground)
            _entry(labels, stem(row["name"])).points.append((x, y, label))
    return labels


def read_tags_csv(path: str | Path) -> Labels:
    """Image tags from a CSV with the columns ``name,label`` (several labels separated by ``;``)."""
    path = Path(path)
    labels: Labels = {}
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or not {"name", "label"} <= set(reader.fieldnames):
            raise DataFileError(path, "labels CSV needs the columns 'name' and 'label'")
        for row in reader:
            entry = _entry(labels, stem(row["name"]))
            entry.tags += [
                t.strip() for t in (row["label"] or "").split(";") if t.strip() and t.strip() not in entry.tags
            ]
    return labels


# --- Label Studio -----------------------------------------------------------------------------------------------


def decode_brush_rle(rle: Iterable[int], height: int, width: int) -> np.ndarray:
    """Label Studio's brush RLE (label-studio-converter ``brush.encode_rle``) → the (H, W) alpha channel of the
    RGBA image it encodes. The bit stream (most significant bit first): 32 bits value count, 5 bits word size − 1,
    4 × 4 bits run-length field sizes − 1, then blocks: 1 bit (1: one value repeated, 0: literal values), 2 bits
    choosing a field size, that many bits of run length − 1, then one value or that many values."""
    bits = np.unpackbits(np.asarray(list(rle), np.uint8))
    position = 0

    def read(size: int) -> int:
        nonlocal position
        chunk = bits[position : position + size]
        position += size
        if len(chunk) < size:
            raise ValueError("brush RLE ends early")
        return int("".join(map(str, chunk)), 2) if size else 0

    count = read(32)
    word = read(5) + 1
    sizes = [read(4) + 1 for _ in range(4)]
    out = np.zeros(count, np.uint8)
    i = 0
    while i < count:
        repeat = read(1)
        end = i + 1 + read(sizes[read(2)])
        if repeat:
            out[i:end] = read(word)
        else:
            for k in range(i, min(end, count)):
                out[k] = read(word)
        i = end
    if count != height * width * 4:
        raise ValueError(f"brush RLE holds {count} values, not {height} x {width} x 4")
    return out.reshape(height, width, 4)[..., 3]


def _studio_image(task: dict) -> str:
    data = task.get("data", {})
    value = data.get("image") or next((v for v in data.values() if isinstance(v, str)), "")
    name = stem(value.split("?")[0])
    upload = task.get("file_upload")  # uploads are stored as '<8 hex>-<original name>'
    if upload and stem(upload) == name:
        name = re.sub(r"^[0-9a-f]{8}-", "", name)
    return name


def read_label_studio(path: str | Path) -> Labels:
    """Labels from a Label Studio JSON export (each task's latest annotation that was not cancelled; tasks
    without one use their first prediction)."""
    path = Path(path)
    labels: Labels = {}
    try:
        tasks = json.loads(path.read_text())
        for task in tasks if isinstance(tasks, list) else [tasks]:
            done = [a for a in task.get("annotations", []) if not a.get("was_cancelled")]
            chosen = done[-1] if done else (task.get("predictions") or [None])[0]
            entry = _entry(labels, _studio_image(task))
            for item in (chosen or {}).get("result", []):
                _studio_item(entry, item)
    except (OSError, KeyError, ValueError, TypeError, IndexError) as err:
        raise _fail(path, "Label Studio export", err) from err
    return labels


def _studio_item(entry: ImageLabels, item: dict) -> None:
    kind, value = item.get("type", ""), item.get("value", {})
    width, height = item.get("original_width"), item.get("original_height")
    if kind == "choices":
        entry.tags += [c for c in value["choices"] if c not in entry.tags]
        return
    if kind not in ("rectanglelabels", "keypointlabels", "polygonlabels", "brushlabels"):
        return  # text areas, ratings, ... say nothing about pixels
    if not width or not height:
        raise ValueError(f"a '{kind}' result without original_width / original_height")
    entry.size = entry.size or (int(height), int(width))
    sx, sy = width / 100.0, height / 100.0
    label = value[kind][0]
    if kind == "rectanglelabels":
        if value.get("rotation"):
            raise ValueError("rotated rectangles are not supported")
        x, y = value["x"] * sx, value["y"] * sy
        entry.boxes.append((x, y, x + value["width"] * sx, y + value["height"] * sy, label))
    elif kind == "keypointlabels":
        entry.points.append((value["x"] * sx, value["y"] * sy, label))
    elif kind == "polygonlabels":
        entry.shapes.append(Shape(label, polygon=np.asarray(value["points"], np.float64) * [sx, sy]))
    else:
        entry.shapes.append(Shape(label, bitmap=decode_brush_rle(value["rle"], int(height), int(width)) > 0))


# --- CVAT -------------------------------------------------------------------------------------------------------


def decode_cvat_rle(counts: Iterable[int], height: int, width: int) -> np.ndarray:
    """CVAT's mask RLE: alternating run lengths over a (height, width) box in row-major order, the first run
    of 0s (possibly empty)."""
    flat = np.zeros(height * width, bool)
    position, value = 0, False
    for run in counts:
        flat[position : position + run] = value
        position += run
        value = not value
    if position != height * width:
        raise ValueError(f"mask RLE covers {position} pixels, its box {height} x {width}")
    return flat.reshape(height, width)


def _points(text: str) -> np.ndarray:
    return np.asarray([[float(v) for v in p.split(",")] for p in text.split(";") if p.strip()], np.float64)


def read_cvat(path: str | Path) -> Labels:
    """Labels from a CVAT for images 1.1 XML file."""
    path = Path(path)
    labels: Labels = {}
    try:
        for image in ET.parse(path).getroot().iter("image"):
            entry = _entry(labels, stem(image.get("name")))
            entry.size = (int(image.get("height")), int(image.get("width")))
            for element in image:
                label = element.get("label")
                if element.tag == "box":
                    if float(element.get("rotation", 0) or 0):
                        raise ValueError("rotated boxes are not supported")
                    x0, y0, x1, y1 = (float(element.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                    entry.boxes.append((x0, y0, x1, y1, label))
                elif element.tag == "points":
                    entry.points += [(float(x), float(y), label) for x, y in _points(element.get("points"))]
                elif element.tag == "polygon":
                    entry.shapes.append(Shape(label, polygon=_points(element.get("points"))))
                elif element.tag == "mask":
                    box = [int(float(element.get(k))) for k in ("left", "top", "width", "height")]
                    counts = [int(v) for v in element.get("rle").split(",") if v.strip()]
                    bitmap = decode_cvat_rle(counts, box[3], box[2])
                    entry.shapes.append(Shape(label, bitmap=bitmap, left=box[0], top=box[1]))
                elif element.tag == "tag" and label not in entry.tags:
                    entry.tags.append(label)
    except (OSError, ET.ParseError, AttributeError, TypeError, ValueError) as err:
        raise _fail(path, "CVAT 1.1 XML", err) from err
    return labels


# --- any file --------------------------------------------------------------------------------------------------


def read_annotations(
    path: str | Path, image_size: Callable[[str], tuple[int, int]] | None = None, foreground: str = "foreground"
) -> Labels:
    """Read any supported annotation file or folder, recognised by its content (see the module docstring)."""
    path = Path(path)
    if path.is_dir():
        if any(path.glob("*.xml")):
            return read_voc_boxes(path)
        if image_size is None:
            raise DataFileError(path, "YOLO labels need the image sizes")
        return read_yolo(path, image_size)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        header = path.read_text().splitlines()[:1]
        columns = {c.strip() for c in header[0].split(",")} if header else set()
        return read_clicks_csv(path, foreground) if {"x", "y"} <= columns else read_tags_csv(path)
    if suffix == ".xml":
        return read_cvat(path)
    if suffix == ".json":
        try:
            head = json.loads(path.read_text())
        except ValueError as err:
            raise _fail(path, "JSON", err) from err
        if isinstance(head, dict) and "images" in head:
            return read_coco(path)
        if isinstance(head, list) and (not head or "data" in head[0]):
            return read_label_studio(path)
    raise DataFileError(path, "not a known annotation format (COCO / Label Studio JSON, CVAT XML, CSV, YOLO, VOC)")


def merge(*sources: Labels) -> Labels:
    """One ``{stem: ImageLabels}`` holding every source's labels."""
    out: Labels = {}
    for labels in sources:
        for name, entry in labels.items():
            _entry(out, name).merge(entry)
    return out
