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
    assert row["metrics"]["iou"]["n"] == 2 and row["seeds"] == [0, 1]
    results = json.loads((out / "results.json").read_text())
    assert results["experiment"] == "tiny" and results["rows"] == json.loads(json.dumps(rows))
    assert "| method | coverage | stage | iou |" in (out / "results.md").read_text()
    (row_dir,) = out.glob("method-full_coverage-50-*")
    budget = json.loads((row_dir / "seed0" / "budget.json").read_text())
    assert budget["budget"]["coverage"] == 50 and len(budget["masks"]) == round(budget["images"] / 2)

    finished = row_dir / "seed1" / "metrics.json"
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


def _row_dirs(out):
    return sorted(p.name for p in out.iterdir() if p.is_dir() and p.name != "shared")


def _stamps(out):
    return {p: p.stat().st_mtime_ns for p in out.glob("*/seed*/metrics.json")}


def test_a_changed_config_value_reruns_that_row_only_and_old_runs_are_not_reported(tmp_path, demo_root):
    parts = [
        {"name": "a", "grid": {"coverage": [50]}},
        {"name": "b", "set": {"train.lr": 0.001}, "grid": {"coverage": [100]}},
    ]
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0])
    out = tmp_path / "out"
    run_experiment(load_spec(path), "/", out, progress=False)
    before = _stamps(out)
    assert len(before) == 2

    # the same spec again: nothing re-runs
    run_experiment(load_spec(path), "/", out, progress=False)
    assert _stamps(out) == before

    # a value outside the row settings (part b's learning rate) changes: b re-runs, a does not
    parts[1]["set"]["train.lr"] = 0.002
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0])
    rows = run_experiment(load_spec(path), "/", out, progress=False)
    after = _stamps(out)
    new = [p for p in after if p not in before]
    assert len(new) == 1 and "coverage-100" in str(new[0])  # b ran again, in a folder of its new key
    assert all(after[p] == before[p] for p in before)  # a was not redone; the old b run is still on disk ...
    results = json.loads((out / "results.json").read_text())
    assert len(results["stale_runs"]) == 1 and "coverage-100" in results["stale_runs"][0]  # ... and not reported
    assert [r["setting"]["coverage"] for r in rows] == [50, 100]
    configs = [
        json.loads(p.read_text())["train"]["lr"] for p in out.glob("method-full_coverage-100-*/seed0/config.json")
    ]
    assert sorted(configs) == [0.001, 0.002]


def test_parts_differing_only_outside_row_settings_are_separate_rows(tmp_path, demo_root):
    parts = [
        {"name": "short", "set": {"train.lr": 0.001}, "grid": {"coverage": [100]}},
        {"name": "long", "set": {"train.lr": 0.003}, "grid": {"coverage": [100]}},
    ]
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0]))
    rows = expand_rows(spec)
    assert [r.setting["part"] for r in rows] == ["short", "long"]
    table = run_experiment(spec, "/", tmp_path / "out", progress=False)
    assert len(_row_dirs(tmp_path / "out")) == 2 and len(table) == 2
    assert table[0]["metrics"]["iou"]["mean"] != table[1]["metrics"]["iou"]["mean"]


def test_results_state_the_labels_each_row_consumed(tmp_path, demo_root):
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root, seeds=[0], grid={"coverage": [25]}))
    (row,) = run_experiment(spec, "/", tmp_path / "out", progress=False)
    (budget_file,) = (tmp_path / "out").glob("*/seed0/budget.json")
    budget = json.loads(budget_file.read_text())
    masks = len(budget["masks"])
    assert masks == round(budget["images"] * 0.25)
    labels = row["labels"]
    # validation comes out of the budget: training and validation masks together are the budget's masks
    assert labels["masks"] == masks and labels["boxes"] == labels["points"] == labels["tags"] == 0
    assert labels["by_use"]["train"]["masks"] + labels["by_use"]["validation"]["masks"] == masks
    assert labels["by_use"]["validation"]["masks"] == round(masks * 0.2)
    assert (
        "masks 12" in (tmp_path / "out" / "results.md").read_text()
        or f"masks {masks}" in (tmp_path / "out" / "results.md").read_text()
    )


def test_validation_that_needs_more_masks_than_the_budget_is_refused(tmp_path, demo_root):
    # 1 % of the 48 training images is one mask: holding out validation would leave none to train on
    spec = load_spec(write_spec(tmp_path / "s.yaml", demo_root, seeds=[0], grid={"coverage": [1]}))
    with pytest.raises(ConfigError, match="validation needs masks"):
        run_experiment(spec, "/", tmp_path / "out", progress=False)


def test_a_part_chooses_on_the_budgets_masks_never_on_test(tmp_path, demo_root):
    # box labels drawn as filled rectangles or ellipses: chosen per seed by the Dice of the labels on the
    # budget's 10 % masked training images, then the chosen one trains the segmenter
    parts = [
        {
            "name": "boxes",
            "set": {
                "method": "sam",
                "method.generator": "box",
                "method.boxes_from": "masks",
                "budget.boxes": 100,
                "budget.coverage": 10,
            },
            "choose": {"among": {"method.generator_options.shape_kind": ["rect", "ellipse"]}, "by": "dev.dice"},
        }
    ]
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0])
    out = tmp_path / "out"
    (final, *others) = [r for r in run_experiment(load_spec(path), "/", out, progress=False)]
    (choice,) = final["choices"]
    scores = {s["method.generator_options.shape_kind"]: s["dev.dice"] for s in choice["scores"]}
    assert choice["chosen"]["method.generator_options.shape_kind"] == max(scores, key=scores.get)

    # the scores are the labels' Dice on the masked training images: recompute them independently
    from weakseg.data import build_dataset
    from weakseg.data.prepared import prepare
    from weakseg.metrics import ConfusionMatrix
    from weakseg.sources.boxes import box_masks, boxes_from_mask

    budget_file = next(out.glob("*alternative-scored*/seed0/budget.json"))
    dev = json.loads(budget_file.read_text())["masks"]
    split = prepare(build_dataset("oxford_pet", demo_root, "trainval"), 64, progress=False)
    rows = [split.names.index(n) for n in dev]
    for shape, score in scores.items():
        cm = ConfusionMatrix(2)
        for i in rows:
            truth = split.masks[i]
            boxes = boxes_from_mask(truth.numpy())
            label = box_masks([boxes], 64, shape)[0]
            truth = truth.clone()
            truth[label == 255] = 255
            cm.update(label[None].clamp(max=1), truth[None])
        assert score == pytest.approx(cm.compute()["dice"], abs=0.03)
    # the chosen row says what the choice saw: the budget's masks as tuning labels
    assert final["labels"]["by_use"]["tuning"]["masks"] == len(dev) == choice["saw"]["masks"]
    assert (
        final["setting"]["method.generator_options.shape_kind"]
        == choice["chosen"]["method.generator_options.shape_kind"]
    )
    assert any(r["setting"]["stage"] == "final" for r in [final, *others])


def test_published_records_stand_in_for_finished_runs_on_a_fresh_machine(tmp_path, demo_root, monkeypatch):
    # a first machine runs seed 0 and publishes; a second one (no run folder) gets seed 0 from the records,
    # trains seed 1 only, and publishes both; a third publishes seed 1 alone and keeps seed 0's records; a
    # changed config value trains its row again and drops the records of the row it replaces
    parts = [{"name": "a", "grid": {"coverage": [50]}}, {"name": "b", "grid": {"coverage": [100]}}]
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0])
    docs, records = tmp_path / "docs", tmp_path / "docs" / "runs"
    first = run_experiment(load_spec(path), "/", tmp_path / "one", publish_dir=docs, records_dir=records)
    assert sorted(p.name for p in (records / "tiny").glob("*/seed0/*")) == sorted(
        ["run.json", "metrics.json", "labels.json", "log.csv"] * 2
    )

    import weakseg.experiments.runner as runner

    trained = []
    real_run = runner.run

    def counting_run(config, out_dir, *args, **kwargs):
        trained.append((config.budget.coverage, config.seed))
        return real_run(config, out_dir, *args, **kwargs)

    monkeypatch.setattr(runner, "run", counting_run)
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0, 1])
    both = run_experiment(load_spec(path), "/", tmp_path / "two", publish_dir=docs, records_dir=records)
    assert trained == [(50, 1), (100, 1)]  # seed 0 came from the records
    for before, after in zip(first, both, strict=True):
        assert after["seeds"] == [0, 1]
        assert after["labels"] == before["labels"]
        seed0 = json.loads(
            next((tmp_path / "one").glob(f"*coverage-{before['setting']['coverage']}-*/seed0/metrics.json")).read_text()
        )
        seed1 = json.loads(
            next((tmp_path / "two").glob(f"*coverage-{before['setting']['coverage']}-*/seed1/metrics.json")).read_text()
        )
        iou = [seed0[0]["metrics"]["iou"], seed1[0]["metrics"]["iou"]]
        assert after["metrics"]["iou"]["mean"] == pytest.approx(sum(iou) / 2)
    assert len(list((records / "tiny").glob("*/seed*"))) == 4
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[1])
    trained.clear()
    run_experiment(load_spec(path), "/", tmp_path / "two", publish_dir=docs, records_dir=records)
    assert not trained and len(list((records / "tiny").glob("*/seed*"))) == 4

    # part b's learning rate changes: only b trains (both seeds), and b's old records are dropped on publish
    trained.clear()
    parts[1]["set"] = {"train.lr": 0.002}
    path = write_spec(tmp_path / "s.yaml", demo_root, grid={}, parts=parts, seeds=[0, 1])
    run_experiment(load_spec(path), "/", tmp_path / "three", publish_dir=docs, records_dir=records)
    assert trained == [(100, 0), (100, 1)]
    configs = [json.loads(p.read_text())["key"]["config"]["train"]["lr"] for p in records.glob("tiny/*/seed*/run.json")]
    assert sorted(configs) == [0.001, 0.001, 0.002, 0.002]
    assert len(list((records / "tiny").glob("*coverage-100*"))) == 1


def test_a_setting_added_at_its_neutral_value_keeps_the_keys_of_recorded_runs():
    from weakseg.config import RunConfig
    from weakseg.experiments.runner import run_key

    config = RunConfig()
    key = run_key(config, {"trainval": "x"})
    # recorded before train.cpu_amp, train.workers, the selftrain settings and tiles existed: the same dump without them
    before = config.model_dump(exclude={"train": {"progress"}})
    neutral = ("train.cpu_amp", "train.workers", "method.rounds", "method.regenerate", "method.restart")
    neutral += ("method.tag_weight", "dataset.tile", "dataset.tile_overlap", "train.eval_overlap")
    for path in (*neutral, "dataset.on_error", "budget.source"):
        section, name = path.split(".")
        del before[section][name]
    assert key["config"] == json.loads(json.dumps(before, default=str))
    changed = run_key(config.model_copy(update={"train": config.train.model_copy(update={"cpu_amp": True})}), {})
    assert changed["config"]["train"]["cpu_amp"] is True
    tiled = run_key(config.model_copy(update={"dataset": config.dataset.model_copy(update={"tile": 512})}), {})
    assert tiled["config"]["dataset"]["tile"] == 512 and "tile_overlap" not in tiled["config"]["dataset"]
