"""Annotation cost model and ``weakseg compare``: prices against hand computation, overrides, the Pareto front
against brute force, and the command on the published results files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from weakseg.cli import app
from weakseg.compare import collect, compare, pareto_front
from weakseg.cost import (
    DEFAULT_COSTS,
    CostModel,
    cost_breakdown,
    cost_model,
    parse_cost_options,
    row_cost,
    row_cost_hours,
)
from weakseg.errors import ConfigError, DataFileError

REPO = Path(__file__).resolve().parents[1]
PUBLISHED = [
    REPO / "docs" / "results" / f"{name}.json"
    for name in ("pets-coverage-sweep", "kvasir-point-density", "kvasir-boxes")
]


def labels(masks: int = 0, boxes: int = 0, points: int = 0, tags: int = 0, point_images: int = 0) -> dict:
    """A ``labels`` entry as results.json writes it."""
    return {
        "masks": masks,
        "boxes": boxes,
        "points": points,
        "tags": tags,
        "images": {"masks": masks, "boxes": boxes, "points": point_images, "tags": tags},
        "by_use": {"train": {"masks": masks}},
    }


def test_defaults_are_the_published_times() -> None:
    assert DEFAULT_COSTS.as_dict() == {
        "tag": 1.0,
        "point": 2.4,
        "box": 7.0,
        "polygon": 79.2,
        "mask": 239.7,
        "sam_mask": 14.0,
    }


def test_row_cost_by_hand() -> None:
    # 8 masks + 329 boxes (pets 2.5 % + boxes): 8 * 239.7 + 329 * 7
    assert row_cost(labels(masks=8, boxes=329)) == pytest.approx(8 * 239.7 + 329 * 7)
    # masks + CAM: 15 masks and 300 image tags
    assert row_cost(labels(masks=15, tags=300)) == pytest.approx(15 * 239.7 + 300 * 1.0)
    # 3 clicks per object on 100 images with two objects each (background too): 600 clicks, under the cap
    assert row_cost(labels(points=600, point_images=100)) == pytest.approx(600 * 2.4)
    assert row_cost_hours(labels(masks=300)) == pytest.approx(300 * 239.7 / 3600)
    assert row_cost(labels()) == 0.0
    assert cost_breakdown({"polygons": 10, "sam_masks": 4}) == pytest.approx({"polygons": 792.0, "sam_masks": 56.0})


def test_dense_points_cost_at_most_a_mask_per_image() -> None:
    # density 0.1 % at 128 px: about 16 pixels per image, 16 * 2.4 = 38.4 s < 239.7 s: priced per click
    assert row_cost(labels(points=16 * 704, point_images=704)) == pytest.approx(16 * 704 * 2.4)
    # density 1 %: about 164 pixels per image, 393.6 s > 239.7 s: priced as a mask per image
    assert row_cost(labels(points=164 * 704, point_images=704)) == pytest.approx(704 * 239.7)
    # every pixel (density 100) costs what the masks cost
    assert row_cost(labels(points=16384 * 704, point_images=704)) == pytest.approx(row_cost(labels(masks=704)))


def test_overrides_from_options_and_file(tmp_path: Path) -> None:
    model = cost_model(options=["box=35", "click=3", "mask=79.2"])
    assert (model.box, model.point, model.mask, model.tag) == (35.0, 3.0, 79.2, 1.0)
    assert row_cost(labels(masks=8, boxes=329), model) == pytest.approx(8 * 79.2 + 329 * 35)
    (tmp_path / "costs.yaml").write_text("box: 35\ntag: 20\n")
    (tmp_path / "costs.json").write_text(json.dumps({"sam_mask": 30}))
    from_yaml = cost_model(tmp_path / "costs.yaml", ["tag=37"])  # options win over the file
    assert (from_yaml.box, from_yaml.tag) == (35.0, 37.0)
    assert cost_model(tmp_path / "costs.json").sam_mask == 30.0
    assert DEFAULT_COSTS.box == 7.0  # the defaults are untouched
    assert parse_cost_options(None) == {}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["box"], "KIND=SECONDS"),
        (["scribble=3"], "unknown annotation cost 'scribble'"),
        (["box=-1"], ">= 0"),
        (["box=fast"], "number of seconds"),
    ],
)
def test_bad_overrides_are_one_line_errors(options: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        cost_model(options=options)


def test_bad_cost_files_and_label_kinds(tmp_path: Path) -> None:
    with pytest.raises(DataFileError, match="cost file not found"):
        cost_model(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(DataFileError, match="must map label kinds"):
        cost_model(tmp_path / "list.yaml")
    with pytest.raises(ConfigError, match="no annotation cost for label kind"):
        row_cost({"scribbles": 3})


def brute_force_front(costs: list[float], scores: list[float]) -> list[bool]:
    def dominates(j: int, i: int) -> bool:
        return costs[j] <= costs[i] and scores[j] >= scores[i] and (costs[j] < costs[i] or scores[j] > scores[i])

    return [not any(dominates(j, i) for j in range(len(costs)) if j != i) for i in range(len(costs))]


def test_pareto_front_matches_brute_force() -> None:
    rng = random.Random(0)
    for _ in range(300):
        n = rng.randint(1, 25)
        # few distinct values, so ties in cost and in score are common
        costs = [float(rng.randint(0, 8)) for _ in range(n)]
        scores = [rng.randint(0, 8) / 8 for _ in range(n)]
        assert pareto_front(costs, scores) == brute_force_front(costs, scores)
    assert pareto_front([], []) == []


def _png_variance(path: Path) -> float:
    image = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert image is not None and image.size > 0
    return float(np.var(image))


def test_compare_on_the_published_results(tmp_path: Path) -> None:
    for path in PUBLISHED:
        assert path.is_file(), path
    result = CliRunner().invoke(app, ["compare", *map(str, PUBLISHED), "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    # the Kvasir files predate label accounting: left out, with the reason
    assert "kvasir-point-density: 5 'final' row(s) without 'labels'" in result.output
    assert "kvasir-boxes: 3 'final' row(s) without 'labels'" in result.output
    assert _png_variance(tmp_path / "compare.png") > 100
    table = (tmp_path / "compare.md").read_text()
    assert "| # | experiment | setting | labels | cost (h) | dice | n | front |" in table
    data = json.loads((tmp_path / "compare.json").read_text())
    rows = {r["number"]: r for r in data["rows"]}
    assert len(rows) == 11  # the final rows of the coverage sweep
    costs = [r["cost_seconds"] for r in data["rows"]]
    means = [r["metric"]["mean"] for r in data["rows"]]
    assert [r["front"] for r in data["rows"]] == brute_force_front(costs, means)
    front = [rows[k] for k in data["front"]]
    # cheapest: 2.5 % trimaps alone (8 masks); dearest: every trimap (300 masks), the best Dice
    assert front[0]["labels"]["masks"] == 8 and front[0]["cost_seconds"] == pytest.approx(8 * 239.7)
    assert front[-1]["labels"]["masks"] == 300 and front[-1]["metric"]["mean"] == max(means)
    for row in front:
        assert f"- #{row['number']} pets-coverage-sweep" in table
        assert f"| {row['number']} | pets-coverage-sweep |" in table and "**yes**" in table
    sam = [r for r in data["rows"] if r["setting"]["sources"] == ["masks", "sam"] and r["setting"]["coverage"] == 2.5]
    assert sam[0]["cost_breakdown_seconds"] == pytest.approx({"masks": 8 * 239.7, "boxes": 331 * 7.0})  # box time


def _with_labels(source: Path, out: Path, labels_of) -> Path:
    """A copy of a published results file whose rows carry the labels ``labels_of(setting)`` gives."""
    data = json.loads(source.read_text())
    for row in data["rows"]:
        row["labels"] = labels_of(row["setting"])
    out.write_text(json.dumps(data))
    return out


def test_compare_draws_every_experiment_once_they_have_labels(tmp_path: Path) -> None:
    """The Kvasir rows, given labels as a re-run would record them, are priced and drawn with the pets rows."""
    density = _with_labels(
        PUBLISHED[1],
        tmp_path / "kvasir-point-density.json",
        lambda s: labels(points=round(128 * 128 * s["density"] / 100) * 792, point_images=792),
    )
    boxes = _with_labels(
        PUBLISHED[2],
        tmp_path / "kvasir-boxes.json",
        lambda s: labels(masks=792) if s["method"] == "full" else labels(boxes=800),
    )
    comparison = compare([PUBLISHED[0], density, boxes], tmp_path / "out", metric="iou")
    assert {r.experiment for r in comparison.rows} == {"pets-coverage-sweep", "kvasir-point-density", "kvasir-boxes"}
    assert not comparison.skipped
    assert len(comparison.rows) == 11 + 5 + 3
    kvasir_sam = next(r for r in comparison.rows if r.experiment == "kvasir-boxes" and r.setting["method"] == "sam")
    assert kvasir_sam.seconds == pytest.approx(800 * 7.0)
    dense = [r for r in comparison.rows if r.experiment == "kvasir-point-density" and r.setting["density"] >= 1]
    assert all(r.seconds == pytest.approx(792 * 239.7) for r in dense)  # capped at a mask per image
    assert _png_variance(tmp_path / "out" / "compare.png") > 100
    assert [r.front for r in comparison.rows] == brute_force_front(
        [r.seconds for r in comparison.rows], [r.mean for r in comparison.rows]
    )
    # one front per experiment: each experiment's own rows, each matching brute force on them alone
    per_experiment = compare([PUBLISHED[0], density, boxes], tmp_path / "per", metric="iou", front_by="experiment")
    for name in ("pets-coverage-sweep", "kvasir-point-density", "kvasir-boxes"):
        mine = [r for r in per_experiment.rows if r.experiment == name]
        assert any(r.front for r in mine)
        assert [r.front for r in mine] == brute_force_front([r.seconds for r in mine], [r.mean for r in mine])
    assert json.loads((tmp_path / "per" / "compare.json").read_text())["front_by"] == "experiment"
    with pytest.raises(ConfigError, match="front by must be one of"):
        collect([PUBLISHED[0]], front_by="dataset")


def test_compare_accepts_a_run_folder_and_a_pseudo_stage(tmp_path: Path) -> None:
    folder = tmp_path / "pets-coverage-sweep"
    folder.mkdir()
    (folder / "results.json").write_text(PUBLISHED[0].read_text())
    comparison = collect([folder], stage="pseudo")
    assert comparison.rows and all(r.setting["stage"] == "pseudo" for r in comparison.rows)


def test_compare_errors_are_one_line(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(app, ["compare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert missing.exit_code != 0 and isinstance(missing.exception, DataFileError)
    assert "results file not found" in str(missing.exception)
    with pytest.raises(ConfigError, match="metric 'hd95' is in no 'final' row"):
        collect([PUBLISHED[0]], metric="hd95")
    with pytest.raises(ConfigError, match="no 'final' row has both 'labels' and metric 'dice'"):
        collect([PUBLISHED[2]])
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(DataFileError, match="not a JSON results file"):
        collect([tmp_path / "bad.json"])
    with pytest.raises(ConfigError, match="unknown annotation cost"):
        runner.invoke(app, ["compare", str(PUBLISHED[0]), "--cost", "scribble=2"], catch_exceptions=False)
    assert CostModel().with_overrides({}) == DEFAULT_COSTS
