"""Aggregating per-seed metrics into ``results.json`` and ``results.md``."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.io import write_json, write_text

TABLE_METRICS = ("iou", "dice", "dice_per_image", "accuracy", "precision", "recall", "miou")


def summarize(values: list[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite values."""
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not finite:
        return {"mean": float("nan"), "std": float("nan"), "n": 0}
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return {"mean": float(np.mean(finite)), "std": std, "n": len(finite)}


def aggregate(per_seed: list[dict[str, Any]]) -> dict[str, dict[str, float | int]]:
    """{metric: {mean, std, n}} over seeds, for every scalar metric."""
    keys = [k for k, v in per_seed[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {k: summarize([m.get(k, float("nan")) for m in per_seed]) for k in keys}


def _cell(stat: dict[str, float | int] | None) -> str:
    if not stat or not stat["n"]:
        return "–"
    if stat["n"] == 1:  # one seed: no spread to report
        return f"{stat['mean']:.3f}"
    return f"{stat['mean']:.3f} ± {stat['std']:.3f}"


def _escape(value: Any) -> str:
    """A setting value as a Markdown table cell (``|`` in refinement pipelines escaped)."""
    return str(value).replace("|", "\\|")


def labels_text(labels: dict[str, Any] | None) -> str:
    """``masks 8 · boxes 300`` for the labels a row consumed (kinds with none left out)."""
    if not labels:
        return "–"
    parts = [f"{k} {labels[k]}" for k in ("masks", "boxes", "points", "tags") if labels.get(k)]
    return " · ".join(parts) or "none"


def markdown_table(name: str, rows: list[dict[str, Any]], stale: list[str] | None = None) -> str:
    """The results as a Markdown table: one column per setting key, mean ± std per metric, labels consumed."""
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row["setting"] if k not in keys]
    metrics = [m for m in TABLE_METRICS if any(m in r["metrics"] for r in rows)]
    lines = [
        f"# {name}",
        "",
        "| " + " | ".join([*keys, *metrics, "n", "labels"]) + " |",
        "|" + "---|" * (len(keys) + len(metrics) + 2),
    ]
    for row in rows:
        setting = [_escape(row["setting"].get(k, "")) for k in keys]
        cells = [_cell(row["metrics"].get(m)) for m in metrics]
        n = max((s["n"] for s in row["metrics"].values()), default=0)
        lines.append("| " + " | ".join([*setting, *cells, str(n), labels_text(row.get("labels"))]) + " |")
    note = (
        "mean ± sample standard deviation over seeds (the mean alone for one seed); n = number of seeds; labels = "
        "what a run consumed for training, validation and tuning (masks and tags: images; boxes: boxes; points: "
        "labelled pixels), the most of any seed."
    )
    if stale:
        note += f"\n\n{len(stale)} run folder(s) from older specs or code were present and are not reported."
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_results(
    out_dir: Path,
    name: str,
    rows: list[dict[str, Any]],
    publish_dir: Path | None = None,
    stale: list[str] | None = None,
) -> None:
    """Write ``results.json`` and ``results.md`` (naming the ``stale`` run folders that were left out); copy
    both to ``publish_dir/<name>.{json,md}`` if given."""
    write_json(out_dir / "results.json", {"experiment": name, "rows": rows, "stale_runs": stale or []})
    write_text(out_dir / "results.md", markdown_table(name, rows, stale))
    if publish_dir is not None:
        publish_dir.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(out_dir / "results.json", publish_dir / f"{name}.json")
        shutil.copyfile(out_dir / "results.md", publish_dir / f"{name}.md")
