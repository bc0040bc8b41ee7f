"""``weakseg export-labels``: every format is decoded back with the format's own library or a decoder written
from the format's documentation, and compared with the masks.

- COCO: pycocotools (``COCO`` + ``annToMask``), pixel-exact; instance mode: instances are disjoint single
  components whose union per class is the class region, areas equal to the pixel counts.
- Label Studio brush: the importer's decoder (``weakseg.data.annotations``), written from the rle-pack layout
  documented in label-studio-converter's ``brush.py`` (its ``decode_rle``), pixel-exact; Label Studio's own
  ``decode_rle`` is also run when ``label_studio_converter`` (or ``label_studio_sdk``) is importable. It is not
  a dev dependency: it pulls in pandas and nltk.
- CVAT 1.1: ``xml.etree`` and the importer's decoder of CVAT's convention (bounding-box run lengths, row-major,
  starting with a background run), pixel-exact.
- YOLO-seg: ``cv2.fillPoly`` of the polygons scaled back to pixels. Polygons cannot hold holes, so the stated
  tolerance is against the mask with its holes filled: nothing is drawn outside it, and per class with at least
  64 px the IoU is >= 0.99 (what is lost: contours of fewer than 3 points and rasterisation at pixel corners).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from pycocotools.coco import COCO
from scipy.ndimage import binary_fill_holes
from typer.testing import CliRunner

from weakseg.cli import app
from weakseg.data import annotations
from weakseg.errors import ConfigError, DataFileError
from weakseg.export import export_labels, list_exporters

YOLO_MIN_IOU = 0.99
YOLO_MIN_PIXELS = 64
CLASSES = ["cat", "dog"]
# pycocotools 2.0.x decodes through an __array__ without a copy keyword, which numpy 2 warns about
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


# ---------------------------------------------------------------- masks


def _ellipse(mask: np.ndarray, center, axes, value: int, angle: float = 0.0) -> None:
    cv2.ellipse(mask, center, axes, angle, 0, 360, value, -1)


def scene_mask(value_1: int = 1, value_2: int = 2, ignore: bool = True) -> np.ndarray:
    """480x640: a ring (hole), blobs cut by the left and bottom borders and the bottom-right corner, two classes
    touching, a class-2 blob inside class 1's hole, and an unlabelled (255) band."""
    mask = np.zeros((480, 640), np.uint8)
    _ellipse(mask, (200, 170), (110, 80), value_1, 20)  # ring of class 1 ...
    _ellipse(mask, (200, 170), (45, 30), 0, 20)  # ... with a hole
    _ellipse(mask, (200, 170), (15, 10), value_2)  # class 2 inside the hole
    _ellipse(mask, (0, 330), (60, 90), value_1)  # cut by the left border
    _ellipse(mask, (420, 479), (90, 40), value_1, 10)  # cut by the bottom border
    _ellipse(mask, (639, 479), (80, 70), value_2)  # bottom-right corner
    _ellipse(mask, (450, 200), (70, 50), value_2, -30)  # class 2 ...
    _ellipse(mask, (540, 200), (40, 60), value_1)  # ... touching class 1
    cv2.rectangle(mask, (480, 330), (500, 340), 0, -1)  # a notch
    if ignore:
        mask[:12, 100:400] = 255
    return mask


def small_mask(value: int) -> np.ndarray:
    """37x53 (odd sizes): a blob in the top-left corner with a hole, and a second blob."""
    mask = np.zeros((37, 53), np.uint8)
    _ellipse(mask, (6, 5), (18, 14), value, 15)
    _ellipse(mask, (8, 7), (3, 2), 0)
    _ellipse(mask, (40, 26), (9, 7), value)
    return mask


def write_masks(root: Path, masks: dict[str, np.ndarray]) -> Path:
    (root / "masks").mkdir(parents=True)
    for name, mask in masks.items():
        assert cv2.imwrite(str(root / "masks" / f"{name}.png"), mask)
    return root


@pytest.fixture(scope="module")
def binary_dir(tmp_path_factory) -> Path:
    """Binary masks as pseudo-label writes them (0/255), one 0/1 mask, an empty one, a soft map for one."""
    root = write_masks(
        tmp_path_factory.mktemp("binary"),
        {
            "scene": np.where(scene_mask(ignore=False) > 0, 255, 0).astype(np.uint8),
            "small": small_mask(1),
            "empty": np.zeros((48, 64), np.uint8),
        },
    )
    (root / "soft").mkdir()
    cv2.imwrite(str(root / "soft" / "small.png"), np.full((37, 53), 230, np.uint8))
    return root


@pytest.fixture(scope="module")
def multiclass_dir(tmp_path_factory) -> Path:
    """Class-index masks (0 background, 1 cat, 2 dog, 255 unlabelled) and an empty one."""
    return write_masks(
        tmp_path_factory.mktemp("multiclass"),
        {"scene": scene_mask(), "small": small_mask(2), "empty": np.zeros((48, 64), np.uint8)},
    )


DATASETS = {"binary": ("binary_dir", None), "multiclass": ("multiclass_dir", CLASSES)}


@pytest.fixture(params=sorted(DATASETS))
def dataset(request) -> tuple[Path, list[str] | None]:
    fixture, classes = DATASETS[request.param]
    return request.getfixturevalue(fixture), classes


def expected_labels(root: Path, classes: list[str] | None) -> dict[str, np.ndarray]:
    """What every export must reproduce, from the documented value rules."""
    out = {}
    for path in sorted((root / "masks").glob("*.png")):
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        out[path.stem] = (raw > 0).astype(np.uint8) if classes is None else np.where(raw == 255, 0, raw)
    return out


def class_names(classes: list[str] | None) -> list[str]:
    return classes or ["foreground"]


# ---------------------------------------------------------------- decoders written from the formats' documentation


def decode_brush_rle(rle: list[int], height: int, width: int) -> np.ndarray:
    """Label Studio brush RLE -> boolean (H, W), by the importer's decoder (written from the rle-pack layout
    documented in label-studio-converter's ``brush.py``; its own unit test decodes hand-made streams)."""
    return annotations.decode_brush_rle(rle, height, width) > 0


def official_brush_decoder():
    for module in ("label_studio_converter.brush", "label_studio_sdk.converter.brush"):
        try:
            return __import__(module, fromlist=["decode_rle"]).decode_rle
        except ImportError:
            continue
    return None


def decode_cvat_mask(element: ET.Element, height: int, width: int) -> np.ndarray:
    """CVAT <mask> -> boolean (H, W), by the importer's decoder of CVAT's convention (alternating run lengths over
    the box, row-major, background first)."""
    left, top = int(element.get("left")), int(element.get("top"))
    box_w, box_h = int(element.get("width")), int(element.get("height"))
    runs = [int(v) for v in element.get("rle").split(",")]
    out = np.zeros((height, width), bool)
    out[top : top + box_h, left : left + box_w] = annotations.decode_cvat_rle(runs, box_h, box_w)
    return out


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("mode", ["semantic", "instance"])
def test_coco_round_trip_with_pycocotools(dataset, mode, tmp_path):
    root, classes = dataset
    path = export_labels(root, "coco", tmp_path / mode, classes=classes, mode=mode)
    coco = COCO(str(path))
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == class_names(classes)
    expected = expected_labels(root, classes)
    assert sorted(img["file_name"] for img in coco.dataset["images"]) == sorted(f"{n}.jpg" for n in expected)
    for image in coco.dataset["images"]:
        truth = expected[Path(image["file_name"]).stem]
        assert (image["height"], image["width"]) == truth.shape
        decoded = np.zeros_like(truth)
        per_class: dict[int, int] = {}
        for ann in coco.loadAnns(coco.getAnnIds(imgIds=image["id"])):
            region = coco.annToMask(ann).astype(bool)
            assert not (decoded[region] > 0).any(), "annotations overlap"
            decoded[region] = ann["category_id"]
            assert ann["area"] == region.sum() > 0
            ys, xs = np.nonzero(region)
            assert ann["bbox"] == [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
            assert ann["iscrowd"] == (mode == "semantic")
            assert isinstance(ann["segmentation"]["counts"], str)
            per_class[ann["category_id"]] = per_class.get(ann["category_id"], 0) + 1
            if mode == "instance":
                assert cv2.connectedComponents(region.astype(np.uint8), connectivity=8)[0] == 2
        np.testing.assert_array_equal(decoded, truth)  # pixel-exact; instances: their union per class
        for class_id, count in per_class.items():
            components = cv2.connectedComponents((truth == class_id).astype(np.uint8), connectivity=8)[0] - 1
            assert count == (1 if mode == "semantic" else components)


def test_labelstudio_round_trip_with_the_documented_decoder(dataset, tmp_path):
    root, classes = dataset
    path = export_labels(root, "labelstudio", tmp_path, classes=classes, image_root="/data/local-files/?d=pets/")
    tasks = json.loads(path.read_text())
    expected = expected_labels(root, classes)
    names = class_names(classes)
    official = official_brush_decoder()
    assert len(tasks) == len(expected)
    for task in tasks:
        assert task["data"]["image"].startswith("/data/local-files/?d=pets/")
        truth = expected[Path(task["data"]["image"]).stem]
        (prediction,) = task["predictions"]
        assert prediction["model_version"] == "weakseg"
        decoded = np.zeros_like(truth)
        for result in prediction["result"]:
            assert result["type"] == "brushlabels" and result["from_name"] == "tag" and result["to_name"] == "image"
            assert (result["original_height"], result["original_width"]) == truth.shape
            assert result["value"]["format"] == "rle" and all(0 <= b < 256 for b in result["value"]["rle"])
            region = decode_brush_rle(result["value"]["rle"], *truth.shape)
            if official is not None:
                flat = official(result["value"]["rle"])
                np.testing.assert_array_equal(flat.reshape(*truth.shape, 4)[:, :, 3] > 0, region)
            (label,) = result["value"]["brushlabels"]
            decoded[region] = names.index(label) + 1
        np.testing.assert_array_equal(decoded, truth)
        if Path(task["data"]["image"]).stem == "empty":
            assert prediction["result"] == []
    config = ET.fromstring((tmp_path / "label_config.xml").read_text())
    assert [el.get("value") for el in config.iter("Label")] == names


@pytest.mark.skipif(official_brush_decoder() is None, reason="label_studio_converter not installed (optional)")
def test_labelstudio_brush_matches_label_studios_own_decoder():
    from weakseg.export.labelstudio import brush_rle

    region = scene_mask() == 1
    flat = official_brush_decoder()(brush_rle(region))
    np.testing.assert_array_equal(flat.reshape(*region.shape, 4)[:, :, 3] > 0, region)


def test_labelstudio_score_from_soft_maps(binary_dir, tmp_path):
    tasks = json.loads(export_labels(binary_dir, "labelstudio", tmp_path).read_text())
    scores = {Path(t["data"]["image"]).stem: t["predictions"][0].get("score") for t in tasks}
    assert scores == {"empty": None, "scene": None, "small": pytest.approx(230 / 255, abs=1e-3)}


def test_cvat_round_trip_with_the_documented_decoder(dataset, tmp_path):
    root, classes = dataset
    path = export_labels(root, "cvat", tmp_path, classes=classes)
    tree = ET.parse(path).getroot()
    assert tree.tag == "annotations" and tree.findtext("version") == "1.1"
    labels = tree.findall("meta/task/labels/label")
    assert [label.findtext("name") for label in labels] == class_names(classes)
    assert {label.findtext("type") for label in labels} == {"mask"}
    expected = expected_labels(root, classes)
    images = tree.findall("image")
    assert [int(image.get("id")) for image in images] == list(range(len(expected)))
    for image in images:
        truth = expected[Path(image.get("name")).stem]
        height, width = int(image.get("height")), int(image.get("width"))
        assert (height, width) == truth.shape
        decoded = np.zeros_like(truth)
        for mask in image.findall("mask"):
            assert list(mask.attrib) == [
                *("label", "source", "occluded", "rle", "left", "top", "width", "height", "z_order"),
            ]
            region = decode_cvat_mask(mask, height, width)
            assert not (decoded[region] > 0).any()
            decoded[region] = class_names(classes).index(mask.get("label")) + 1
        np.testing.assert_array_equal(decoded, truth)


def test_yolo_round_trip_with_fill_poly(dataset, tmp_path):
    root, classes = dataset
    path = export_labels(root, "yolo", tmp_path, classes=classes)
    data = yaml.safe_load(path.read_text())
    assert data["names"] == dict(enumerate(class_names(classes)))
    expected = expected_labels(root, classes)
    assert sorted(p.stem for p in (tmp_path / "labels").glob("*.txt")) == sorted(expected)
    checked = 0
    for name, truth in expected.items():
        height, width = truth.shape
        drawn = {k: np.zeros_like(truth) for k in range(1, len(class_names(classes)) + 1)}
        for line in (tmp_path / "labels" / f"{name}.txt").read_text().splitlines():
            values = line.split()
            coords = np.asarray(values[1:], float).reshape(-1, 2)
            assert len(coords) >= 3 and ((coords >= 0) & (coords <= 1)).all()
            pixels = np.rint(coords * [width, height]).astype(np.int32)
            cv2.fillPoly(drawn[int(values[0]) + 1], [pixels], 1)
        for class_id, canvas in drawn.items():
            region, canvas = truth == class_id, canvas.astype(bool)
            filled = binary_fill_holes(region)
            assert not (canvas & ~filled).any(), "drawn outside the region and its holes"
            if region.sum() >= YOLO_MIN_PIXELS:
                iou = (canvas & filled).sum() / (canvas | filled).sum()
                assert iou >= YOLO_MIN_IOU, (name, class_id, iou)
                checked += 1
            else:
                assert not canvas.any() or region.any()
    assert checked >= 2
    assert (tmp_path / "labels" / "empty.txt").read_text() == ""


# ---------------------------------------------------------------- images, CLI, bad input


def write_images(folder: Path, sizes: dict[str, tuple[int, int]], ext: str = ".jpg") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (height, width) in sizes.items():
        assert cv2.imwrite(str(folder / f"{name}{ext}"), np.full((height, width, 3), 90, np.uint8))
    return folder


def test_cli_exports_with_real_image_names(multiclass_dir, tmp_path):
    images = write_images(tmp_path / "images", {"scene": (480, 640), "empty": (48, 64)})
    write_images(images, {"small": (37, 53)}, ext=".png")
    runner = CliRunner()
    args = ["export-labels", str(multiclass_dir), "--format", "coco", "--classes", "cat,dog", "--images", str(images)]
    result = runner.invoke(app, [*args, "--coco-mode", "instance", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    coco = json.loads((tmp_path / "out" / "annotations.json").read_text())
    assert sorted(i["file_name"] for i in coco["images"]) == ["empty.jpg", "scene.jpg", "small.png"]
    assert str(tmp_path / "out" / "annotations.json") in result.output.replace("\n", "")
    assert {a["iscrowd"] for a in coco["annotations"]} == {0}

    result = runner.invoke(app, ["export-labels", str(multiclass_dir), "--format", "cvat", "--classes", "cat,dog"])
    assert result.exit_code == 0, result.output
    assert (multiclass_dir / "export" / "cvat" / "annotations.xml").is_file()  # the default --out

    result = runner.invoke(app, ["list", "exporters"])
    assert result.exit_code == 0 and all(f in result.output for f in ("coco", "yolo", "labelstudio", "cvat"))
    assert list_exporters() == ["coco", "cvat", "labelstudio", "yolo"]


def test_mask_values_beyond_the_classes_name_the_file(multiclass_dir, tmp_path):
    with pytest.raises(DataFileError, match=r"mask value 2 is beyond the 1 declared class") as err:
        export_labels(multiclass_dir, "coco", tmp_path)  # class-index masks without --classes
    assert err.value.path.name == "scene.png"
    with pytest.raises(DataFileError, match="beyond the 3 declared"):
        root = write_masks(tmp_path / "bad", {"a": np.full((8, 8), 7, np.uint8)})
        export_labels(root, "yolo", tmp_path, classes="a,b,c")


def test_bad_input_is_reported(binary_dir, tmp_path):
    with pytest.raises(DataFileError, match="no masks folder"):
        export_labels(tmp_path / "nowhere", "coco")
    (tmp_path / "blank" / "masks").mkdir(parents=True)
    with pytest.raises(DataFileError, match=r"no \.png masks"):
        export_labels(tmp_path / "blank", "coco")
    with pytest.raises(ConfigError, match="unknown export format 'voc'"):
        export_labels(binary_dir, "voc", tmp_path)
    with pytest.raises(ConfigError, match="has no option mode"):
        export_labels(binary_dir, "cvat", tmp_path, mode="instance")
    with pytest.raises(ConfigError, match="COCO mode"):
        export_labels(binary_dir, "coco", tmp_path, mode="panoptic")
    with pytest.raises(ConfigError, match="unique"):
        export_labels(binary_dir, "coco", tmp_path, classes="a,a")
    images = write_images(tmp_path / "images", {"scene": (480, 640), "small": (53, 37), "empty": (48, 64)})
    with pytest.raises(DataFileError, match=r"mask is 53x37 but its image small\.jpg is 37x53"):
        export_labels(binary_dir, "coco", tmp_path, images=images)
    (images / "empty.jpg").unlink()
    with pytest.raises(DataFileError, match="no image named 'empty"):
        export_labels(binary_dir, "coco", tmp_path, images=images)


def test_cli_bad_input_is_one_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "weakseg.cli", "export-labels", str(tmp_path / "nope"), "--format", "coco"],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ.copy(),
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "no masks folder" in result.stderr and "nope" in result.stderr.replace("\n", "")
