"""What identifies a result: one digest helper, file fingerprints and the versions of the label-producing code.

Runs, caches and stored artefacts are named by :func:`digest` of everything that produced them, so a changed
input gives a new name and nothing stale is ever served.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

CODE_VERSIONS = {
    "budget": 2,  # 2: the budget is chosen over the whole training split; validation comes out of it
    "sources": 3,  # 3: a dev-only run (method.dev, no segmenter) scores the development subset only
    "cams": 1,
    "refine": 1,
    "generators": 1,
    "train": 1,
    "evaluate": 1,
}
"""Version of each step that produces labels, models or scores; bump one when its output changes, so that every
run and artefact it made is made again."""


NEUTRAL_SETTINGS: dict[str, Any] = {
    "train.cpu_amp": False,
    "train.workers": 0,
    "method.rounds": 3,
    "method.regenerate": "cam",
    "method.restart": False,
    "method.tag_weight": 1.0,
    "dataset.on_error": "raise",
    "budget.source": "simulated",
    "dataset.tile": None,
    "dataset.tile_overlap": 0,
    "train.eval_overlap": 64,
}
"""Config settings added after runs were recorded, at the value that reproduces what those runs did: a run key
leaves a setting out while it has this value, so adding a setting does not re-run every finished run. A new
setting goes here with its backward-compatible value; changing the value of an existing one still re-runs."""


def without_neutral(config: dict[str, Any]) -> dict[str, Any]:
    """A config dump (``{"train": {...}, ...}``) less the settings at their :data:`NEUTRAL_SETTINGS` value."""
    out = {section: dict(values) if isinstance(values, dict) else values for section, values in config.items()}
    for path, value in NEUTRAL_SETTINGS.items():
        section, _, key = path.partition(".")
        if isinstance(out.get(section), dict) and key in out[section] and out[section][key] == value:
            del out[section][key]
    return out


def digest(ident: Any, length: int = 16) -> str:
    """A short stable hash of a JSON-able description (dict keys sorted; other objects by ``str``)."""
    text = json.dumps(ident, sort_keys=True, default=str)
    return hashlib.sha1(text.encode()).hexdigest()[:length]


def bytes_digest(data: bytes | Iterable[bytes], length: int = 16) -> str:
    """A short hash of raw bytes (pixels, weights): SHA-1 of ``data``, or of its chunks one after the other, as
    :func:`digest` hashes a description."""
    sha = hashlib.sha1()
    for chunk in [data] if isinstance(data, bytes | bytearray | memoryview) else data:
        sha.update(chunk)
    return sha.hexdigest()[:length]


_CONTENT: dict[tuple[str, int, int, int, int], str] = {}


def file_digest(path: str | Path) -> str:
    """BLAKE2b of a file's bytes, remembered for the process per (path, inode, size, modification and status-change
    times): any write changes the status-change time, also when a tool restores the size and modification time."""
    path = Path(path)
    stat = path.stat()
    memo = (str(path.resolve()), stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if memo not in _CONTENT:
        with open(path, "rb") as f:
            _CONTENT[memo] = hashlib.file_digest(f, "blake2b").hexdigest()[:32]
    return _CONTENT[memo]


def files_fingerprint(paths: Iterable[str | Path], root: str | Path | None = None) -> str:
    """A digest of the files' names (relative to ``root`` when given) and contents: it changes when any file is
    edited, replaced, added or removed, and not when the same files are copied afresh (new modification times),
    so runs made from them stay valid on another machine or in another session."""
    entries = []
    for path in sorted(Path(p) for p in paths):
        name = str(path.relative_to(root)) if root is not None else str(path)
        entries.append((name, file_digest(path)))
    return digest(entries, 20)


def tree_fingerprint(root: str | Path) -> str:
    """:func:`files_fingerprint` of every file below ``root`` (hidden files and folders left out)."""
    root = Path(root)
    files = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files += [Path(folder) / n for n in names if not n.startswith(".")]
    return files_fingerprint(files, root)
