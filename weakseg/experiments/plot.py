"""Plots of experiment results: a metric against a numeric row setting, one line per value of another."""

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
    ``references`` ({label: value})."""
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
