"""Quality against annotation cost across experiments: ``weakseg compare RESULTS...``.

Every row of the chosen stage is priced by the labels it consumed (``weakseg.cost``), drawn as its metric (mean ±
std over seeds) against its cost in hours, and marked when it is on the Pareto front: no other row costs at most
as much and scores at least as well, better in one of the two.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from weakseg.cost import DEFAULT_COSTS, SECONDS_PER_HOUR, CostModel, cost_breakdown
from weakseg.errors import ConfigError, DataFileError
from weakseg.experiments.plot import save_figure
from weakseg.io import write_json, write_text

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
FRONT_BY = ("all", "experiment")
"""``all``: one front over every row; ``experiment``: one front per experiment (scores of different datasets or
test splits are not on one scale)."""


@dataclass
class CostRow:
    """One row of one experiment: its setting, the labels it consumed, their cost and its metric."""

    experiment: str
    results: str
    setting: dict[str, Any]
    labels: dict[str, Any]
    breakdown: dict[str, float]
    mean: float
    std: float
    n: int
    front: bool = False
    number: int = 0

    @property
    def seconds(self) -> float:
        return float(sum(self.breakdown.values()))

    @property
    def hours(self) -> float:
        return self.seconds / SECONDS_PER_HOUR


@dataclass
class Comparison:
    """The priced rows (cheapest first, numbered from 1), the metric and stage, and why rows were left out."""

    rows: list[CostRow]
    metric: str
    stage: str
    model: CostModel
    skipped: list[str] = field(default_factory=list)
    front_by: str = "all"

    @property
    def front(self) -> list[CostRow]:
        return [r for r in self.rows if r.front]


def results_path(path: str | Path) -> Path:
    """A ``results.json``: the path itself, or the one inside a run folder."""
    path = Path(path)
    if path.is_dir():
        path = path / "results.json"
    if not path.is_file():
        raise DataFileError(path, "results file not found")
    return path


def load_results(path: str | Path) -> dict[str, Any]:
    """The ``{"experiment", "rows"}`` of a results file (or of the one in a run folder)."""
    path = results_path(path)
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError):
        raise DataFileError(path, "not a JSON results file") from None
    if not isinstance(data, dict) or not isinstance(data.get("rows"), list):
        raise DataFileError(path, "not a results file (no 'rows' list)")
    data.setdefault("experiment", path.parent.name if path.name == "results.json" else path.stem)
    return data


def pareto_front(costs: list[float], scores: list[float]) -> list[bool]:
    """Whether each point is on the front: no other point has cost <= and score >= with one of them strict."""
    order = sorted(range(len(costs)), key=lambda i: (costs[i], -scores[i]))
    on_front = [False] * len(costs)
    best = -math.inf  # best score among strictly cheaper points
    start = 0
    while start < len(order):
        end = start
        while end < len(order) and costs[order[end]] == costs[order[start]]:
            end += 1
        group = order[start:end]
        top = max(scores[i] for i in group)
        if top > best:
            for i in group:
                on_front[i] = scores[i] == top
        best = max(best, top)
        start = end
    return on_front


def setting_text(setting: dict[str, Any]) -> str:
    """``method=multi coverage=2.5 sources=masks+boxes`` (the stage left out)."""

    def value(v: Any) -> str:
        return "+".join(map(str, v)) if isinstance(v, list) else str(v)

    return " ".join(f"{k}={value(v)}" for k, v in setting.items() if k != "stage") or "–"


def labels_text(labels: dict[str, Any]) -> str:
    """``masks 8 · boxes 329 · points 1600 px`` (kinds with none left out)."""
    units = {"points": " px"}
    parts = [f"{k} {labels[k]}{units.get(k, '')}" for k in ("masks", "boxes", "points", "tags") if labels.get(k)]
    parts += [f"{k} {labels[k]}" for k in ("polygons", "sam_masks") if labels.get(k)]
    return " · ".join(parts) or "none"


def hours_text(hours: float) -> str:
    if hours >= 10:
        return f"{hours:.1f}"
    if hours >= 0.1:
        return f"{hours:.2f}"
    return f"{hours:.3f}"


def collect(
    results: list[str | Path],
    metric: str = "dice",
    stage: str = "final",
    model: CostModel = DEFAULT_COSTS,
    front_by: str = "all",
) -> Comparison:
    """Price every ``stage`` row of each results file and mark the Pareto front (``front_by``: over all rows or per
    experiment); rows without ``labels`` or the metric are left out, each experiment's reason named in
    ``skipped``."""
    if front_by not in FRONT_BY:
        raise ConfigError(f"front by must be one of {', '.join(FRONT_BY)}, not '{front_by}'")
    if not results:
        raise ConfigError("give at least one results.json (or a run folder holding one)")
    rows: list[CostRow] = []
    skipped: list[str] = []
    seen_metrics: set[str] = set()
    for path in results:
        data = load_results(path)
        name = str(data["experiment"])
        staged = [
            r for r in data["rows"] if isinstance(r, dict) and r.get("setting", {}).get("stage", "final") == stage
        ]
        if not staged:
            skipped.append(f"{name}: no '{stage}' rows")
            continue
        no_labels, no_metric = 0, 0
        for row in staged:
            seen_metrics.update(row.get("metrics", {}))
            stat = row.get("metrics", {}).get(metric)
            if not stat or not stat.get("n") or not math.isfinite(stat.get("mean", math.nan)):
                no_metric += 1
                continue
            if not row.get("labels"):
                no_labels += 1
                continue
            rows.append(
                CostRow(
                    experiment=name,
                    results=str(results_path(path)),
                    setting=dict(row["setting"]),
                    labels=row["labels"],
                    breakdown=cost_breakdown(row["labels"], model),
                    mean=float(stat["mean"]),
                    std=float(stat.get("std") or 0.0),
                    n=int(stat["n"]),
                )
            )
        if no_labels:
            skipped.append(
                f"{name}: {no_labels} '{stage}' row(s) without 'labels' left out (results written before label "
                "accounting; run its spec again with `weakseg experiment run` to record them)"
            )
        if no_metric:
            skipped.append(f"{name}: {no_metric} '{stage}' row(s) without metric '{metric}' left out")
    if seen_metrics and metric not in seen_metrics:
        known = ", ".join(sorted(seen_metrics))
        raise ConfigError(f"metric '{metric}' is in no '{stage}' row of the results; metrics there: {known}")
    if not rows:
        raise ConfigError(f"no '{stage}' row has both 'labels' and metric '{metric}': " + "; ".join(skipped))
    rows.sort(key=lambda r: (r.seconds, -r.mean, r.experiment))
    for number, row in enumerate(rows, start=1):
        row.number = number
    groups = [rows] if front_by == "all" else [[r for r in rows if r.experiment == e] for e in _experiments(rows)]
    for group in groups:
        for row, on_front in zip(group, pareto_front([r.seconds for r in group], [r.mean for r in group]), strict=True):
            row.front = on_front
    return Comparison(rows=rows, metric=metric, stage=stage, model=model, skipped=skipped, front_by=front_by)


def _experiments(rows: list[CostRow]) -> list[str]:
    return list(dict.fromkeys(r.experiment for r in rows))


def plot_comparison(comparison: Comparison, out: str | Path) -> Path:
    """The metric (mean ± std over seeds) against annotation hours (log axis), one marker and colour per
    experiment, rows numbered as in the table, the Pareto front circled and joined by a dashed line (one per
    experiment, in its colour, with ``front_by="experiment"``)."""
    rows = comparison.rows
    positive = [r.hours for r in rows if r.hours > 0]
    floor = min(positive) / 2 if positive else 1e-3  # a row that cost nothing sits at the left edge

    def x(row: CostRow) -> float:
        return row.hours if row.hours > 0 else floor

    figure, axes = plt.subplots(figsize=(7.2, 4.6), dpi=120)
    experiments = _experiments(rows)
    for k, name in enumerate(experiments):
        mine = [r for r in rows if r.experiment == name]
        axes.errorbar(
            [x(r) for r in mine],
            [r.mean for r in mine],
            yerr=[r.std for r in mine],
            fmt=MARKERS[k % len(MARKERS)],
            color=f"C{k % 10}",
            capsize=3,
            markersize=6,
            label=name,
        )
    if comparison.front_by == "all":
        fronts = [(comparison.front, "black", "Pareto front")]
    else:
        fronts = [
            (
                [r for r in comparison.front if r.experiment == name],
                f"C{k % 10}",
                "Pareto front per experiment" if k == 0 else None,
            )
            for k, name in enumerate(experiments)
        ]
    for front, colour, label in fronts:
        axes.plot([x(r) for r in front], [r.mean for r in front], "--", color=colour, linewidth=1, label=label)
        axes.scatter([x(r) for r in front], [r.mean for r in front], s=160, facecolors="none", edgecolors=colour)
    for row in rows:
        colour = "black" if row.front else "dimgray"
        axes.annotate(
            f"#{row.number}", (x(row), row.mean), textcoords="offset points", xytext=(6, -12), fontsize=7, color=colour
        )
    axes.set_xscale("log")
    axes.set_xlabel("annotation cost (hours, log scale; docs/cost.md)")
    axes.set_ylabel(f"{comparison.metric} ({comparison.stage}, mean ± std over seeds)")
    axes.set_title("quality against annotation cost")
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=8)
    return save_figure(figure, out)


def markdown(comparison: Comparison) -> str:
    """The table: every row with its labels, cost and metric, whether it is on the front; then the front."""
    metric, stage = comparison.metric, comparison.stage
    prices = ", ".join(f"{k} {v:g} s" for k, v in comparison.model.as_dict().items())
    lines = [
        "# Quality against annotation cost",
        "",
        f"{metric}: '{stage}' rows, mean ± sample std over seeds (n seeds). Cost: hours of annotation for the labels "
        f"each row consumed (training, validation, tuning), priced per label: {prices} (docs/cost.md). Points are "
        "labelled pixels, one click each, at most a full mask per image.",
        "",
        f"| # | experiment | setting | labels | cost (h) | {metric} | n | front |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in comparison.rows:
        cells = [
            str(r.number),
            r.experiment,
            setting_text(r.setting).replace("|", "\\|"),
            labels_text(r.labels),
            hours_text(r.hours),
            f"{r.mean:.3f} ± {r.std:.3f}" if r.n > 1 else f"{r.mean:.3f}",
            str(r.n),
            "**yes**" if r.front else "no",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    among = "row" if comparison.front_by == "all" else "row of the same experiment"
    lines += [
        "",
        f"Pareto front, cheapest first (no other {among} costs at most as much and scores at least as well):",
        "",
    ]
    lines += [
        f"- #{r.number} {r.experiment} {setting_text(r.setting)}: {hours_text(r.hours)} h, {metric} {r.mean:.3f}"
        for r in comparison.front
    ]
    if comparison.skipped:
        lines += ["", "Left out:", ""] + [f"- {s}" for s in comparison.skipped]
    return "\n".join(lines) + "\n"


def to_json(comparison: Comparison) -> dict[str, Any]:
    return {
        "metric": comparison.metric,
        "stage": comparison.stage,
        "front_by": comparison.front_by,
        "cost_model_seconds": comparison.model.as_dict(),
        "rows": [
            {
                "number": r.number,
                "experiment": r.experiment,
                "results": r.results,
                "setting": r.setting,
                "labels": {k: v for k, v in r.labels.items() if k != "by_use"},
                "cost_seconds": r.seconds,
                "cost_hours": r.hours,
                "cost_breakdown_seconds": r.breakdown,
                "metric": {"mean": r.mean, "std": r.std, "n": r.n},
                "front": r.front,
            }
            for r in comparison.rows
        ],
        "front": [r.number for r in comparison.front],
        "skipped": comparison.skipped,
    }


def compare(
    results: list[str | Path],
    out_dir: str | Path,
    metric: str = "dice",
    stage: str = "final",
    model: CostModel = DEFAULT_COSTS,
    front_by: str = "all",
) -> Comparison:
    """Write ``compare.png``, ``compare.md`` and ``compare.json`` to ``out_dir`` for these results files."""
    comparison = collect(results, metric, stage, model, front_by)
    out_dir = Path(out_dir)
    plot_comparison(comparison, out_dir / "compare.png")
    write_text(out_dir / "compare.md", markdown(comparison))
    write_json(out_dir / "compare.json", to_json(comparison))
    return comparison
