"""One run: data -> budget -> method (supervision sources, training) -> evaluation, in a run directory."""

from __future__ import annotations

from pathlib import Path

from weakseg import distributed
from weakseg.budget import Budget, choose_subset, select, select_from_files
from weakseg.config import RunConfig
from weakseg.data.prepared import PreparedSplit, prepare
from weakseg.errors import ConfigError
from weakseg.io import remove_temporaries, write_json
from weakseg.methods.base import (
    METHODS,
    Method,
    PrimaryLabels,
    RunContext,
    StageResult,
    list_methods,
    load_dataset,
    register_method,
)
from weakseg.runtime import configure_threads, pick_device

__all__ = [
    "BUDGET_SETTINGS",
    "METHODS",
    "Method",
    "PrimaryLabels",
    "RunContext",
    "StageResult",
    "holdout",
    "list_methods",
    "load_dataset",
    "load_splits",
    "register_method",
    "run",
]


def load_splits(config: RunConfig, data_root: str | Path, progress: bool = True) -> tuple[PreparedSplit, PreparedSplit]:
    """The prepared training split and the test split (the latter with native-resolution ground truth). With
    ``dataset.tile`` both are cut into tiles at native resolution; the test split's tiles reassemble each image
    for scoring by sliding windows."""
    ds = config.dataset
    train = load_dataset(config, data_root, ds.train_split)
    test = load_dataset(config, data_root, ds.test_split)
    tiles = {"tile": ds.tile, "tile_overlap": ds.tile_overlap} if ds.tile is not None else {}
    return (
        prepare(train, ds.size, ds.fit, progress=progress, **tiles),
        prepare(test, ds.size, ds.fit, keep_native=True, progress=progress, **({"tile": ds.tile} if tiles else {})),
    )


BUDGET_SETTINGS = {"masks": "budget.coverage", "boxes": "budget.boxes", "points": "budget.density or budget.clicks"}


def holdout(
    split: PreparedSplit, fraction: float, seed: int, pool: list[str] | None = None, kind: str = "masks"
) -> tuple[PreparedSplit, PreparedSplit | None]:
    """Split off a seeded validation ``fraction`` of ``pool`` (the training images the budget gives the method's
    primary ``kind`` of label to; default every image), so that validation spends labels of the budget only.

    Of a tiled split, whole images are held out (a ``fraction`` of the images that have tiles in ``pool``, with
    those tiles), so that no image has tiles on both sides."""
    if fraction <= 0:
        return split, None
    pool = list(split.names) if pool is None else pool
    if not pool:
        setting = BUDGET_SETTINGS.get(kind, "the budget")
        raise ConfigError(
            f"validation needs {kind} and the budget gives none: set {setting}, or dataset.val_fraction: 0"
        )
    image_of = dict(zip(split.names, split.image_of, strict=True))
    held_out = set(choose_subset(sorted({image_of[n] for n in pool}), fraction * 100, seed, "validation"))
    val_names = {n for n in pool if image_of[n] in held_out}
    if len(pool) - len(val_names) < 1:
        raise ConfigError(
            f"validation needs {kind} the budget does not have: it gives {kind} to {len(pool)} training image(s), "
            f"and holding out {fraction:g} of them leaves none to train on (set dataset.val_fraction: 0, or a "
            "larger budget)"
        )
    train_idx = [i for i, n in enumerate(split.names) if n not in val_names]
    val_idx = [i for i, n in enumerate(split.names) if n in val_names]
    return split.subset(train_idx), split.subset(val_idx)


def run(
    config: RunConfig,
    out_dir: str | Path,
    data_root: str | Path = ".",
    progress: bool = True,
    splits: tuple[PreparedSplit, PreparedSplit] | None = None,
    shared_dir: str | Path | None = None,
) -> list[StageResult]:
    """Run one configuration with one seed; writes config, budget, checkpoints and metrics to ``out_dir``
    (reusable artefacts to ``shared_dir``, by default ``out_dir/shared``). Under torchrun every process runs it
    alike (training is shared, :func:`weakseg.train.fit`); rank 0 writes the run's files, and all return together."""
    distributed.setup()
    main = distributed.is_main()
    method = METHODS.get(config.method.name)
    primary = METHODS.meta(config.method.name)["primary"]
    if config.dataset.tile is not None and not METHODS.meta(config.method.name).get("tiles"):
        tiled = [name for name in list_methods() if METHODS.meta(name).get("tiles")]
        raise ConfigError(
            f"method '{config.method.name}' does not train on tiles (dataset.tile); methods that do: {tiled}"
        )
    configure_threads()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out_dir)  # writes an earlier run was killed in
    if main:
        write_json(out_dir / "config.json", config.model_dump())
    train_full, test = splits or load_splits(config, data_root, progress)
    if config.dataset.on_error == "skip" and main:  # the items left out of the training and test splits
        skipped = [*train_full.skipped, *(s for s in test.skipped if s not in train_full.skipped)]
        write_json(out_dir / "skipped.json", skipped)
    b = config.budget
    budget = Budget(b.coverage, b.boxes, b.density, b.point_mode, config.seed, b.clicks, b.source == "files")
    # the budget covers validation and tuning too
    selection = select_from_files(budget, train_full) if budget.from_files else select(budget, train_full.names)
    kind = primary(config)
    pool = selection.images_with(kind, train_full.names)
    train, val = holdout(train_full, config.dataset.val_fraction, config.seed, pool, kind)
    if main:
        selection.save(out_dir / "budget.json", validation=val.names if val is not None else [])
    context = RunContext(
        config=config,
        out_dir=out_dir,
        device=pick_device(config.train.device),
        train_full=train_full,
        train=train,
        val=val,
        test=test,
        selection=selection,
        shared_dir=Path(shared_dir) if shared_dir is not None else out_dir / "shared",
        data_root=Path(data_root),
        progress=progress,
        ledger=selection.ledger(),
    )
    results = method(context)
    if main:
        write_json(out_dir / "labels.json", context.ledger.summary())
        write_json(out_dir / "metrics.json", [r.__dict__ for r in results])  # last: its presence marks the run done
    distributed.barrier()  # every process sees the finished run
    return results
