"""``weakseg label``: a mask for every image of a folder from what each image has, a review ranking, resumable."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from weakseg.bench import LABEL_STAGES, bench_label
from weakseg.cli import app
from weakseg.errors import ConfigError
from weakseg.io import read_label_image
from weakseg.labelling import STAGES, LabelSettings, label_folder, read_review
from weakseg.sources.boxes import box_mask
from weakseg.sources.sam import BoxMaskGenerator

MASKED = [0, 1, 2]


@pytest.fixture
def folder(make_folder_dataset):
    """12 ellipse images with boxes and tags; masks for images 0-2 only; two clicks on image 3."""
    truth = make_folder_dataset(n=12)
    for i, name in enumerate(truth.names):
        if i not in MASKED:
            (truth.root / "masks" / f"{name}.png").unlink()
    ys, xs = np.nonzero(truth.masks[truth.names[3]])
    (truth.root / "clicks.csv").write_text(f"name,x,y,label\n{truth.names[3]},{xs[0]},{ys[0]},positive\n")
    return truth


def fast(**changes) -> LabelSettings:
    return LabelSettings(
        **({"generator": "box", "size": 32, "epochs": 2, "batch_size": 4, "weights": "none"} | changes)
    )


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a.astype(bool) & b.astype(bool)).sum() / (a.astype(bool) | b.astype(bool)).sum())


def test_without_a_segmenter_boxes_become_their_generator_masks(folder, tmp_path):
    report = label_folder(folder.root, tmp_path / "out", fast(segmenter=False, generator="none"), progress=False)
    assert report.images == 12 and report.with_mask == 3 and report.with_boxes == 9 and report.predicted == 0
    for i, name in enumerate(folder.names):
        mask = read_label_image(tmp_path / "out" / "masks" / f"{name}.png")
        if i in MASKED:
            np.testing.assert_array_equal(mask, folder.masks[name])  # a mask file is kept as it is
        else:  # GrabCut from the ellipse's box: close to the ellipse, inside the box
            assert iou(mask, folder.masks[name]) > 0.8
            assert not (mask & (1 - box_mask(mask.shape, folder.boxes[name]))).any()
    rows = read_review(tmp_path / "out" / "review.csv")
    assert sorted(r["name"] for r in rows) == folder.names
    # one mask per box and no segmenter: nothing to compare, unscored and listed first; mask files score 1, last
    assert [r["score"] for r in rows[:9]] == [""] * 9
    assert {r["name"] for r in rows[-3:]} == {folder.names[i] for i in MASKED} and {r["score"] for r in rows[-3:]} == {
        "1.0000"
    }


def test_a_segmenter_labels_every_image_and_a_rerun_resumes(folder, tmp_path):
    out = tmp_path / "out"
    report = label_folder(folder.root, out, fast(), progress=False)
    assert report.predicted == 9 and not report.unlabelled
    first = {n: (out / "masks" / f"{n}.png").read_bytes() for n in folder.names}
    for name in folder.names[3:]:
        assert (out / "boxes" / "box" / f"{name}.png").is_file() and (
            out / "boxes" / "grabcut" / f"{name}.png"
        ).is_file()
        mask = read_label_image(out / "masks" / f"{name}.png")
        assert mask.shape == folder.sizes[name] and set(np.unique(mask)) <= {0, 1}
    rows = read_review(out / "review.csv")
    assert [float(r["score"]) for r in rows] == sorted(float(r["score"]) for r in rows)
    assert rows[0]["sources"] in ("box+grabcut", "box+grabcut+clicks")
    stamps = {p: p.stat().st_mtime_ns for p in (out / "boxes").rglob("*.png")}
    label_folder(folder.root, out, fast(), progress=False)  # same settings: nothing recomputed, same masks
    assert {p: p.stat().st_mtime_ns for p in (out / "boxes").rglob("*.png")} == stamps
    assert {n: (out / "masks" / f"{n}.png").read_bytes() for n in folder.names} == first
    with pytest.raises(ConfigError, match="other settings"):
        label_folder(folder.root, out, fast(epochs=3), progress=False)


def test_the_box_generator_identity_is_part_of_the_folder_identity(folder, tmp_path, monkeypatch):
    """Masks made another way (e.g. LiteMedSAM in ONNX Runtime, not PyTorch) are never mixed into a resumed run."""
    settings = fast(segmenter=False, grabcut=False)
    label_folder(folder.root, tmp_path / "out", settings, progress=False)
    label_folder(folder.root, tmp_path / "out", settings, progress=False)  # same generator: resumes
    monkeypatch.setattr(BoxMaskGenerator, "identity", lambda self: {"generator": "box", "backend": "other"})
    with pytest.raises(ConfigError, match="box_generator"):
        label_folder(folder.root, tmp_path / "out", settings, progress=False)


def test_bench_label_prints_the_stages_of_a_fresh_run(folder, tmp_path):
    started = time.perf_counter()
    result = bench_label(folder.root, fast(epochs=1), export="coco", out_dir=tmp_path / "out")
    wall = time.perf_counter() - started
    json.dumps(result)  # one JSON line
    assert result["bench"] == "label" and result["images"] == 12 and result["with_boxes"] == 9
    stages = result["seconds"]
    assert list(stages) == list(LABEL_STAGES) and all(stages[s] >= 0 for s in LABEL_STAGES)
    assert {"decode", "cam", "sam", "refine", "train", "export"} <= set(stages)  # the six
    assert stages["cam"] == 0 and "cam" in result["notes"]  # no tags used: nothing invented
    assert stages["export"] > 0 and stages["sam"] > 0 and stages["refine"] > 0 and stages["train"] > 0
    detail = result["detail"]
    assert {"scan", "decode", "sam", "grabcut", "fuse", "train", "predict", "write"} <= set(detail)
    assert set(detail) <= {*STAGES, "export"} and stages["refine"] == pytest.approx(detail["grabcut"] + detail["fuse"])
    assert sum(stages.values()) <= result["wall_s"] + 0.01 <= wall + 0.02
    assert abs(result["unaccounted_s"]) < 0.05 * result["wall_s"] + 0.25
    per_s = result["images_per_s"]
    assert per_s["run"] == pytest.approx(12 / result["wall_s"], rel=0.01) and per_s["cam"] is None
    assert result["sam_images_per_s"] == pytest.approx(9 / stages["sam"], rel=0.01)
    assert result["load"]["before"]["cores"] >= 1
    record = json.loads((tmp_path / "out" / "label.json").read_text())
    assert "seconds" not in record["report"]  # label.json stays the same for the same inputs
    with pytest.raises(ConfigError, match="earlier run"):  # a resumed run would time skipped work
        bench_label(folder.root, fast(epochs=1), export=None, out_dir=tmp_path / "out")
    cli = CliRunner().invoke(
        app,
        [
            *("bench", "label", str(folder.root), "--generator", "box", "--no-grabcut", "--no-segmenter"),
            *("--size", "32", "--export", "none", "--generator-option", "shape_kind=ellipse"),
        ],
    )
    assert cli.exit_code == 0, cli.output
    line = json.loads(cli.stdout.strip().splitlines()[-1])
    assert line["generator_options"] == {"shape_kind": "ellipse"} and line["seconds"]["export"] == 0
    assert line["seconds"]["train"] == 0 and line["seconds"]["refine"] >= 0


def test_label_command(folder, tmp_path):
    result = CliRunner().invoke(
        app,
        [
            *("label", str(folder.root), "--out", str(tmp_path / "cli"), "--generator", "none"),
            *("--no-segmenter", "--export", "coco"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "3 with a mask, 9 with boxes" in result.output
    assert (tmp_path / "cli" / "export" / "coco" / "annotations.json").is_file()


def test_with_tiles_the_segmenter_trains_on_tiles_and_predicts_whole_images_by_sliding_windows(
    make_folder_dataset, tmp_path
):
    from weakseg.io import read_image
    from weakseg.models import load_model
    from weakseg.models.registry import checkpoint_meta
    from weakseg.tiling import predict_tiled

    folder = make_folder_dataset(n=4)  # images of 40-56 x 56-64 px: 2 x 2 tiles of 32 px each
    for name in folder.names[2:]:
        (folder.root / "masks" / f"{name}.png").unlink()
    ys, xs = np.nonzero(folder.masks[folder.names[3]])
    (folder.root / "clicks.csv").write_text(f"name,x,y,label\n{folder.names[3]},{xs[0]},{ys[0]},positive\n")
    out = tmp_path / "tiled"
    settings = fast(tile=32, overlap=8, epochs=1, batch_size=8, segmenter=True)
    report = label_folder(folder.root, out, settings, progress=False)
    assert (report.images, report.with_mask, report.with_clicks, report.predicted) == (4, 2, 1, 2)
    meta = checkpoint_meta(out / "model" / "best.pt")
    assert (meta["tile"], meta["overlap"]) == (32, 8)
    model = load_model(out / "model" / "best.pt").eval()
    for name in folder.names[2:]:  # predicted (boxes, no mask file): the whole image, window by window
        image = read_image(next((folder.root / "images").glob(f"{name}.*")))
        expected = predict_tiled(model, image, 32, 8, tta=("hflip",)).argmax(0)
        np.testing.assert_array_equal(read_label_image(out / "masks" / f"{name}.png"), expected)
    rows = {r["name"]: r for r in read_review(out / "review.csv")}
    assert rows[folder.names[0]]["sources"] == "mask" and rows[folder.names[3]]["sources"] == "box+grabcut+clicks"


def test_label_command_passes_its_tile_options(folder, tmp_path, monkeypatch):
    seen = []

    def record(root, out, settings, **kwargs):
        seen.append(settings)
        raise SystemExit(0)

    monkeypatch.setattr("weakseg.labelling.label_folder", record)
    args = ["label", str(folder.root), "--out", str(tmp_path / "cli"), "--tile", "64", "--overlap", "16"]
    assert CliRunner().invoke(app, args).exit_code == 0
    assert (seen[0].tile, seen[0].overlap) == (64, 16)
    assert CliRunner().invoke(app, args[:4]).exit_code == 0
    assert seen[1].tile is None and "tile" not in seen[1].ident()  # folders labelled before tiles keep their identity
