"""What a training method is given (:class:`RunContext`) and returns (:class:`StageResult`), and the registry of
methods (``method:`` in configs), filled by ``@register_method``.

Methods import this module, never :mod:`weakseg.pipeline`, which runs them: no import cycle between the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weakseg.budget import BudgetSelection
from weakseg.config import RunConfig
from weakseg.data import build_dataset
from weakseg.data.base import SegmentationDataset
from weakseg.data.prepared import PreparedSplit
from weakseg.labels import LabelLedger
from weakseg.registry import Registry


@dataclass
class StageResult:
    """Metrics for one stage of a run (``pseudo``: pseudo-labels on train, ``final``: segmenter on test),
    plus any settings the method adds to the row (``round`` for self-training, say)."""

    stage: str
    metrics: dict[str, Any]
    setting: dict[str, Any] = field(default_factory=dict)


@dataclass
class RunContext:
    """Everything a method needs: config, device, prepared splits, the budget selection, directories.

    ``train`` and ``val`` are the seeded partition of ``train_full`` (the whole training split).
    ``shared_dir`` holds artefacts that several runs reuse (classifiers, CAMs, pseudo-labels), keyed by
    what produced them. ``ledger`` records every label the method uses (and refuses one outside the budget).
    """

    config: RunConfig
    out_dir: Path
    device: torch.device
    train_full: PreparedSplit
    train: PreparedSplit
    val: PreparedSplit | None
    test: PreparedSplit
    selection: BudgetSelection
    shared_dir: Path
    data_root: Path = Path(".")
    progress: bool = True
    ledger: LabelLedger = field(default_factory=lambda: LabelLedger({}))


Method = Callable[[RunContext], list[StageResult]]
PrimaryLabels = Callable[[RunConfig], str]
"""config -> the kind of label (``masks``, ``boxes``, ``points``, ``tags``) a method's validation split uses."""
METHODS: Registry[Method] = Registry("method")
"""Training recipes by name, each with its ``primary`` labels (metadata)."""


def register_method(
    name: str, primary: PrimaryLabels, description: str = "", tiles: bool = False
) -> Callable[[Method], Method]:
    """Decorator: make a training recipe available as ``method: <name>`` in configs; ``primary`` names the kind
    of label it validates on, so that the validation images come out of the budget's images with that label;
    ``description`` (one line) is what ``weakseg list methods`` prints beside the name; ``tiles``: whether it
    trains on the tiles of a tiled split (``dataset.tile``), i.e. uses nothing but the split's rows."""
    extra = {"description": description} if description else {}
    return METHODS.register(name, primary=primary, tiles=tiles, **extra)


def list_methods(pattern: str = "*") -> list[str]:
    """Registered method names matching a shell-style pattern, sorted (the built-in ones are registered when
    :mod:`weakseg.methods` is imported, which importing this module does)."""
    return METHODS.names(pattern)


def load_dataset(config: RunConfig, data_root: str | Path, split: str) -> SegmentationDataset:
    """The configured dataset's ``split`` (downloaded first when the config asks and it is missing)."""
    ds = config.dataset
    options = {**ds.options, "download": True} if ds.download else ds.options
    dataset = build_dataset(ds.name, Path(data_root) / ds.root, split, **options)
    dataset.on_error = ds.on_error  # 'skip': a bad item is left out and listed (run directory: skipped.json)
    return dataset
