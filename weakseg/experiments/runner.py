"""Running an experiment spec: rows from the grid, each over the seeds, resumable, with filters.

A (row, seed) run is named by a digest of what produced it: the fully resolved config, the fingerprint of the
dataset files and the versions of weakseg's label-producing code (:func:`run_key`). A changed spec therefore
re-runs exactly the rows it changes, and the results gather only runs that match the current spec; run folders
left by older specs are listed as stale, never reported. A part may choose settings among alternatives
(``choose``) per row and seed on the training split, never on the test split.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from weakseg import distributed
from weakseg.config import SETTING_PATHS, ChoiceSpec, ExperimentSpec, RunConfig, apply_overrides
from weakseg.errors import ConfigError
from weakseg.experiments.records import restore_records, save_records
from weakseg.experiments.results import aggregate, write_results
from weakseg.identity import CODE_VERSIONS, digest, without_neutral
from weakseg.io import remove_temporaries, write_json, write_text
from weakseg.labels import LABEL_KINDS
from weakseg.pipeline import load_dataset, load_splits, run

console = Console(stderr=True)
SHARED = "shared"


@dataclass
class Row:
    """One row of an experiment: the knobs that vary (``setting``), the resolved config, its seeds, and the
    settings it chooses per seed (``choose``)."""

    setting: dict[str, Any]
    config: RunConfig
    seeds: list[int]
    part: str = ""
    choose: ChoiceSpec | None = None
    alternatives: list[dict[str, Any]] = field(default_factory=list)


def _overrides(values: dict[str, Any]) -> list[str]:
    return [f"{k}={json.dumps(v)}" for k, v in values.items()]


def expand_rows(spec: ExperimentSpec) -> list[Row]:
    """One row per combination of each part's grid values; the setting always names the method and holds the
    part's fixed overrides that are row settings (``refine``, ``arch``...). Rows of different parts with the same
    setting but different configs are told apart by a ``part`` setting."""
    base = spec.run_config().model_dump()
    rows = []
    for number, part in enumerate(spec.part_list(), 1):
        fixed = {k: v for k, v in part.set.items() if k in SETTING_PATHS}
        part_base = apply_overrides(base, _overrides(part.set))
        keys = list(part.grid)
        alternatives = []
        if part.choose is not None:
            among = part.choose.among
            alternatives = [dict(zip(among, v, strict=True)) for v in itertools.product(*among.values())]
        for values in itertools.product(*(part.grid[k] for k in keys)) if keys else [()]:
            grid_setting = dict(zip(keys, values, strict=True))
            config = RunConfig.model_validate(apply_overrides(part_base, _overrides(grid_setting)))
            setting = {"method": config.method.name, **fixed, **grid_setting}
            seeds = list(part.seeds if part.seeds is not None else spec.seeds)
            rows.append(Row(setting, config, seeds, part.name or f"part {number}", part.choose, alternatives))
    clashes = [
        row
        for row in rows
        if any(other.setting == row.setting and other.config != row.config for other in rows if other is not row)
    ]
    for row in clashes:
        row.setting.setdefault("part", row.part)
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
    return re.sub(r"[^A-Za-z0-9.\-_]+", "-", text)[:150]


class DataFingerprints:
    """The fingerprint of each dataset split's files, looked up once per experiment."""

    def __init__(self, data_root: str | Path):
        self.data_root = data_root
        self._known: dict[str, str] = {}

    def __call__(self, config: RunConfig) -> dict[str, str]:
        ds = config.dataset
        out = {}
        for split in (ds.train_split, ds.test_split):
            key = json.dumps([ds.name, ds.root, split, ds.options], sort_keys=True, default=str)
            if key not in self._known:
                self._known[key] = load_dataset(config, self.data_root, split).fingerprint()
            out[split] = self._known[key]
        return out


def run_key(config: RunConfig, data: dict[str, str]) -> dict[str, Any]:
    """Everything that produces a run's results: the resolved config (less the progress bar and settings at their
    neutral value), the dataset files' fingerprints and the label-producing code's versions."""
    dump = without_neutral(config.model_dump(exclude={"train": {"progress"}}))
    key = {"config": dump, "data": data, "code": CODE_VERSIONS}
    return json.loads(json.dumps(key, default=str))  # as run.json stores it (tuples become lists)


@dataclass
class SeedRun:
    """One (config, seed) run in the experiment's folder, named by its key."""

    config: RunConfig
    key: dict[str, Any]
    folder: Path

    @property
    def done(self) -> bool:
        record = self.folder / "run.json"
        return (
            (self.folder / "metrics.json").is_file()
            and record.is_file()
            and json.loads(record.read_text())
            == {
                "key": self.key,
                "digest": digest(self.key),
            }
        )

    def results(self) -> list[dict[str, Any]]:
        return json.loads((self.folder / "metrics.json").read_text())

    def labels(self) -> dict[str, Any]:
        path = self.folder / "labels.json"
        return json.loads(path.read_text()) if path.is_file() else {}


class Planner:
    """Names the runs of an experiment: ``out/<row>-<digest of the row's key>/seed<k>``."""

    def __init__(self, out_dir: Path, data_root: str | Path):
        self.out_dir = out_dir
        self.fingerprints = DataFingerprints(data_root)

    def seed_run(self, setting: dict[str, Any], config: RunConfig, seed: int) -> SeedRun:
        seeded = config.model_copy(update={"seed": seed})
        key = run_key(seeded, self.fingerprints(config))
        row_key = run_key(config.model_copy(update={"seed": 0}), key["data"])
        folder = self.out_dir / f"{row_id(setting)}-{digest(row_key, 10)}" / f"seed{seed}"
        return SeedRun(seeded, key, folder)

    def alternative(self, row: Row, values: dict[str, Any], final: bool) -> tuple[dict[str, Any], RunConfig]:
        """The setting and config of one alternative of a choosing row; a ``dev`` choice scores the weak labels
        only (no segmenter), and the chosen alternative is then run with the segmenter (``final``)."""
        data = apply_overrides(row.config.model_dump(), _overrides(values))
        scored_only = row.choose is not None and row.choose.stage == "dev" and not final
        if row.choose is not None and row.choose.stage == "dev":
            data["method"]["dev"] = True
            data["method"]["segmenter"] = row.config.method.segmenter and not scored_only
        setting = {**row.setting, **values, **({"alternative": "scored"} if scored_only else {})}
        return setting, RunConfig.model_validate(data)


def execute(seed_run: SeedRun, data_root: str | Path, splits_cache: dict, progress: bool, shared: Path) -> None:
    """Run one (config, seed) unless its folder already holds the finished run of the same key. Under torchrun every
    process takes the same decision (after a barrier) and trains the run together; rank 0 writes its record."""
    distributed.barrier()
    if seed_run.done:
        return
    config = seed_run.config
    cache_key = config.dataset.model_dump_json()
    if cache_key not in splits_cache:
        splits_cache[cache_key] = load_splits(config, data_root, progress)
    if distributed.is_main():
        (seed_run.folder / "metrics.json").unlink(missing_ok=True)  # finished only with metrics of its key
        write_json(seed_run.folder / "run.json", {"key": seed_run.key, "digest": digest(seed_run.key)})
    started = time.perf_counter()
    results = run(config, seed_run.folder, data_root, progress, splits=splits_cache[cache_key], shared_dir=shared)
    console.print(
        f"  done in {time.perf_counter() - started:.0f} s: "
        + ", ".join(f"{r.stage} iou {r.metrics.get('iou', float('nan')):.3f}" for r in results)
    )


def choice_score(seed_run: SeedRun, choose: ChoiceSpec) -> float:
    """An alternative's score: its ``dev`` stage metric, or its kept checkpoint's ``val_<metric>``."""
    for result in seed_run.results():
        if choose.stage == "dev" and result["stage"] == "dev":
            return float(result["metrics"][choose.metric])
        if choose.stage == "val" and result["stage"] == "final":
            value = result["metrics"].get(f"val_{choose.metric}")
            if value is None:
                raise ConfigError(f"choose.by '{choose.by}': the run has no validation split (dataset.val_fraction)")
            return float(value)
    raise ConfigError(
        f"choose.by '{choose.by}': the run produced no '{choose.stage}' score (does the method have one?)"
    )


def resolve(row: Row, seed: int, planner: Planner, execute_run) -> tuple[SeedRun, dict[str, Any] | None, list]:
    """The run a row reports for a seed; for a choosing row, each alternative is run and scored first, and the
    choice (what it saw and how each alternative scored) is returned beside the chosen run."""
    if row.choose is None:
        return planner.seed_run(row.setting, row.config, seed), None, []
    scored = []
    for values in row.alternatives:  # a validation choice scores the full runs, so the chosen one is among them
        setting, config = planner.alternative(row, values, final=row.choose.stage == "val")
        alt = planner.seed_run(setting, config, seed)
        execute_run(alt)
        scored.append((values, choice_score(alt, row.choose), alt))
    best_values, _, best_alt = max(scored, key=lambda item: item[1])  # the first of equal scores
    setting, config = planner.alternative(row, best_values, final=True)
    chosen = planner.seed_run(setting, config, seed)
    choice = {
        "seed": seed,
        "chosen": best_values,
        "by": row.choose.by,
        "scores": [{**values, row.choose.by: score} for values, score, _ in scored],
        "saw": best_alt.labels().get("by_use", {}).get("tuning" if row.choose.stage == "dev" else "validation", {}),
    }
    return chosen, choice, [alt for _, _, alt in scored]


def run_experiment(
    spec: ExperimentSpec,
    data_root: str | Path,
    out_dir: str | Path,
    only: list[str] | None = None,
    publish_dir: Path | None = None,
    progress: bool = True,
    records_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every selected row for every seed; return and write the aggregated rows.

    Finished runs are kept in ``out_dir/<row>-<digest>/seed<k>/`` (``run.json`` holds the key) and skipped on a
    re-run with the same key; the results files gather every current row's finished runs in ``out_dir``, also
    those run earlier with other filters, and list the run folders that no current row names. With
    ``records_dir``, the records of runs finished elsewhere (``records_dir/<experiment>``) are taken first, and
    publishing writes the records of every finished current run there.

    Under torchrun every process runs the same rows in the same order, training each together; rank 0 writes the
    files and prints.
    """
    distributed.setup()
    main = distributed.is_main()
    if not main:
        console.quiet = True
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    records = records_dir / spec.name if records_dir is not None else None
    if main and records is not None and (restored := restore_records(records, out_dir)):
        console.print(f"{restored} finished run(s) taken from the records in {records}")
    for folder in (out_dir, out_dir / SHARED):  # writes an earlier run was killed in (a run's own: run() removes)
        remove_temporaries(folder, recursive=False)
    if main:
        write_text(out_dir / "spec.json", json.dumps(spec.model_dump(), indent=2))
    distributed.barrier()  # the restored records are there for every process
    filters = parse_only(only or [])
    grid_keys = {k for part in spec.part_list() for k in part.grid}
    unknown = [k for k in filters if k not in ("stage", "part") and k not in SETTING_PATHS and k not in grid_keys]
    if unknown:
        raise ConfigError(f"--only key(s) {unknown} are not row settings ({', '.join(SETTING_PATHS)}, stage, part)")
    row_filters = {k: v for k, v in filters.items() if k != "stage"}
    rows = expand_rows(spec)
    selected = [row for row in rows if matches({"part": row.part, **row.setting}, row_filters)]
    if not selected:
        raise ConfigError(f"no row matches --only {only}")
    planner = Planner(out_dir, data_root)
    splits_cache: dict[str, Any] = {}

    def execute_run(seed_run: SeedRun) -> None:
        execute(seed_run, data_root, splits_cache, progress, out_dir / SHARED)

    for number, row in enumerate(selected, 1):
        for seed in row.seeds:
            console.print(f"[bold]row {number}/{len(selected)}[/] {row.setting} seed {seed}")
            chosen, _, _ = resolve(row, seed, planner, execute_run)
            execute_run(chosen)
    return collect(spec, out_dir, rows, filters.get("stage"), publish_dir, planner, records)


def _labels(runs: list[SeedRun]) -> dict[str, Any]:
    """The labels a row consumed: per kind the most any seed's runs touched (alternatives included)."""
    summaries = [r.labels() for r in runs]
    out: dict[str, Any] = {k: max((s.get(k, 0) for s in summaries), default=0) for k in LABEL_KINDS}
    out["images"] = {k: max((s.get("images", {}).get(k, 0) for s in summaries), default=0) for k in LABEL_KINDS}
    uses = sorted({u for s in summaries for u in s.get("by_use", {})})
    out["by_use"] = {
        u: {k: max(s.get("by_use", {}).get(u, {}).get(k, 0) for s in summaries) for k in LABEL_KINDS} for u in uses
    }
    return out


def collect(
    spec: ExperimentSpec,
    out_dir: Path,
    rows: list[Row],
    stages: list[str] | None,
    publish_dir: Path | None,
    planner: Planner,
    records: Path | None = None,
) -> list[dict[str, Any]]:
    """Aggregate the finished seeds of every current row (and stage) into the results files, with the labels
    each row consumed and its choices; runs of older specs are counted and named, not reported. Publishing also
    writes the records of the finished runs to ``records``."""
    table, current, reported = [], set(), []
    for row in rows:
        per_stage: dict[str, list[dict[str, Any]]] = {}
        extras: dict[str, dict[str, Any]] = {}
        finished, choices, touched = [], [], []

        def finished_only(seed_run: SeedRun) -> None:
            if not seed_run.done:
                raise LookupError

        for seed in row.seeds:
            try:
                seed_run, choice, alternatives = resolve(row, seed, planner, finished_only)
            except LookupError:
                seed_run, choice, alternatives = None, None, []
            for alt in alternatives:
                current.add(alt.folder.parent)
            if seed_run is None:
                continue
            current.add(seed_run.folder.parent)
            if not seed_run.done:
                continue
            finished.append(seed)
            touched += [seed_run, *alternatives]
            reported += [seed_run.folder, *(alt.folder for alt in alternatives)]
            if choice:
                choices.append(choice)
            for result in seed_run.results():
                ident = json.dumps({"stage": result["stage"], **result.get("setting", {})}, sort_keys=True)
                per_stage.setdefault(ident, []).append(result["metrics"])
                extras[ident] = {**result.get("setting", {}), "stage": result["stage"]}
        setting = dict(row.setting)
        if row.choose is not None:
            for key in row.choose.among:  # the chosen value (per seed when the seeds chose differently)
                values = [c["chosen"][key] for c in choices]
                setting[key] = values[0] if len(set(map(str, values))) == 1 else values
        for ident, metrics in per_stage.items():
            if stages and extras[ident]["stage"] not in stages:
                continue
            entry = {
                "setting": {**setting, **extras[ident]},
                "metrics": aggregate(metrics),
                "seeds": finished,
                "labels": _labels(touched),
            }
            if choices:
                entry["choices"] = choices
            table.append(entry)
    stale = sorted(p.name for p in out_dir.iterdir() if p.is_dir() and p.name != SHARED and p not in current)
    if stale:
        console.print(
            f"[yellow]{len(stale)} run folder(s) in {out_dir} match no row of the current spec and are not "
            f"reported[/] (older specs or code): {', '.join(stale[:5])}{' ...' if len(stale) > 5 else ''}"
        )
    if distributed.is_main():
        write_results(out_dir, spec.name, table, publish_dir, stale=stale)
        if publish_dir is not None and records is not None:
            save_records(reported, out_dir, records, stale)
    distributed.barrier()  # the results files are there for every process
    return table
