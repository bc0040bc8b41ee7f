"""Plots of experiment results: a metric against a numeric row setting (one line per value of another), per
self-training round, and per row as bars; :func:`result_figures` writes those that fit an experiment next to its
``results.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from weakseg.errors import ConfigError
from weakseg.io import atomic_path


def _label(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def plot_results(
    results: str | Path | dict[str, Any],
    x: str,
    y: str = "dice",
    series: str | None = None,
    out: str | Path = "plot.png",
    stage: str = "final",
    references: dict[str, float] | None = None,
) -> Path:
    """Plot ``y`` (mean ± std over seeds) against the numeric setting ``x`` for the rows of ``stage``, one line per
    value of ``series``; rows without ``x`` (a reference, say) are drawn as horizontal dashed lines, as are
    ``references`` ({label: value}). The x axis is logarithmic when its values span a decade or more."""
    data = json.loads(Path(results).read_text()) if not isinstance(results, dict) else results
    rows = [r for r in data["rows"] if r["setting"].get("stage", stage) == stage and y in r["metrics"]]
    if not rows:
        raise ConfigError(f"no '{stage}' rows with metric '{y}' in the results")
    lines: dict[str, list[tuple[float, float, float]]] = {}
    flat: dict[str, float] = dict(references or {})
    for row in rows:
        setting, stat = row["setting"], row["metrics"][y]
        name = _label(setting.get(series, "")) if series else y
        if x in setting and isinstance(setting[x], (int, float)):
            lines.setdefault(name, []).append((float(setting[x]), stat["mean"], stat["std"]))
        else:
            flat[f"{name} ({_label(setting.get('method', ''))})"] = stat["mean"]
    if not lines:
        raise ConfigError(f"no row has a numeric setting '{x}'")
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for name, points in lines.items():
        points.sort()
        xs, means, stds = zip(*points, strict=True)
        axes.errorbar(xs, means, yerr=stds, marker="o", capsize=3, label=name)
    for k, (name, value) in enumerate(flat.items()):
        axes.axhline(value, linestyle="--", color=f"C{(len(lines) + k) % 10}", label=f"{name}: {value:.3f}")
    values = [p[0] for points in lines.values() for p in points]
    if min(values) > 0 and max(values) >= 10 * min(values):  # coverage, density: spread over decades
        axes.set_xscale("log")
    axes.set_xlabel(x)
    axes.set_ylabel(f"{y} ({stage}, mean ± std over seeds)")
    axes.set_title(data.get("experiment", ""))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return save_figure(figure, out)


def save_figure(figure: plt.Figure, out: str | Path) -> Path:
    """Lay out, write atomically (the format from the suffix, PNG by default) and close a matplotlib figure."""
    figure.tight_layout()
    out = Path(out)
    with atomic_path(out) as tmp:
        figure.savefig(tmp, format=out.suffix.lstrip(".") or "png")
    plt.close(figure)
    return out


def _stage(row: dict[str, Any]) -> str:
    return row["setting"].get("stage", "final")


def _varying(rows: list[dict[str, Any]], skip: tuple[str, ...] = ("stage",)) -> list[str]:
    """The row settings that take more than one value over ``rows`` (in order of first appearance)."""
    keys = dict.fromkeys(k for row in rows for k in row["setting"] if k not in skip)
    return [k for k in keys if len({json.dumps(row["setting"].get(k), sort_keys=True) for row in rows}) > 1]


def _row_label(setting: dict[str, Any], keys: list[str]) -> str:
    return ", ".join(f"{k}={_label(setting[k])}" for k in keys if k in setting) or "all"


def headline_metric(rows: list[dict[str, Any]]) -> str | None:
    """The metric the figures show: Dice, else mIoU, else IoU, whichever the final rows carry."""
    final = [r for r in rows if _stage(r) == "final"]
    return next((m for m in ("dice", "miou", "iou") if any(m in r["metrics"] for r in final)), None)


def rounds_figure(data: dict[str, Any], y: str) -> plt.Figure:
    """``y`` (mean ± std over seeds) per self-training ``round``: one colour per value of the other settings,
    the segmenter (``final``, solid) and the round's pseudo-labels (``pseudo``, dashed)."""
    rows = [r for r in data["rows"] if "round" in r["setting"] and y in r["metrics"]]
    if not rows:
        raise ConfigError(f"no row has a 'round' setting and metric '{y}'")
    others = _varying(rows, skip=("stage", "round"))
    groups: dict[str, dict[str, list[tuple[float, float, float]]]] = {}
    for row in rows:
        stat = row["metrics"][y]
        line = groups.setdefault(_row_label(row["setting"], others), {})
        line.setdefault(_stage(row), []).append((float(row["setting"]["round"]), stat["mean"], stat["std"]))
    figure, axes = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for k, (name, stages) in enumerate(groups.items()):
        for stage, points in sorted(stages.items()):
            xs, means, stds = zip(*sorted(points), strict=True)
            style = "-" if stage == "final" else "--"
            axes.errorbar(
                xs,
                means,
                yerr=stds,
                marker="o",
                capsize=3,
                linestyle=style,
                color=f"C{k % 10}",
                label=f"{name} ({stage})",
            )
    axes.set_xlabel("round")
    axes.set_xticks(sorted({float(r["setting"]["round"]) for r in rows}))
    axes.set_ylabel(f"{y} (mean ± std over seeds)")
    axes.set_title(f"{data.get('experiment', '')}: per self-training round")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=7)
    return figure


def rows_figure(data: dict[str, Any], y: str, stage: str = "final") -> plt.Figure:
    """``y`` (mean ± std over seeds) of every row of ``stage`` as horizontal bars, labelled by the settings
    that differ between rows."""
    rows = [r for r in data["rows"] if _stage(r) == stage and y in r["metrics"]]
    if not rows:
        raise ConfigError(f"no '{stage}' row with metric '{y}'")
    keys = _varying(rows)
    labels = [_row_label(r["setting"], keys) for r in rows]
    means = [r["metrics"][y]["mean"] for r in rows]
    stds = [r["metrics"][y]["std"] for r in rows]
    figure, axes = plt.subplots(figsize=(7.2, 1.2 + 0.32 * len(rows)), dpi=120)
    positions = list(range(len(rows)))[::-1]  # the first row on top, as in the tables
    axes.barh(positions, means, xerr=stds, capsize=3, color="C0")
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set_xlabel(f"{y} ({stage}, mean ± std over seeds)")
    axes.set_xlim(0, max(1.0, max(m + s for m, s in zip(means, stds, strict=True))))
    axes.set_title(data.get("experiment", ""))
    axes.grid(alpha=0.3, axis="x")
    return figure


def result_figures(results: str | Path | dict[str, Any], out_dir: str | Path) -> list[Path]:
    """Write the figures that fit an experiment's results into ``out_dir`` and return their paths: the headline
    metric against each numeric setting that varies (``plot-<setting>.png``), per self-training round
    (``plot-rounds.png``), and per row (``plot-rows.png``)."""
    data = json.loads(Path(results).read_text()) if not isinstance(results, dict) else results
    out_dir = Path(out_dir)
    y = headline_metric(data["rows"])
    if y is None:
        return []
    final = [r for r in data["rows"] if _stage(r) == "final" and y in r["metrics"]]
    varying = _varying(final)
    written = []
    for x in varying:
        values = [r["setting"][x] for r in final if x in r["setting"]]
        if x == "round" or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            continue
        if len(set(values)) < 2:
            continue
        series = next((k for k in varying if k not in (x, "round", "part")), None)
        written.append(plot_results(data, x, y, series, out_dir / f"plot-{x}.png"))
    if any("round" in r["setting"] for r in data["rows"]):
        written.append(save_figure(rounds_figure(data, y), out_dir / "plot-rounds.png"))
    if len(final) > 1:
        written.append(save_figure(rows_figure(data, y), out_dir / "plot-rows.png"))
    return written
