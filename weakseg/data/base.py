"""Base class shared by all datasets: a list of names, a loader per name, class metadata."""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

from weakseg.data.sample import Sample
from weakseg.identity import tree_fingerprint


class SegmentationDataset(ABC):
    """A split of a dataset: ``len(ds)``, ``ds[i] -> Sample``, ``ds.names``.

    Subclasses set ``names`` (one per sample, in a fixed order), ``mask_classes`` (names of the mask's class
    indices, background first) and ``tag_classes`` (names of the image-level classes).
    """

    key: str = ""
    names: list[str]
    mask_classes: list[str] = ["background", "foreground"]
    tag_classes: list[str] = []

    def __init__(self, root: str | Path, split: str):
        self.root = Path(root)
        self.split = split

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
