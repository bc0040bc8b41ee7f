"""Run records: the small files of an experiment's finished runs (key, metrics, labels consumed, training log),
kept beside the published results so that a fresh checkout, another machine or a later session reports those
runs without training them again, and adds the seeds it runs itself.

A record is copied only into the run folder of its own name (``<row>-<digest>/seed<k>``, named by the run's
key), and a folder counts as finished only when its ``run.json`` key equals the current one, so a record of an
older spec or older code is never reported: it shows up as a stale folder, and the next publish drops it.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path

RECORD_FILES = ("run.json", "metrics.json", "labels.json", "log.csv")


def _record_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.glob("*/seed*") if p.is_dir()) if root.is_dir() else []


def _copy(source: Path, target: Path) -> None:
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORD_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)


def restore_records(records: Path, out_dir: Path) -> int:
    """Copy each record into its run folder under ``out_dir`` unless that folder holds a finished run already;
    returns how many were copied."""
    copied = 0
    for record in _record_folders(records):
        target = out_dir / record.relative_to(records)
        if not (target / "metrics.json").is_file():
            _copy(record, target)
            copied += 1
    return copied


def save_records(folders: Iterable[Path], out_dir: Path, records: Path, stale: Iterable[str]) -> None:
    """Record these finished run folders (under ``out_dir``) and drop the records of the ``stale`` row folders
    (those no row of the current spec names); records of other seeds of current rows stay."""
    for folder in folders:
        _copy(folder, records / folder.relative_to(out_dir))
    for name in stale:
        if (records / name).is_dir():
            shutil.rmtree(records / name)
