"""A keyed artefact store on disk: classifiers, CAMs and pseudo-labels computed once, reused by later runs."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from weakseg.identity import digest
from weakseg.io import atomic_path, write_json


class ArtifactStore:
    """``root/<kind>/<digest>.pt`` plus ``<digest>.json`` describing what produced it (and how long it took).

    Writes are atomic, so an interrupted run leaves either the whole artefact or none.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, kind: str, ident: Any, suffix: str = ".pt") -> Path:
        return self.root / kind / f"{digest(ident)}{suffix}"

    def info(self, kind: str, ident: Any) -> dict[str, Any]:
        """What was recorded beside an artefact (``ident``, ``seconds``, extras), or {}."""
        path = self.path(kind, ident, ".json")
        return json.loads(path.read_text()) if path.is_file() else {}

    def tensor(
        self, kind: str, ident: Any, compute: Callable[[], torch.Tensor], notes: dict[str, Any] | None = None
    ) -> torch.Tensor:
        """Load the tensor stored for ``ident``, or compute, store and return it. ``notes`` (a dict that
        ``compute`` may fill) is recorded beside it; read it back with :meth:`info`."""
        path = self.path(kind, ident)
        if path.is_file():
            try:
                return torch.load(path, weights_only=True)
            except Exception:  # a damaged artefact is recomputed
                path.unlink(missing_ok=True)
        started = time.perf_counter()
        value = compute()
        seconds = time.perf_counter() - started
        with atomic_path(path) as tmp:
            torch.save(value, tmp)
        write_json(self.path(kind, ident, ".json"), {"ident": ident, "seconds": seconds, **(notes or {})})
        return value
