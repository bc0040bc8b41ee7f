"""Base class shared by all datasets: a list of names, a loader per name, class metadata."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from weakseg.data.sample import Sample
from weakseg.errors import ConfigError, DataFileError
from weakseg.identity import tree_fingerprint

ON_ERROR = ("raise", "skip")
"""What a bad data file does: ``raise`` stops with one line naming it; ``skip`` leaves the item out and lists it."""


class SegmentationDataset(ABC):
    """A split of a dataset: ``len(ds)``, ``ds[i] -> Sample``, ``ds.names``.

    Subclasses set ``names`` (one per sample, in a fixed order), ``mask_classes`` (names of the mask's class
    indices, background first) and ``tag_classes`` (names of the image-level classes).

    ``on_error`` (:data:`ON_ERROR`) is the policy of :meth:`try_load` for an item whose files are bad: ``raise``
    (the default) or ``skip``, which records ``{split, name, file, reason}`` in ``skipped`` and gives None.
    """

    key: str = ""
    names: list[str]
    mask_classes: list[str] = ["background", "foreground"]
    tag_classes: list[str] = []

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split

    @property
    def on_error(self) -> str:
        return self.__dict__.get("_on_error", "raise")

    @on_error.setter
    def on_error(self, policy: str) -> None:
        if policy not in ON_ERROR:
            raise ConfigError(f"on_error must be one of {', '.join(ON_ERROR)}, not '{policy}'")
        if policy == "raise":  # the default leaves no trace, so that cache keys stay as they were
            self.__dict__.pop("_on_error", None)
        else:
            self._on_error = policy  # an instance attribute: part of the prepared-split cache key

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Items :meth:`try_load` skipped, in the order they were met: ``{split, name, file, reason}``."""
        return self.__dict__.setdefault("_skipped", [])

    def try_load(self, name: str) -> Sample | None:
        """:meth:`load`; with ``on_error='skip'`` a :class:`DataFileError` is recorded in ``skipped`` and gives
        None instead of stopping."""
        try:
            return self.load(name)
        except DataFileError as err:
            if self.on_error != "skip":
                raise
            self.skipped.append({"split": self.split, "name": name, "file": str(err.path), "reason": err.problem})
            return None

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> Sample:
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(index)
        return self.load(self.names[index])

    @abstractmethod
    def load(self, name: str) -> Sample:
        """Load one sample by name."""

    def fingerprint(self) -> str:
        """Changes whenever a file the dataset may read changes (names and contents of every file under
        ``root``): what keys the prepared-split cache and the runs made from this data."""
        return tree_fingerprint(self.root)

    @property
    def num_mask_classes(self) -> int:
        return len(self.mask_classes)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root='{self.root}', split='{self.split}', n={len(self)})"
