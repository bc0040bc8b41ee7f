"""Tile-based training on large images: tiles that reassemble their image exactly, labels tiled alike, the cache
key, whole images held out together, and a tiled run end to end, scored at native resolution by sliding windows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import draw_object
from weakseg.budget import Budget, click_masks, point_masks
from weakseg.config import load_run_config
from weakseg.data import IGNORE_INDEX, Sample, build_dataset
from weakseg.data.prepared import _cache_key, prepare
from weakseg.data.tiles import padded_starts, tile_sample
from weakseg.errors import ConfigError
from weakseg.evaluate import evaluate_model
from weakseg.metrics import ConfusionMatrix
from weakseg.tiling import predict_tiled

SIZES = [(100, 150), (64, 64), (40, 200), (130, 70)]  # (height, width): larger, equal to, smaller than a tile


def write_folder(root: Path, sizes: list[tuple[int, int]], splits: dict[str, list[int]] | None = None) -> list[str]:
    """A folder dataset of ellipse images of the given sizes with 0/255 masks (and split lists); the names."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = [f"im{i}" for i in range(len(sizes))]
    for i, (name, (height, width)) in enumerate(zip(names, sizes, strict=True)):
        image, mask = draw_object(i, height, width)
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask * 255)
    for split, indices in (splits or {}).items():
        (root / f"{split}.txt").write_text("".join(f"{names[i]}\n" for i in indices))
    return names


@pytest.mark.parametrize("overlap", [0, 16])
def test_tiles_of_a_prepared_split_reassemble_each_image_and_mask_exactly(tmp_path, overlap):
    names = write_folder(tmp_path / "data", SIZES)
    dataset = build_dataset("folder", tmp_path / "data", "all")
    split = prepare(dataset, 160, tile=64, tile_overlap=overlap, progress=False)
    assert split.tiled and split.size == 64 and split.on_disk and split.native_masks is None
    by_image = split.rows_by_image()
    assert list(by_image) == names
    for name, (height, width) in zip(names, SIZES, strict=True):
        rows = by_image[name]
        ys, xs = padded_starts(height, 64, overlap), padded_starts(width, 64, overlap)
        assert [split.names[r] for r in rows] == [f"{name}@{y},{x}" for y in ys for x in xs]
        assert ys[-1] + 64 >= height and xs[-1] + 64 >= width  # the tiles cover the image
        sample = dataset.load(name)
        image, mask = split.assemble(rows)
        np.testing.assert_array_equal(image, sample.image)
        np.testing.assert_array_equal(mask, sample.mask)
        for r in rows:  # past the image's border: zeros in the image, ignored in the mask
            origin, geometry = split.origins[r], split.geometry[r]
            ch, cw = min(64, height - origin.y), min(64, width - origin.x)
            assert (geometry.content_h, geometry.content_w) == (ch, cw) == (geometry.height, geometry.width)
            tile_image, tile_mask = split.image_rows[r].numpy(), split.mask_rows[r].numpy()
            np.testing.assert_array_equal(
                tile_image[:, :ch, :cw].transpose(1, 2, 0), sample.image[origin.y :][:ch, origin.x :][:, :cw]
            )
            assert not tile_image[:, ch:].any() and not tile_image[:, :, cw:].any()
            assert (tile_mask[ch:] == IGNORE_INDEX).all() and (tile_mask[:, cw:] == IGNORE_INDEX).all()
            assert IGNORE_INDEX not in tile_mask[:ch, :cw]
    if overlap == 0:  # a partition: every image pixel in exactly one tile
        assert len(split) == 2 * 3 + 1 + 4 + 3 * 2


def test_a_click_lands_in_its_tile_at_its_offset_and_boxes_are_clipped():
    image = np.zeros((100, 150, 3), np.uint8)
    points = np.array([[70.5, 10.25, 1], [100.0, 90.0, 0]], np.float32)
    boxes = np.array([[60, 5, 80, 20], [0, 0, 10, 10]], np.float32)
    sample = Sample(image=image, mask=None, labels=[2], boxes=boxes, name="a", points=points)
    tiles = {piece.name: (piece, origin) for piece, origin in tile_sample(sample, 64)}
    assert sorted(tiles) == sorted(f"a@{y},{x}" for y in (0, 64) for x in (0, 64, 128))
    np.testing.assert_allclose(tiles["a@0,64"][0].points, [[6.5, 10.25, 1]])
    np.testing.assert_allclose(tiles["a@64,64"][0].points, [[36.0, 26.0, 0]])
    assert sum(len(piece.points) for piece, _ in tiles.values()) == 2  # no click lost or doubled
    np.testing.assert_allclose(tiles["a@0,0"][0].boxes, [[60, 5, 64, 20], [0, 0, 10, 10]])  # clipped at the tile
    np.testing.assert_allclose(tiles["a@0,64"][0].boxes, [[0, 5, 16, 20]])
    assert len(tiles["a@64,128"][0].boxes) == 0 and all(p.labels == [2] for p, _ in tiles.values())
    overlapping = {p.name: p for p, _ in tile_sample(sample, 64, overlap=16)}  # starts 0, 48, 96 along x
    np.testing.assert_allclose(overlapping["a@48,48"].points, [[52.0, 42.0, 0]])
    np.testing.assert_allclose(overlapping["a@48,96"].points, [[4.0, 42.0, 0]])  # in both tiles that hold it


def test_clicks_of_a_folder_dataset_reach_their_tile_rows(tmp_path):
    names = write_folder(tmp_path / "data", SIZES[:1])
    (tmp_path / "data" / "clicks.csv").write_text(f"name,x,y,label\n{names[0]},70,90,positive\n")
    split = prepare(build_dataset("folder", tmp_path / "data", "all"), 64, tile=64, progress=False)
    row = split.names.index(f"{names[0]}@64,64")
    clicked = click_masks(split)
    assert clicked[row, 90 - 64, 70 - 64] == 1 and (clicked != IGNORE_INDEX).sum() == 1


def test_the_cache_key_changes_with_the_tile_options(tmp_path):
    write_folder(tmp_path / "data", SIZES[:2])
    dataset = build_dataset("folder", tmp_path / "data", "all")
    files = dataset.fingerprint()
    untiled = _cache_key(dataset, 64, "resize", False, files)
    keys = [
        _cache_key(dataset, 64, "resize", False, files, tile, overlap) for tile, overlap in [(64, 0), (64, 16), (96, 0)]
    ]
    assert len({untiled, *keys}) == 4
    assert _cache_key(dataset, 64, "resize", False, files, None, 16) == untiled  # entries made before tiles: kept
    whole = prepare(dataset, 64, progress=False)
    tiled = prepare(dataset, 64, tile=64, progress=False)
    assert not whole.tiled and len(whole) == 2 and tiled.tiled and len(tiled) == 2 * 3 + 1
    assert prepare(dataset, 64, tile=64, progress=False).image_rows.source.path == tiled.image_rows.source.path


def test_tile_settings_are_checked_and_tag_methods_refuse_tiles(tmp_path):
    for bad in (
        ["dataset.tile=100"],
        ["dataset.tile=64", "dataset.tile_overlap=64"],
        ["dataset.tile=64", "train.eval_overlap=64"],
    ):
        with pytest.raises(ConfigError, match="tile"):
            load_run_config(None, bad)
    from weakseg.pipeline import run

    config = load_run_config(None, ["dataset.tile=64", "train.eval_overlap=16", "method.name=gradcam"])
    with pytest.raises(ConfigError, match="does not train on tiles"):
        run(config, tmp_path / "run", tmp_path, progress=False)


def test_whole_images_are_held_out_together_and_point_labels_of_tiles_stay_on_disk(tmp_path):
    from weakseg.methods.multisource import _point_labels
    from weakseg.pipeline import holdout

    write_folder(tmp_path / "data", SIZES * 3)
    split = prepare(build_dataset("folder", tmp_path / "data", "all"), 64, tile=64, progress=False)
    train, val = holdout(split, 0.25, seed=0)
    assert {*train.image_of}.isdisjoint(val.image_of) and len({*val.image_of}) == 3  # 3 of the 12 images
    assert len(train) + len(val) == len(split)
    budget = Budget(density=10.0, seed=0)
    labels = _point_labels(split, budget, chunk=5)
    assert labels.on_disk and labels.shape == (len(split), 64, 64)
    torch.testing.assert_close(labels.tensor(), point_masks(split.masks, split.names, budget))


def test_training_on_tiles_end_to_end_and_scoring_whole_images_by_sliding_windows(tmp_path):
    """``weakseg train`` with dataset.tile on images larger than a tile (points at 5 %, partial CE); the test
    images are scored whole at native resolution by sliding windows: the run's metrics equal predict_tiled on each
    image scored against its mask file, and ``weakseg evaluate`` on the checkpoint gives them again."""
    names = write_folder(tmp_path / "data", [(96, 160)] * 6, splits={"trainval": [0, 1, 2, 3], "test": [4, 5]})
    out = tmp_path / "run"
    settings = [
        *("dataset.name=folder", "dataset.root=data", "dataset.train_split=trainval", "dataset.tile=64"),
        *("dataset.val_fraction=0.25", "method.name=points", "budget.density=5", "model.weights=none"),
        *("train.epochs=1", "train.batch_size=8", "train.eval_batch_size=3", "train.eval_overlap=16"),
    ]
    args = [sys.executable, "-m", "weakseg", "--quiet", "train", "--data-root", str(tmp_path), "--out", str(out)]
    done = subprocess.run(
        [*args, *(a for s in settings for a in ("--set", s))],
        capture_output=True,
        text=True,
        timeout=600,
        env=os.environ.copy(),
    )
    assert done.returncode == 0, done.stderr
    budget = json.loads((out / "budget.json").read_text())
    assert budget["images"] == 4 * 6 and len(budget["validation"]) == 6  # tiles; one image's held out whole
    held_out = {name.split("@")[0] for name in budget["validation"]}
    assert len(held_out) == 1 and held_out < set(names[:4])
    final = json.loads((out / "metrics.json").read_text())[-1]["metrics"]
    assert final["images"] == 2  # whole images, not their 12 tiles

    from weakseg.models import load_model
    from weakseg.models.registry import checkpoint_meta

    meta = checkpoint_meta(out / "best.pt")
    assert (meta["size"], meta["tile"], meta["overlap"]) == (64, 64, 16)  # predict and evaluate default to them
    model = load_model(out / "best.pt").eval()
    test = build_dataset("folder", tmp_path / "data", "test")
    direct = ConfusionMatrix(2)
    for name in names[4:]:
        sample = test.load(name)
        probs = predict_tiled(model, sample.image, tile=64, overlap=16, batch_size=3)
        direct.update(probs.argmax(0), sample.mask)
    expected = direct.compute()
    for key in ("iou", "dice", "accuracy", "iou_per_image"):
        assert final[key] == pytest.approx(expected[key], abs=1e-9)
    split = prepare(test, 64, tile=64, progress=False)
    again = evaluate_model(model, split, torch.device("cpu"), 3, tile=64, overlap=16)
    assert again["iou"] == pytest.approx(final["iou"], abs=1e-9)

    from weakseg.report import write_report

    assert "tiles of the test split, native resolution" in write_report(out, tmp_path).read_text()

    from weakseg.cli import app

    common = ["--json", "evaluate", "--checkpoint", str(out / "best.pt"), "--dataset", "folder"]
    common += ["--root", str(tmp_path / "data"), "--split", "test"]
    result = CliRunner().invoke(app, common)  # the checkpoint's tile and overlap by default
    assert result.exit_code == 0, result.output
    assert json.loads(result.output.strip().splitlines()[-1])["metrics"]["iou"] == pytest.approx(final["iou"], abs=1e-9)
    result = CliRunner().invoke(app, [*common, "--tile", "96", "--overlap", "32"])
    assert result.exit_code == 0, result.output
    windows = ConfusionMatrix(2)
    for name in names[4:]:
        sample = test.load(name)
        windows.update(predict_tiled(model, sample.image, tile=96, overlap=32, batch_size=4).argmax(0), sample.mask)
    assert json.loads(result.output.strip().splitlines()[-1])["metrics"]["iou"] == pytest.approx(
        windows.compute()["iou"], abs=1e-9
    )
