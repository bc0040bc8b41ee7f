"""Running an experiment spec: rows from the grid, each over the seeds, resumable, with filters."""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console

from weakseg.config import SETTING_PATHS, ExperimentSpec, RunConfig, apply_overrides
from weakseg.errors import ConfigError
from weakseg.experiments.results import aggregate, write_results
from weakseg.pipeline import load_splits, run

console = Console(stderr=True)


@dataclass
class Row:
    """One row of an experiment: the knobs that vary (``setting``), the resolved config, its seeds."""

    setting: dict[str, Any]
    config: RunConfig
    seeds: list[int]


def expand_rows(spec: ExperimentSpec) -> list[Row]:
    """One row per combination of each part's grid values; the setting always names the method and holds the
    part's fixed overrides that are row settings (``refine``, ``arch``...)."""
    base = spec.run_config().model_dump()
    rows = []
    for part in spec.part_list():
        fixed = {k: v for k, v in part.set.items() if k in SETTING_PATHS}
        part_base = apply_overrides(base, [f"{k}={json.dumps(v)}" for k, v in part.set.items()])
        keys = list(part.grid)
        for values in itertools.product(*(part.grid[k] for k in keys)) if keys else [()]:
            grid_setting = dict(zip(keys, values, strict=True))
            data = apply_overrides(part_base, [f"{k}={json.dumps(v)}" for k, v in grid_setting.items()])
            config = RunConfig.model_validate(data)
            setting = {"method": config.method.name, **fixed, **grid_setting}
            rows.append(Row(setting, config, list(part.seeds if part.seeds is not None else spec.seeds)))
    return rows


def matches(setting: dict[str, Any], only: dict[str, list[str]]) -> bool:
    """Whether a row's setting matches every ``--only`` key (alternatives within a key)."""
    return all(key in setting and _text(setting[key]) in values for key, values in only.items())


def parse_only(items: list[str]) -> dict[str, list[str]]:
    only: dict[str, list[str]] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--only takes KEY=VALUE, not '{item}'")
        value = value.strip()
        if value.startswith("[") and value.endswith("]"):  # a list as YAML ([masks, sam]) or as in results (masks,sam)
            value = ",".join(part.strip() for part in value[1:-1].split(","))
        only.setdefault(key.strip(), []).append(value)
    return only


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value) if not isinstance(value, list) else ",".join(map(str, value))


def row_id(setting: dict[str, Any]) -> str:
    text = "_".join(f"{k}-{_text(v)}" for k, v in setting.items())
    return re.sub(r"[^A-Za-z0-9.\-_]+", "-", text)


def run_experiment(
    spec: ExperimentSpec,
    data_root: str | Path,
    out_dir: str | Path,
    only: list[str] | None = None,
    publish_dir: Path | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Run (or resume) every selected row for every seed; return and write the aggregated rows.

    Finished (row, seed) runs are kept in ``out_dir/<row>/seed<k>/metrics.json`` and skipped on a re-run;
    the results files gather every finished row in ``out_dir``, also those run earlier with other filters.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "spec.json").write_text(json.dumps(spec.model_dump(), indent=2))
    filters = parse_only(only or [])
    grid_keys = {k for part in spec.part_list() for k in part.grid}
    unknown = [k for k in filters if k != "stage" and k not in SETTING_PATHS and k not in grid_keys]
    if unknown:
        raise ConfigError(f"--only key(s) {unknown} are not row settings ({', '.join(SETTING_PATHS)}, stage)")
    row_filters = {k: v for k, v in filters.items() if k != "stage"}
    rows = expand_rows(spec)
    selected = [row for row in rows if matches(row.setting, row_filters)]
    if not selected:
        raise ConfigError(f"no row matches --only {only}")
    splits_cache: dict[str, Any] = {}
    for number, row in enumerate(selected, 1):
        setting, config = row.setting, row.config
        for seed in row.seeds:
            run_dir = out_dir / row_id(setting) / f"seed{seed}"
            if (run_dir / "metrics.json").is_file():
                continue
            console.print(f"[bold]row {number}/{len(selected)}[/] {setting} seed {seed}")
            key = config.dataset.model_dump_json()
            if key not in splits_cache:
                splits_cache[key] = load_splits(config, data_root, progress)
            started = time.perf_counter()
            seeded = config.model_copy(update={"seed": seed})
            results = run(seeded, run_dir, data_root, progress, splits=splits_cache[key], shared_dir=out_dir / "shared")
            console.print(
                f"  done in {time.perf_counter() - started:.0f} s: "
                + ", ".join(f"{r.stage} iou {r.metrics.get('iou', float('nan')):.3f}" for r in results)
            )
    return collect(spec, out_dir, rows, filters.get("stage"), publish_dir)


def collect(
    spec: ExperimentSpec,
    out_dir: Path,
    rows: list[Row],
    stages: list[str] | None,
    publish_dir: Path | None,
) -> list[dict[str, Any]]:
    """Aggregate the finished seeds of every row (and stage) into the results files."""
    table = []
    for row in rows:
        setting = row.setting
        per_stage: dict[str, list[dict[str, Any]]] = {}
        extras: dict[str, dict[str, Any]] = {}
        for seed in row.seeds:
            path = out_dir / row_id(setting) / f"seed{seed}" / "metrics.json"
            if not path.is_file():
                continue
            for result in json.loads(path.read_text()):
                ident = json.dumps({"stage": result["stage"], **result.get("setting", {})}, sort_keys=True)
                per_stage.setdefault(ident, []).append(result["metrics"])
                extras[ident] = {**result.get("setting", {}), "stage": result["stage"]}
        for ident, metrics in per_stage.items():
            if stages and extras[ident]["stage"] not in stages:
                continue
            table.append({"setting": {**setting, **extras[ident]}, "metrics": aggregate(metrics)})
    write_results(out_dir, spec.name, table, publish_dir)
    return table
