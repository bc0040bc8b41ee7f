"""Datasets created by name, filled by the ``@register_dataset`` decorator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from weakseg.data.base import SegmentationDataset
from weakseg.errors import ConfigError

_DATASETS: dict[str, type[SegmentationDataset]] = {}
T = TypeVar("T", bound=type[SegmentationDataset])


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: make a dataset available to ``build_dataset(name, ...)``."""

    def wrap(cls: T) -> T:
        cls.key = name
        _DATASETS[name] = cls
        return cls

    return wrap


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(name: str, root: str | Path, split: str, **options: Any) -> SegmentationDataset:
    """Create a dataset split by registered name (``oxford_pet``, ``kvasir``, ``folder``)."""
    if name not in _DATASETS:
        raise ConfigError(f"unknown dataset '{name}'; known: {', '.join(list_datasets())}")
    return _DATASETS[name](root, split=split, **options)
