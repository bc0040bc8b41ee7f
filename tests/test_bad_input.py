"""Bad input gets a clear answer, never a silent wrong one (issue 13): every bad file either loads correctly by a
safe conversion or stops with one line naming the file; ``on_error='skip'`` leaves the item out and lists it."""

from __future__ import annotations

import csv
import json
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image
from typer.testing import CliRunner

from weakseg.cli import app
from weakseg.config import RunConfig
from weakseg.data import IGNORE_INDEX, build_dataset
from weakseg.data.checks import check_points
from weakseg.data.folder import FolderDataset
from weakseg.data.kvasir import KvasirSeg
from weakseg.data.oxford_pet import OxfordPet
from weakseg.data.prepared import PreparedSplit, prepare
from weakseg.errors import ConfigError, DataFileError
from weakseg.io import read_image, read_label_image, read_mask

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_rgb(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    return path


def write_raw(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as stored (grey, BGR or BGRA channel order, 8 or 16 bits)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)
    return path


def folder(root: Path, masks: dict[str, np.ndarray | None], size: tuple[int, int] = (12, 16)) -> Path:
    """A folder dataset with noise images of ``size`` and the given stored masks (None: no mask file)."""
    for i, (name, mask) in enumerate(masks.items()):
        write_rgb(root / "images" / f"{name}.png", noise(*size, seed=i))
        if mask is not None:
            write_raw(root / "masks" / f"{name}.png", mask)
    return root


def error_names(info: pytest.ExceptionInfo, path: Path) -> None:
    """The error is a DataFileError whose one-line message names ``path``."""
    assert isinstance(info.value, DataFileError)
    assert info.value.path == path
    assert str(path) in str(info.value) and "\n" not in str(info.value)


# --------------------------------------------------------------------------------------------------
# 16-bit masks


def test_16bit_mask_with_small_values_loads_exactly(tmp_path):
    label = np.array([[0, 1, 2, 255], [2, 1, 0, 0]], np.uint16)
    root = folder(tmp_path / "f", {"a": label}, size=(2, 4))
    ds = FolderDataset(root, mask_mode="index", mask_classes=["bg", "one", "two"])
    np.testing.assert_array_equal(ds[0].mask, label.astype(np.uint8))
    assert ds[0].mask.dtype == np.uint8


def test_16bit_mask_above_255_is_never_wrapped(tmp_path):
    label = np.array([[0, 256], [1, 300]], np.uint16)  # 256 used to read as 0
    path = write_raw(tmp_path / "m.png", label)
    with pytest.raises(DataFileError, match="up to 300") as info:
        read_mask(path)
    error_names(info, path)
    root = folder(tmp_path / "f", {"a": label}, size=(2, 2))
    with pytest.raises(DataFileError, match="256, 300") as info:
        FolderDataset(root, mask_mode="index", mask_classes=["bg", "fg"])[0]
    error_names(info, root / "masks" / "a.png")


def test_16bit_binary_mask_of_two_values_loads_and_grey_levels_stop(tmp_path):
    label = np.array([[0, 65535, 65535], [0, 0, 65535]], np.uint16)
    root = folder(tmp_path / "f", {"a": label, "b": np.array([[0, 300, 600], [0, 0, 900]], np.uint16)}, (2, 3))
    ds = FolderDataset(root)
    np.testing.assert_array_equal(ds.load("a").mask, (label > 0).astype(np.uint8))
    with pytest.raises(DataFileError, match="not a binary mask") as info:
        ds.load("b")
    error_names(info, root / "masks" / "b.png")


# --------------------------------------------------------------------------------------------------
# RGBA, colour and palette masks


def test_rgba_mask_with_the_label_in_alpha(tmp_path):
    label = np.zeros((10, 14), np.uint8)
    label[2:7, 3:9] = 255
    rgba = np.zeros((10, 14, 4), np.uint8)
    rgba[..., 3] = label  # black everywhere, the object drawn as opacity (used to come out empty)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "alpha.png"), label)
    white = np.where(label[..., None] > 0, 255, 0).astype(np.uint8).repeat(4, axis=2)  # white opaque on clear
    Image.fromarray(white, "RGBA").save(tmp_path / "white.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "white.png"), label)
    root = folder(tmp_path / "f", {"a": None}, size=(10, 14))
    (root / "masks").mkdir()
    Image.fromarray(rgba, "RGBA").save(root / "masks" / "a.png")
    np.testing.assert_array_equal(FolderDataset(root)[0].mask, (label > 0).astype(np.uint8))


def test_rgba_mask_with_colour_and_alpha_both_varying_stops(tmp_path):
    rgba = np.zeros((6, 6, 4), np.uint8)
    rgba[:3, :, 0] = 200  # red top half
    rgba[:, :3, 3] = 255  # opaque left half
    rgba[3:, 3:, 3] = 90
    Image.fromarray(rgba, "RGBA").save(tmp_path / "m.png")
    with pytest.raises(DataFileError, match="both its colours and its transparency") as info:
        read_mask(tmp_path / "m.png")
    error_names(info, tmp_path / "m.png")


def test_opaque_grey_rgb_mask_loads_and_a_colour_mask_stops(tmp_path):
    label = np.array([[0, 1, 2], [2, 2, 0]], np.uint8)
    Image.fromarray(np.dstack([label] * 3), "RGB").save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([label * 100] * 3 + [np.full_like(label, 255)]), "RGBA").save(tmp_path / "opaque.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png"), label)
    np.testing.assert_array_equal(read_mask(tmp_path / "opaque.png"), label * 100)
    colours = np.array([[[0, 0, 0], [128, 0, 0], [0, 128, 0]]], np.uint8)  # VOC-style: max() read both as 128
    Image.fromarray(colours, "RGB").save(tmp_path / "voc.png")
    with pytest.raises(DataFileError, match=r"colour mask .*RGB \(128, 0, 0\)") as info:
        read_mask(tmp_path / "voc.png")
    error_names(info, tmp_path / "voc.png")


def test_palette_png_gives_its_indices(tmp_path):
    label = np.array([[0, 1, 2], [255, 1, 0]], np.uint8)
    image = Image.fromarray(label, "P")
    image.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [224, 224, 192] * 253)
    root = folder(tmp_path / "f", {"a": None}, size=(2, 3))
    (root / "masks").mkdir()
    image.save(root / "masks" / "a.png")
    mask = FolderDataset(root, mask_mode="index", mask_classes=["bg", "cat", "dog"])[0].mask
    np.testing.assert_array_equal(mask, label)


def test_one_bit_png_keeps_its_stored_values(tmp_path):
    label = np.array([[0, 1, 1, 0], [1, 0, 0, 1]], bool)
    Image.fromarray(label).save(tmp_path / "bits.png")
    np.testing.assert_array_equal(read_label_image(tmp_path / "bits.png"), label.astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Truncated and corrupt files


def test_truncated_jpeg_image_stops_naming_the_file(tmp_path):
    path = write_rgb(tmp_path / "f" / "images" / "a.jpg", noise(48, 64))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # decoders fill the missing rows with grey
    with pytest.raises(DataFileError, match="truncated") as info:
        read_image(path)
    error_names(info, path)
    with pytest.raises(DataFileError, match="truncated") as info:
        FolderDataset(tmp_path / "f")[0]
    error_names(info, path)


def test_jpeg_with_trailing_bytes_and_intact_png_load(tmp_path):
    path = write_rgb(tmp_path / "a.jpg", noise(24, 32))
    intact = read_image(path)
    path.write_bytes(path.read_bytes() + b"trailing data of some camera")
    np.testing.assert_array_equal(read_image(path), intact)


def test_truncated_png_and_jpeg_masks_stop(tmp_path):
    for name in ("m.png", "m.jpg"):
        path = write_raw(tmp_path / name, np.random.default_rng(0).integers(0, 2, (64, 64), dtype=np.uint8) * 255)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(DataFileError) as info:
            read_mask(path)
        error_names(info, path)


# --------------------------------------------------------------------------------------------------
# EXIF orientation: images are read as stored, like their masks


@pytest.mark.parametrize("size", [(40, 64), (48, 48)], ids=["non-square", "square"])
def test_exif_rotated_jpeg_stays_aligned_with_its_mask(tmp_path, size):
    height, width = size
    image = np.full((height, width, 3), 30, np.uint8)
    label = np.zeros((height, width), np.uint8)
    label[4:20, 6:30] = 1  # an object in the top-left area
    image[label == 1] = 230
    root = tmp_path / "f"
    (root / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(image).save(root / "images" / "a.jpg", exif=exif, quality=95)
    Image.fromarray(image).save(tmp_path / "plain.jpg", quality=95)
    write_raw(root / "masks" / "a.png", label * 255)
    assert Image.open(root / "images" / "a.jpg").getexif()[0x0112] == 6
    sample = FolderDataset(root)[0]
    assert sample.image.shape == (height, width, 3)  # the non-square one used to be rotated: a size error
    np.testing.assert_array_equal(sample.image, read_image(tmp_path / "plain.jpg"))  # the stored pixel grid
    inside, outside = sample.image[sample.mask == 1].mean(), sample.image[sample.mask == 0].mean()
    assert inside > 200 and outside < 60  # the mask covers the object
    displayed = cv2.cvtColor(cv2.imread(str(root / "images" / "a.jpg")), cv2.COLOR_BGR2RGB)
    assert displayed.shape != sample.image.shape or not np.array_equal(displayed, sample.image)  # what changed


# --------------------------------------------------------------------------------------------------
# Index masks against the declared classes; binary masks that are not binary


def test_index_mask_values_outside_the_declared_classes_stop(tmp_path):
    good = np.array([[0, 1, 2, 255]], np.uint8)  # 255: ignore
    bad = np.array([[0, 1, 3, 7]], np.uint8)
    root = folder(tmp_path / "f", {"a": good, "b": bad}, size=(1, 4))
    ds = FolderDataset(root, mask_mode="index", mask_classes=["bg", "cat", "dog"])
    np.testing.assert_array_equal(ds.load("a").mask, good)
    with pytest.raises(DataFileError, match=r"mask values 3, 7 are not class indices: 3 classes") as info:
        ds.load("b")
    error_names(info, root / "masks" / "b.png")
    with pytest.raises(DataFileError, match="values 2 are not class indices"):  # undeclared: background/foreground
        FolderDataset(root, mask_mode="index").load("a")


def test_class_indices_in_binary_mode_stop_instead_of_an_empty_mask(tmp_path):
    root = folder(tmp_path / "f", {"a": np.array([[0, 1, 2, 2]], np.uint8)}, size=(1, 4))
    with pytest.raises(DataFileError, match="mask_mode 'index'") as info:
        FolderDataset(root)[0]
    error_names(info, root / "masks" / "a.png")


def test_binary_masks_in_the_accepted_encodings(tmp_path):
    obj = np.array([[0, 1, 1, 0], [0, 1, 0, 0]], np.uint8)
    smooth = np.array([[0, 200, 255, 90], [3, 130, 100, 0]], np.uint8)
    root = folder(tmp_path / "f", {"a": obj, "b": obj * 255, "c": obj * 40, "d": smooth}, size=(2, 4))
    ds = FolderDataset(root)
    for name in "abc":
        np.testing.assert_array_equal(ds.load(name).mask, obj)
    np.testing.assert_array_equal(ds.load("d").mask, (smooth >= 128).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Empty splits and folders without split lists


def test_empty_split_list_stops_instead_of_nan_metrics(tmp_path, demo_root):
    root = folder(tmp_path / "f", {"a": np.zeros((12, 16), np.uint8)})
    (root / "test.txt").write_text("\n")
    with pytest.raises(DataFileError, match="names no images") as info:
        FolderDataset(root, split="test")
    error_names(info, root / "test.txt")
    ds = FolderDataset(root)
    ds.names = []
    with pytest.raises(ConfigError, match="holds no images"):
        prepare(ds, 32, use_cache=False, progress=False)
    from weakseg.evaluate import evaluate_mask_folder, evaluate_model

    with pytest.raises(ConfigError, match="holds no images"):
        evaluate_mask_folder(tmp_path, ds)
    empty = PreparedSplit([], torch.zeros((0, 3, 32, 32), dtype=torch.uint8), None, [], [], [], native_masks=[])
    with pytest.raises(ConfigError, match="no images"):
        evaluate_model(torch.nn.Identity(), empty, torch.device("cpu"))


def test_folder_without_split_lists_is_one_split(tmp_path):
    root = folder(tmp_path / "f", {"b": None, "a": None})
    for split in ("trainval", "test", "val"):
        with pytest.warns(UserWarning, match="no split lists"):
            assert FolderDataset(root, split=split).names == ["a", "b"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FolderDataset(root, split="all").names == ["a", "b"]
    (root / "README.txt").write_text("not a split list\n")
    with pytest.warns(UserWarning):
        assert FolderDataset(root, split="test").names == ["a", "b"]
    (root / "splits").mkdir()
    (root / "splits" / "train.txt").write_text("a\n")
    assert FolderDataset(root, split="train").names == ["a"]
    with pytest.raises(DataFileError, match=r"split list is missing \(this folder lists train\)") as info:
        FolderDataset(root, split="test")
    error_names(info, root / "test.txt")


def test_evaluate_a_folder_without_split_lists(tmp_path):
    label = np.zeros((12, 16), np.uint8)
    label[3:9, 4:12] = 255
    root = folder(tmp_path / "f", {"a": label, "b": label})
    preds = tmp_path / "preds"
    preds.mkdir()
    for name in ("a", "b"):
        write_raw(preds / f"{name}.png", label)
    result = CliRunner().invoke(
        app,
        [
            "evaluate",
            "--dataset",
            "folder",
            "--root",
            str(root),
            "--pred-dir",
            str(preds),
            "--json",
            str(tmp_path / "m.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["iou"] == 1.0 and metrics["images"] == 2


# --------------------------------------------------------------------------------------------------
# Boxes, clicks and tags


def write_coco(root: Path, boxes: dict[str, list[list[float]]]) -> Path:
    coco = {"images": [], "annotations": []}
    for i, (name, items) in enumerate(boxes.items()):
        coco["images"].append({"id": i, "file_name": f"{name}.png"})
        for box in items:
            coco["annotations"].append({"id": len(coco["annotations"]), "image_id": i, "bbox": box})
    path = root / "boxes.json"
    path.write_text(json.dumps(coco))
    return path


@pytest.mark.parametrize(
    ("bbox", "problem"),
    [
        ([3, 4, 0, 5], "is empty"),
        ([3, 4, 5, 0], "is empty"),
        ([10, 4, -6, 5], "is inverted"),
        ([20, 2, 5, 5], "outside the 16x12 image"),
        ([-9, 2, 5, 5], "outside the 16x12 image"),
    ],
)
def test_bad_boxes_stop_naming_the_file_and_image(tmp_path, bbox, problem):
    root = folder(tmp_path / "f", {"a": None})
    path = write_coco(root, {"a": [[1, 1, 4, 4], bbox]})
    with pytest.raises(DataFileError, match=f"box 1 of 'a' .*{problem}") as info:
        FolderDataset(root)[0]
    error_names(info, path)


def test_boxes_partly_outside_are_clipped(tmp_path):
    root = folder(tmp_path / "f", {"a": None})
    write_coco(root, {"a": [[-2, 3, 6, 20], [10, -1, 30, 4], [1, 1, 4, 4]]})
    expected = np.array([[0, 3, 4, 12], [10, 0, 16, 3], [1, 1, 5, 5]], np.float32)
    np.testing.assert_array_equal(FolderDataset(root)[0].boxes, expected)


def test_boxes_that_are_not_numbers_stop(tmp_path):
    root = folder(tmp_path / "f", {"a": None})
    path = write_coco(root, {"a": [[1, None, 4, 4]]})
    with pytest.raises(DataFileError, match="cannot read COCO boxes") as info:
        FolderDataset(root)
    error_names(info, path)


def test_clicks_outside_the_image_stop(tmp_path):
    inside = np.array([[0, 0], [15.5, 11.9]], np.float32)
    np.testing.assert_array_equal(check_points(inside, (12, 16), tmp_path / "clicks.csv", "a"), inside)
    for point in ([16, 3], [3, 12], [-0.5, 2], [np.nan, 1]):
        with pytest.raises(DataFileError, match=r"click 0 of 'a' .*outside the 16x12 image") as info:
            check_points(np.array([point], np.float32), (12, 16), tmp_path / "clicks.csv", "a")
        error_names(info, tmp_path / "clicks.csv")


def write_labels(root: Path, rows: dict[str, str]) -> Path:
    path = root / "labels.csv"
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "label"])
        writer.writerows(rows.items())
    return path


def test_unknown_tags_stop_when_the_tags_are_declared(tmp_path):
    root = folder(tmp_path / "f", {"a": None, "b": None})
    path = write_labels(root, {"a.png": "dog;cat", "b.png": "cat;horse"})
    ds = FolderDataset(root, tag_classes=["cat", "dog"])
    assert ds.tag_classes == ["cat", "dog"] and ds.load("a").labels == [1, 0]
    with pytest.raises(DataFileError, match="'horse' of 'b' are not among the declared tag classes") as info:
        ds.load("b")
    error_names(info, path)
    assert FolderDataset(root).tag_classes == ["cat", "dog", "horse"]  # undeclared: the file's own vocabulary


def test_broken_labels_csv_rows_stop(tmp_path):
    root = folder(tmp_path / "f", {"a": None})
    (root / "labels.csv").write_text("name,label\n,cat\n")
    with pytest.raises(DataFileError, match="line 2 of the labels CSV has no name") as info:
        FolderDataset(root)
    error_names(info, root / "labels.csv")


# --------------------------------------------------------------------------------------------------
# on_error: skip


def bad_folder(root: Path) -> Path:
    """Four images: 'b' truncated, 'd' with values 0/1/2 (not binary, and outside two declared classes)."""
    label = np.zeros((12, 16), np.uint8)
    label[2:8, 3:10] = 1
    odd = label.copy()
    odd[9:11, 1:4] = 2
    folder(root, {"a": label, "b": label, "c": label, "d": odd})
    jpeg = write_rgb(root / "images" / "b.jpg", noise(12, 16))
    (root / "images" / "b.png").unlink()
    jpeg.write_bytes(jpeg.read_bytes()[:200])
    return root


def test_prepare_skips_bad_items_and_lists_them(tmp_path):
    root = bad_folder(tmp_path / "f")
    ds = FolderDataset(root, mask_mode="index", mask_classes=["bg", "fg"])
    with pytest.raises(DataFileError):
        prepare(ds, 32, use_cache=False, progress=False)
    ds.on_error = "skip"
    for _ in range(2):  # built, then served from the cache: the list comes along
        split = prepare(ds, 32, progress=False)
        assert split.names == ["a", "c"] and len(split.images) == 2 and split.masks.shape == (2, 32, 32)
        assert [(s["name"], Path(s["file"]).name) for s in split.skipped] == [("b", "b.jpg"), ("d", "d.png")]
        assert "image file" in split.skipped[0]["reason"] and "not class indices" in split.skipped[1]["reason"]
    with pytest.raises(ConfigError, match="on_error"):
        ds.on_error = "ignore"


def test_prepare_stops_when_every_item_is_skipped(tmp_path):
    root = folder(tmp_path / "f", {"a": np.array([[0, 1, 2]], np.uint8)}, size=(1, 3))
    ds = FolderDataset(root)
    ds.on_error = "skip"
    with pytest.raises(ConfigError, match="all 1 images of split 'all' were skipped"):
        prepare(ds, 32, use_cache=False, progress=False)


def test_evaluate_on_error_skip_through_the_cli(tmp_path):
    root = bad_folder(tmp_path / "f")
    preds = tmp_path / "preds"
    preds.mkdir()
    for name in "abcd":
        write_raw(preds / f"{name}.png", cv2.imread(str(root / "masks" / "a.png"), cv2.IMREAD_UNCHANGED) * 255)
    args = ["evaluate", "--dataset", "folder", "--root", str(root), "--split", "all", "--pred-dir", str(preds)]
    failed = CliRunner().invoke(app, args)
    assert failed.exit_code != 0 and isinstance(failed.exception, DataFileError)
    assert str(root / "images" / "b.jpg") in str(failed.exception)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, [*args, "--on-error", "skip", "--json", str(out / "metrics.json")])
    assert result.exit_code == 0, result.output
    assert "skipped 2 item(s)" in " ".join(result.output.split())
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["name"], Path(s["file"]).name) for s in skipped] == [("b", "b.jpg"), ("d", "d.png")]
    assert all(s["reason"] for s in skipped)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"] == 2 and metrics["iou"] == 1.0


def test_the_run_config_carries_the_policy_to_the_datasets(tmp_path):
    from weakseg.pipeline import load_dataset

    root = bad_folder(tmp_path / "f")
    config = RunConfig.model_validate({"dataset": {"name": "folder", "root": str(root), "on_error": "skip"}})
    ds = load_dataset(config, "/", "all")
    assert ds.on_error == "skip" and ds.try_load("b") is None and ds.skipped[0]["name"] == "b"
    assert (
        load_dataset(RunConfig.model_validate({"dataset": {"name": "folder", "root": str(root)}}), "/", "all").on_error
        == "raise"
    )


def test_predict_on_error_skip_lists_unreadable_images(tmp_path):
    from weakseg.models import build_model
    from weakseg.predict import predict_files

    good = write_rgb(tmp_path / "in" / "good.png", noise(20, 24))
    bad = tmp_path / "in" / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff not really a jpeg")
    model = build_model("unet", weights=None)
    with pytest.raises(DataFileError) as info:
        predict_files(model, [good, bad], tmp_path / "raise", 32, progress=False, overlays=False)
    error_names(info, bad)
    written = predict_files(model, [good, bad], tmp_path / "p", 32, progress=False, overlays=False, on_error="skip")
    assert written == [tmp_path / "p" / "good.png"]
    skipped = json.loads((tmp_path / "p" / "skipped.json").read_text())
    assert [(s["name"], s["file"]) for s in skipped] == [("bad", str(bad))]


# --------------------------------------------------------------------------------------------------
# Property tests: generated files for every loader load with their values or stop naming the file


@st.composite
def stored_masks(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray | None, str]:
    """(array as stored, the label it means or None when it means no label, encoding)."""
    dtype = draw(st.sampled_from([np.uint8, np.uint16]))
    pool = [0, 1, 2, 3, 5, 127, 128, 200, 254, 255] + ([256, 300, 1000, 65535] if dtype == np.uint16 else [])
    values = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    shape = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
    label = draw(arrays(dtype, shape, elements=st.sampled_from(values)))
    top = np.iinfo(dtype).max
    encoding = draw(st.sampled_from(["grey", "bgr", "bgra-opaque", "alpha", "colour"]))
    if encoding == "grey":
        return label, label, encoding
    if encoding == "bgr":
        return np.dstack([label] * 3), label, encoding
    if encoding == "bgra-opaque":
        return np.dstack([label] * 3 + [np.full_like(label, top)]), label, encoding
    if encoding == "alpha":
        assume(not (label.min() == label.max() == top))  # an opaque black picture: no label in alpha to find
        return np.dstack([np.zeros_like(label)] * 3 + [label]), label, encoding
    zeros = np.zeros_like(label)
    return np.dstack([label, zeros, zeros]), (zeros if label.max() == 0 else None), encoding


def expected_binary(label: np.ndarray) -> np.ndarray | None:
    """The documented binary rule, restated: 0/1; 0 and one value; 0-255 grey levels from 128; else None."""
    values = set(np.unique(label).tolist())
    if max(values) <= 1 or len(values - {0}) == 1:
        return (label > 0).astype(np.uint8)
    if 128 <= max(values) <= 255:
        return (label >= 128).astype(np.uint8)
    return None


@PROPERTY
@given(stored=stored_masks(), classes=st.integers(2, 6), suffix=st.sampled_from([".png", ".tif"]))
def test_property_folder_masks_load_their_values_or_stop_naming_the_file(stored, classes, suffix):
    array, label, _ = stored
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rgb(root / "images" / "a.png", noise(*array.shape[:2]))
        mask_path = write_raw(root / "masks" / f"a{suffix}", array)
        names = [f"c{k}" for k in range(classes)]
        valid = label is not None and all(v < classes or v == IGNORE_INDEX for v in np.unique(label).tolist())
        index = FolderDataset(root, mask_mode="index", mask_classes=names)
        if valid:
            np.testing.assert_array_equal(index[0].mask, label.astype(np.uint8))
        else:
            with pytest.raises(DataFileError) as info:
                index[0]
            error_names(info, mask_path)
        binary = None if label is None else expected_binary(label)
        if binary is not None:
            np.testing.assert_array_equal(FolderDataset(root)[0].mask, binary)
        else:
            with pytest.raises(DataFileError) as info:
                FolderDataset(root)[0]
            error_names(info, mask_path)


@PROPERTY
@given(
    dtype=st.sampled_from([np.float32, np.int16, np.int32]),
    values=st.lists(st.sampled_from([0, 1, 2, 255, -1, 0.5, 3.25, 40000]), min_size=1, max_size=3, unique=True),
    data=st.data(),
)
def test_property_wider_mask_types_load_whole_values_or_stop(dtype, values, data):
    cast = [v for v in values if np.asarray(v).astype(dtype) == v]  # what the dtype can hold
    assume(cast)
    label = data.draw(arrays(dtype, (3, 4), elements=st.sampled_from(cast)))
    with tempfile.TemporaryDirectory() as tmp:
        path = write_raw(Path(tmp) / "m.tif", label)
        whole = (label == np.round(label)).all() and label.min() >= 0
        if whole and label.max() <= 255:
            np.testing.assert_array_equal(read_mask(path), label.astype(np.uint8))
        else:
            with pytest.raises(DataFileError) as info:
                read_mask(path)
            error_names(info, path)


coordinates = st.one_of(st.integers(-30, 50).map(lambda v: v / 2), st.just(float("nan")))


@PROPERTY
@given(
    size=st.tuples(st.integers(4, 20), st.integers(4, 20)),
    boxes=st.lists(st.tuples(coordinates, coordinates, coordinates, coordinates), min_size=0, max_size=4),
)
def test_property_folder_boxes_are_clipped_or_stop_naming_the_file(size, boxes):
    height, width = size
    expected = []
    for x, y, w, h in boxes:
        x0, y0, x1, y1 = x, y, x + w, y + h
        if not np.isfinite([x0, y0, x1, y1]).all() or w <= 0 or h <= 0:
            expected = None
            break
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            expected = None
            break
        expected.append((max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rgb(root / "images" / "a.png", noise(height, width))
        coco = root / "boxes.json"
        coco.write_text(
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png"}],
                    "annotations": [{"image_id": 1, "bbox": list(b)} for b in boxes],
                }
            )
        )
        ds = FolderDataset(root)
        if expected is not None:
            np.testing.assert_array_equal(ds[0].boxes, np.array(expected, np.float32).reshape(-1, 4))
        else:
            with pytest.raises(DataFileError) as info:
                ds[0]
            error_names(info, coco)


@PROPERTY
@given(
    size=st.tuples(st.integers(1, 20), st.integers(1, 20)),
    points=st.lists(st.tuples(coordinates, coordinates), max_size=4),
)
def test_property_clicks_inside_are_kept_and_outside_stop(size, points):
    height, width = size
    path = Path("clicks.csv")
    inside = all(np.isfinite([x, y]).all() and 0 <= x < width and 0 <= y < height for x, y in points)
    if inside:
        np.testing.assert_array_equal(
            check_points(np.array(points, np.float32), size, path, "a"), np.array(points, np.float32).reshape(-1, 2)
        )
    else:
        with pytest.raises(DataFileError) as info:
            check_points(np.array(points, np.float32), size, path, "a")
        error_names(info, path)


@PROPERTY
@given(
    tags=st.lists(st.lists(st.sampled_from(["cat", "dog", "horse", "cow"]), max_size=3), min_size=1, max_size=3),
    declared=st.lists(st.sampled_from(["cat", "dog", "horse"]), min_size=1, max_size=3, unique=True),
)
def test_property_tags_are_indexed_or_stop_naming_the_file(tags, declared):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        rows = {}
        for i, image_tags in enumerate(tags):
            write_rgb(root / "images" / f"i{i}.png", noise(4, 4))
            rows[f"i{i}.png"] = ";".join(image_tags)
        labels = write_labels(root, rows)
        ds = FolderDataset(root, tag_classes=declared)
        for i, image_tags in enumerate(tags):
            if set(image_tags) <= set(declared):
                assert ds.load(f"i{i}").labels == [declared.index(t) for t in image_tags]
            else:
                with pytest.raises(DataFileError) as info:
                    ds.load(f"i{i}")
                error_names(info, labels)


@PROPERTY
@given(stored=stored_masks())
def test_property_oxford_trimaps_load_or_stop_naming_the_file(stored):
    array, label, _ = stored
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rgb(root / "images" / "Abyssinian_1.jpg", noise(*array.shape[:2]))
        trimap = write_raw(root / "annotations" / "trimaps" / "Abyssinian_1.png", array)
        (root / "annotations" / "list.txt").write_text("Abyssinian_1 1 1 1\n")
        ds = OxfordPet(root, split="all")
        if label is not None and set(np.unique(label).tolist()) <= {1, 2, 3}:
            expected = np.choose(label.astype(np.int64) - 1, [1, 0, IGNORE_INDEX]).astype(np.uint8)
            np.testing.assert_array_equal(ds[0].mask, expected)
        else:
            with pytest.raises(DataFileError) as info:
                ds[0]
            error_names(info, trimap)


@PROPERTY
@given(stored=stored_masks())
def test_property_kvasir_masks_load_or_stop_naming_the_file(stored):
    array, label, _ = stored
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_rgb(root / "images" / "p1.jpg", noise(*array.shape[:2]))
        mask = root / "masks" / "p1.jpg"
        write_raw(root / "masks" / "p1.png", array).rename(mask)  # lossless content, the official name
        ds = KvasirSeg(root, split="all")
        if label is not None and label.max() <= 255:
            np.testing.assert_array_equal(ds[0].mask, (label >= 128).astype(np.uint8))
        else:
            with pytest.raises(DataFileError) as info:
                ds[0]
            error_names(info, mask)


def test_registry_builds_folder_with_declared_tags(tmp_path):
    root = folder(tmp_path / "f", {"a": None})
    write_labels(root, {"a.png": "cat"})
    assert build_dataset("folder", root, "all", tag_classes=["dog", "cat"])[0].labels == [1]


def test_pseudo_label_on_error_skip_lists_unreadable_images(tmp_path):
    from weakseg.models.classifier import build_classifier
    from weakseg.pseudo import pseudo_label_dataset

    root = bad_folder(tmp_path / "f")
    write_labels(root, {f"{name}.png": "cat" for name in "acd"} | {"b.jpg": "cat"})
    ds = FolderDataset(root, mask_mode="index", mask_classes=["bg", "fg"])
    ds.on_error = "skip"
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 1, weights=None).eval()
    out = tmp_path / "pseudo"
    report = pseudo_label_dataset(ds, model, out, "gradcam", "otsu", size=32, soft=False, workers=1, progress=False)
    assert report.written == 2 and sorted(p.stem for p in (out / "masks").glob("*.png")) == ["a", "c"]
    skipped = json.loads((out / "skipped.json").read_text())
    assert [(s["name"], Path(s["file"]).name) for s in skipped] == [("b", "b.jpg"), ("d", "d.png")]
    assert skipped == report.unreadable


def test_declared_classes_are_part_of_the_prepared_split_cache_key(tmp_path):
    tagged = folder(tmp_path / "tags", {"a": None}, size=(1, 4))
    write_labels(tagged, {"a.png": "cat"})
    first = prepare(FolderDataset(tagged, tag_classes=["cat", "dog"]), 32, progress=False)
    second = prepare(FolderDataset(tagged, tag_classes=["dog", "cat"]), 32, progress=False)
    assert (first.labels, second.labels) == ([[0]], [[1]])
    root = folder(tmp_path / "f", {"a": np.array([[0, 1, 2, 2]], np.uint8)}, size=(1, 4))
    prepare(FolderDataset(root, mask_mode="index", mask_classes=["bg", "cat", "dog"]), 32, progress=False)
    with pytest.raises(DataFileError, match="not class indices"):  # never served the split checked against 3
        prepare(FolderDataset(root, mask_mode="index", mask_classes=["bg", "cat"]), 32, progress=False)


def test_atomic_writes_get_the_permissions_of_a_plain_open(tmp_path):
    """Files written atomically (masks, exports) are readable by whoever could read a plainly written file, not
    private to the writer as mkstemp leaves them."""
    from weakseg.io import write_json, write_png

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    write_json(tmp_path / "a.json", {"a": 1})
    write_png(tmp_path / "m.png", np.zeros((4, 4), np.uint8))
    expected = plain.stat().st_mode & 0o777
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == expected
    assert (tmp_path / "m.png").stat().st_mode & 0o777 == expected
