"""Experiment specs: grid rows, seeds, filters, resumable runs and the results files."""

from __future__ import annotations

import json

import pytest
import yaml

from weakseg.config import ExperimentSpec, load_run_config, load_spec
from weakseg.errors import ConfigError
from weakseg.experiments import expand_rows, run_experiment
from weakseg.experiments.results import aggregate
from weakseg.experiments.runner import matches, parse_only


def write_spec(path, demo_root, **extra):
    spec = {
        "name": "tiny",
        "dataset": {"name": "oxford_pet", "root": str(demo_root), "size": 64, "val_fraction": 0.2},
        "model": {"arch": "unet", "weights": "imagenet"},
        "train": {"epochs": 1, "batch_size": 8, "progress": False},
        "seeds": [0, 1],
        "grid": {"coverage": [50, 100]},
    } | extra
    path.write_text(yaml.safe_dump(spec))
    return path


def test_grid_expands_to_rows_with_named_settings(tmp_path, demo_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root, grid={"arch": ["unet", "fpn"], "coverage": [5, 100]}))
    rows = expand_rows(spec)
    assert [r.setting for r in rows] == [
        {"method": "full", "arch": "unet", "coverage": 5},
        {"method": "full", "arch": "unet", "coverage": 100},
        {"method": "full", "arch": "fpn", "coverage": 5},
        {"method": "full", "arch": "fpn", "coverage": 100},
    ]
    assert rows[2].config.model.arch == "fpn" and rows[2].config.budget.coverage == 5


def test_parts_have_their_own_grid_overrides_and_seeds(tmp_path, demo_root):
    parts = [
        {"grid": {"method": ["cam", "gradcam"], "refine": ["otsu", "otsu | crf"]}, "seeds": [0]},
        {
            "set": {"method": "gradcam", "refine": "otsu | grabcut", "method.segmenter": True},
            "grid": {"arch": ["unet"]},
        },
    ]
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts))
    rows = expand_rows(spec)
    assert [r.setting for r in rows][:2] == [
        {"method": "cam", "refine": "otsu"},
        {"method": "cam", "refine": "otsu | crf"},
    ]
    assert len(rows) == 5 and [r.seeds for r in rows] == [[0]] * 4 + [[0, 1]]
    last = rows[-1]
    assert last.setting == {"method": "gradcam", "refine": "otsu | grabcut", "arch": "unet"}
    assert last.config.method.segmenter and last.config.method.refine == "otsu | grabcut"


def test_overrides_and_validation_errors_name_the_key(tmp_path, demo_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root), ["train.epochs=3", "seeds=[4]", "loss=ce+dice"])
    assert spec.train.epochs == 3 and spec.seeds == [4] and spec.train.loss == "ce+dice"
    with pytest.raises(ConfigError, match=r"dataset\.size"):
        load_run_config(None, ["dataset.size=100"])
    with pytest.raises(ConfigError, match=r"train\.nonsense"):
        load_run_config(None, ["train.nonsense=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_spec(tmp_path / "missing.yaml")


def test_aggregate_gives_mean_sample_std_and_count():
    stats = aggregate([{"iou": 0.5, "dice": 0.6}, {"iou": 0.7, "dice": 0.8}, {"iou": 0.9, "dice": float("nan")}])
    assert stats["iou"]["mean"] == pytest.approx(0.7)
    assert stats["iou"]["std"] == pytest.approx(0.2)
    assert stats["iou"]["n"] == 3 and stats["dice"]["n"] == 2


def test_run_only_one_row_then_resume_and_publish(tmp_path, demo_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root))
    out = tmp_path / "out"
    rows = run_experiment(spec, "/", out, only=["coverage=50"], progress=False)
    assert len(rows) == 1
    row = rows[0]
    assert row["setting"] == {"method": "full", "coverage": 50, "stage": "final"}
    assert row["metrics"]["iou"]["n"] == 2 and 0 <= row["metrics"]["iou"]["mean"] <= 1
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == "tiny" and results["rows"] == json.loads(json.dumps(rows))
    assert "| method | coverage | stage | iou |" in (out / "results.md").read_text()
    budget = json.loads((out / "method-full_coverage-50" / "seed0" / "budget.json").read_text())
    assert budget["budget"]["coverage"] == 50 and len(budget["masks"]) == round(budget["images"] / 2)

    finished = out / "method-full_coverage-50" / "seed1" / "metrics.json"
    stamp = finished.stat().st_mtime_ns
    publish = tmp_path / "docs"
    rows = run_experiment(spec, "/", out, only=["coverage=50"], publish_dir=publish, progress=False)
    assert finished.stat().st_mtime_ns == stamp  # finished runs are not redone
    assert json.loads((publish / "tiny.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (publish / "tiny.md").is_file()


def test_filters_that_match_nothing_are_errors(tmp_path, demo_root):
    spec = ExperimentSpec.model_validate(yaml.safe_load(write_spec(tmp_path / "s.yaml", demo_root).read_text()))
    with pytest.raises(ConfigError, match="no row"):
        run_experiment(spec, "/", tmp_path / "o", only=["coverage=7"], progress=False)
    with pytest.raises(ConfigError, match="not row settings"):
        run_experiment(spec, "/", tmp_path / "o", only=["colour=red"], progress=False)


def test_list_settings_match_as_yaml_lists_or_as_results_write_them():
    setting = {"method": "multi", "sources": ["masks", "sam"], "coverage": 2.5}
    for text in ("sources=[masks, sam]", "sources=[masks,sam]", "sources=masks,sam"):
        assert matches(setting, parse_only([text, "coverage=2.5"]))
    assert not matches(setting, parse_only(["sources=[masks]"]))
