"""Label accounting: which labels of which images a run consumed, and for what.

A budget gives each kind of label (``masks``, ``boxes``, ``points``, ``tags``) to some images. Every use of a
label — training, validation (checkpoint and learning-rate choice), tuning (choosing a setting on a development
subset) — is recorded in a :class:`LabelLedger`, which refuses a label the budget does not give. ``summary()``
is what ``results.json`` reports: how many labels of each kind the run touched, over how many images, per use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from weakseg.errors import ConfigError

LABEL_KINDS = ("masks", "boxes", "points", "tags")
USES = ("train", "validation", "tuning")


class BudgetExceededError(ConfigError):
    """A run asked for labels its budget does not give."""


@dataclass
class LabelLedger:
    """``allowed[kind]``: the images the budget gives that kind of label to (None: every image).

    ``used[use][kind][image]`` counts the labels used: 1 per mask or per image's tags, the number of boxes, the
    number of labelled pixels (points)."""

    allowed: Mapping[str, set[str] | None]
    used: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def record(self, use: str, kind: str, counts: Mapping[str, int] | Iterable[str]) -> None:
        """Record that ``use`` consumed ``kind`` labels of these images (a mapping image -> count, or names, 1
        each); images with a count of 0 consumed nothing."""
        if use not in USES or kind not in LABEL_KINDS:
            raise ValueError(f"unknown label use '{use}' or kind '{kind}'")
        counts = dict(counts) if isinstance(counts, Mapping) else dict.fromkeys(counts, 1)
        counts = {name: int(n) for name, n in counts.items() if n > 0}
        allowed = self.allowed.get(kind, set())
        if allowed is not None:
            extra = sorted(set(counts) - allowed)
            if extra:
                raise BudgetExceededError(
                    f"{use} would use {kind} of {len(extra)} image(s) the budget does not give them to "
                    f"(e.g. '{extra[0]}'); the budget gives {kind} to {len(allowed)} image(s)"
                )
        book = self.used.setdefault(use, {}).setdefault(kind, {})
        for name, n in counts.items():
            book[name] = max(book.get(name, 0), n)

    def summary(self) -> dict:
        """``{masks, boxes, points, tags}``: labels touched by any use (an image's labels counted once);
        ``images``: how many images each kind touched; ``by_use``: the same counts per use."""

        def count(books: list[dict[str, int]]) -> tuple[int, int]:
            merged: dict[str, int] = {}
            for book in books:
                for name, n in book.items():
                    merged[name] = max(merged.get(name, 0), n)
            return sum(merged.values()), len(merged)

        totals = {k: count([self.used[u].get(k, {}) for u in self.used]) for k in LABEL_KINDS}
        return {
            **{k: totals[k][0] for k in LABEL_KINDS},
            "images": {k: totals[k][1] for k in LABEL_KINDS},
            "by_use": {
                use: {k: count([kinds[k]])[0] for k in LABEL_KINDS if k in kinds} for use, kinds in self.used.items()
            },
        }
