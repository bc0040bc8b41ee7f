"""Supervision sources by name (``method.sources``), filled by ``@register_source``.

A source builder turns the budget into a :class:`~weakseg.sources.target.Target` for a split's images. The
built-in builders (``masks``, ``points``, ``boxes``, ``sam``, ``cam``) need a run's context, and so are defined
and registered with the method that trains from them, :mod:`weakseg.methods.multisource` (imported with
:mod:`weakseg.methods`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from weakseg.registry import Registry

if TYPE_CHECKING:
    from weakseg.data.prepared import PreparedSplit
    from weakseg.methods.base import RunContext
    from weakseg.sources.target import Target

SourceBuilder = Callable[["RunContext", "PreparedSplit", str], "Target"]
"""(context, split, use) -> the source's target for the split's images within the budget, its labels recorded
in the run's ledger as ``use`` (``train``, ``validation`` or ``tuning``)."""

SOURCES: Registry[SourceBuilder] = Registry("supervision source")
"""Source builders by name, each with the kind of budget label it is made from (metadata ``labels``)."""


def register_source(name: str, labels: str) -> Callable[[SourceBuilder], SourceBuilder]:
    """Decorator: make a supervision source available in ``method.sources``; it consumes ``labels`` (``masks``,
    ``points``, ``boxes`` or ``tags``)."""
    return SOURCES.register(name, labels=labels)


def list_sources(pattern: str = "*") -> list[str]:
    """Registered source names matching a shell-style pattern, sorted."""
    return SOURCES.names(pattern)


def source_labels(name: str) -> str:
    """The kind of budget label the source ``name`` is made from."""
    return SOURCES.meta(name)["labels"]
