"""Partial labels read from the files annotation tools write (weakseg.data.annotations)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from weakseg.data.annotations import (
    BACKGROUND,
    decode_cvat_rle,
    merge,
    read_annotations,
    read_clicks_csv,
    read_coco,
    read_cvat,
    read_label_studio,
    read_tags_csv,
    read_voc_boxes,
    read_yolo,
)
from weakseg.errors import DataFileError


def blob_mask(height: int = 48, width: int = 64) -> np.ndarray:
    """A realistic binary region: an ellipse with a notch, touching the right border."""
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, (width - 20, height // 2), (22, 14), 15, 0, 360, 1, -1)
    mask[height // 2 - 2 : height // 2 + 2, width - 30 : width - 20] = 0
    return mask


def test_coco_boxes_keypoints_polygons_and_rle(tmp_path):
    from pycocotools import mask as mask_utils

    mask = blob_mask()
    rle = mask_utils.encode(np.asfortranarray(mask))
    rle["counts"] = rle["counts"].decode()
    square = [10, 5, 20, 5, 20, 15, 10, 15]  # pixels 10..19 x 5..14: pixel (i, j) spans [j, j + 1) x [i, i + 1)
    coco = {
        "images": [
            {"id": 7, "file_name": "dir/cat_1.jpg", "height": 48, "width": 64},
            {"id": 8, "file_name": "b.png", "height": 4, "width": 4},
        ],
        "categories": [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "bbox": [1.5, 2, 10, 20], "segmentation": rle, "iscrowd": 1},
            {"id": 2, "image_id": 7, "category_id": 2, "bbox": [], "segmentation": [square]},
            {"id": 3, "image_id": 7, "category_id": 1, "keypoints": [3, 4, 2, 0, 0, 0, 5, 6, 1]},
        ],
    }  # fmt: skip
    path = tmp_path / "coco.json"
    path.write_text(json.dumps(coco))
    labels = read_coco(path)
    assert set(labels) == {"cat_1", "b"}  # an image without annotations is still listed, with nothing
    cat = labels["cat_1"]
    assert cat.boxes == [(1.5, 2.0, 11.5, 22.0, "cat")]
    assert cat.points == [(3.0, 4.0, "cat"), (5.0, 6.0, "cat")]  # v = 0 is not a click
    assert cat.size == (48, 64)
    painted = cat.mask(["background", "cat", "dog"], 48, 64)
    expected = mask.copy()
    expected[5:15, 10:20] = 2  # the later shape over the earlier one
    np.testing.assert_array_equal(painted, expected)
    assert labels["b"].mask(["background"], 4, 4) is None
    assert read_annotations(path)["cat_1"].boxes == cat.boxes


def test_yolo_boxes_in_pixels_with_class_names(tmp_path):
    (tmp_path / "classes.txt").write_text("polyp\ntool\n")
    (tmp_path / "img1.txt").write_text("0 0.5 0.25 0.5 0.1\n\n1 0.1 0.9 0.2 0.2\n")
    labels = read_yolo(tmp_path, lambda name: (200, 100))
    np.testing.assert_allclose([b[:4] for b in labels["img1"].boxes], [(25, 40, 75, 60), (0, 160, 20, 200)], atol=1e-9)
    assert [b[4] for b in labels["img1"].boxes] == ["polyp", "tool"]
    (tmp_path / "img2.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(DataFileError, match=r"line 1 .*img2\.txt"):
        read_yolo(tmp_path, lambda name: (200, 100))


def test_voc_boxes_are_converted_from_one_based_inclusive(tmp_path):
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>50</width><height>40</height><depth>3</depth></size>"
        "<object><name>dog</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>10</xmax><ymax>20</ymax></bndbox></object>"
        "</annotation>"
    )
    labels = read_voc_boxes(tmp_path)
    assert labels["a"].boxes == [(0.0, 0.0, 10.0, 20.0, "dog")]  # pixels 0..9 x 0..19: 10 x 20 pixels
    assert labels["a"].size == (40, 50)
    (tmp_path / "b.xml").write_text("<annotation><object><name>x</name></object></annotation>")
    with pytest.raises(DataFileError, match=r"b\.xml"):
        read_voc_boxes(tmp_path)


def test_clicks_and_tags_from_csv(tmp_path):
    clicks = tmp_path / "clicks.csv"
    clicks.write_text("name,x,y,label\nimg1.jpg,3,4,positive\nimg1.jpg,10.5,2,negative\nimg2,1,1,polyp\nimg2,2,2,0\n")
    labels = read_clicks_csv(clicks, foreground="polyp")
    assert labels["img1"].points == [(3.0, 4.0, "polyp"), (10.5, 2.0, BACKGROUND)]
    assert labels["img2"].points == [(1.0, 1.0, "polyp"), (2.0, 2.0, BACKGROUND)]
    tags = tmp_path / "labels.csv"
    tags.write_text("name,label\nimg1,cat; dog\nimg2,dog\n")
    both = merge(read_annotations(clicks, foreground="polyp"), read_annotations(tags))
    assert both["img1"].tags == ["cat", "dog"] and both["img1"].points == labels["img1"].points
    bad = tmp_path / "bad.csv"
    bad.write_text("name,x,y\nimg1,three,4\n")
    with pytest.raises(DataFileError, match="line 2"):
        read_clicks_csv(bad)
    assert read_tags_csv(tags)["img2"].tags == ["dog"]


def test_label_studio_export_in_percent(tmp_path):
    result = [
        {"type": "rectanglelabels", "original_width": 200, "original_height": 100,
         "value": {"x": 10, "y": 20, "width": 50, "height": 30, "rotation": 0, "rectanglelabels": ["cat"]}},
        {"type": "keypointlabels", "original_width": 200, "original_height": 100,
         "value": {"x": 50, "y": 50, "width": 1, "keypointlabels": ["cat"]}},
        {"type": "polygonlabels", "original_width": 200, "original_height": 100,
         "value": {"points": [[5, 10], [10, 10], [10, 20], [5, 20]], "polygonlabels": ["cat"]}},
        {"type": "choices", "value": {"choices": ["indoor"]}},
    ]  # fmt: skip
    tasks = [
        {
            "data": {"image": "/data/upload/3/0a1b2c3d-photo_7.jpg"},
            "file_upload": "0a1b2c3d-photo_7.jpg",
            "annotations": [{"was_cancelled": False, "result": result}, {"was_cancelled": True, "result": []}],
        },
        {"data": {"image": "s3://bucket/x.png"}, "annotations": [], "predictions": [{"result": result[3:]}]},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks))
    labels = read_label_studio(path)
    entry = labels["photo_7"]
    assert entry.boxes == [(20.0, 20.0, 120.0, 50.0, "cat")]
    assert entry.points == [(100.0, 50.0, "cat")]
    assert entry.tags == ["indoor"] and labels["x"].tags == ["indoor"]
    painted = entry.mask(["background", "cat"], 100, 200)
    expected = np.zeros((100, 200), np.uint8)
    expected[10:20, 10:20] = 1  # x 5..10 % of 200 px, y 10..20 % of 100 px
    np.testing.assert_array_equal(painted, expected)
    assert read_annotations(path)["photo_7"].boxes == entry.boxes


def test_cvat_xml_boxes_points_polygons_masks_tags(tmp_path):
    bitmap = np.array([[0, 1, 1], [1, 0, 0]], bool)  # row-major 0,1,1,1,0,0 -> runs 1, 3, 2
    np.testing.assert_array_equal(decode_cvat_rle([1, 3, 2], 2, 3), bitmap)
    np.testing.assert_array_equal(decode_cvat_rle([0, 2, 4], 2, 3), [[1, 1, 0], [0, 0, 0]])
    xml = """<?xml version="1.0" encoding="utf-8"?>
<annotations><version>1.1</version>
  <image id="0" name="frames/f_001.jpg" width="8" height="6">
    <box label="car" source="manual" occluded="0" xtl="1.5" ytl="2" xbr="4" ybr="5" z_order="0"/>
    <points label="car" source="manual" occluded="0" points="1.00,2.00;3.5,4" z_order="0"/>
    <polygon label="road" source="manual" occluded="0" points="0,0;8,0;8,2;0,2" z_order="0"/>
    <mask label="car" source="manual" occluded="0" rle="1, 3, 2" left="5" top="3" width="3" height="2" z_order="0"/>
    <tag label="day" source="manual"/>
  </image>
</annotations>"""
    path = tmp_path / "annotations.xml"
    path.write_text(xml)
    labels = read_cvat(path)
    entry = labels["f_001"]
    assert entry.boxes == [(1.5, 2.0, 4.0, 5.0, "car")]
    assert entry.points == [(1.0, 2.0, "car"), (3.5, 4.0, "car")]
    assert entry.tags == ["day"] and entry.size == (6, 8)
    expected = np.zeros((6, 8), np.uint8)
    expected[0:2, :] = 2  # the polygon from y = 0 to 2 covers rows 0 and 1
    expected[3:5, 5:8][bitmap] = 1
    np.testing.assert_array_equal(entry.mask(["background", "car", "road"], 6, 8), expected)
    (tmp_path / "broken.xml").write_text(xml.replace('rle="1, 3, 2"', 'rle="1, 3"'))
    with pytest.raises(DataFileError, match=r"broken\.xml"):
        read_cvat(tmp_path / "broken.xml")


def test_unknown_files_are_refused_by_name(tmp_path):
    path = tmp_path / "thing.json"
    path.write_text(json.dumps({"hello": 1}))
    with pytest.raises(DataFileError, match=r"thing\.json"):
        read_annotations(path)


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.parametrize("fmt", ["coco", "cvat", "labelstudio", "yolo"])
def test_exported_masks_read_back(tmp_path, fmt):
    """weakseg's own exports are importable: pixel-exact for RLE / brush; YOLO polygons (outer contours, so holes
    come back filled; drawn as Ultralytics does) agree away from a pixel of the region borders."""
    from scipy.ndimage import binary_fill_holes

    from weakseg.export import export_labels
    from weakseg.io import write_png

    masks = {"a": blob_mask() * 2, "b": np.zeros((30, 40), np.uint8)}
    masks["a"][2:10, 3:12] = 1
    masks["b"][5:25, 10:30] = 1
    for name, mask in masks.items():
        write_png(tmp_path / "labels" / "masks" / f"{name}.png", mask)
    out = export_labels(tmp_path / "labels", fmt, tmp_path / fmt, classes=["cat", "dog"])
    sizes = {n: m.shape for n, m in masks.items()}
    labels = read_annotations(out.parent / "labels" if fmt == "yolo" else out, image_size=sizes.__getitem__)
    for name, truth in masks.items():
        painted = labels[name].mask(["background", "cat", "dog"], *truth.shape)
        if fmt != "yolo":
            np.testing.assert_array_equal(painted, truth)
            continue
        filled = truth.copy()
        for c in (1, 2):
            filled[binary_fill_holes(truth == c)] = c
        border = cv2.dilate(cv2.Canny(filled * 100, 1, 1), np.ones((3, 3), np.uint8)) > 0
        np.testing.assert_array_equal(painted[~border], filled[~border])
