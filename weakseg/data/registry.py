"""Datasets created by name, filled by the ``@register_dataset`` decorator."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from weakseg.data.base import SegmentationDataset
from weakseg.registry import Registry

DATASETS: Registry[type[SegmentationDataset]] = Registry("dataset")
T = TypeVar("T", bound=type[SegmentationDataset])


def register_dataset(name: str) -> Callable[[T], T]:
    """Class decorator: make a dataset available to ``build_dataset(name, ...)`` (and set its ``key``)."""

    def wrap(cls: T) -> T:
        DATASETS.add(name, cls)
        cls.key = name
        return cls

    return wrap


def list_datasets(pattern: str = "*") -> list[str]:
    """Registered dataset names matching a shell-style pattern, sorted."""
    return DATASETS.names(pattern)


def build_dataset(name: str, root: str | Path, split: str, **options: Any) -> SegmentationDataset:
    """Create a dataset split by registered name (``oxford_pet``, ``kvasir``, ``folder``)."""
    return DATASETS.get(name)(root, split=split, **options)
