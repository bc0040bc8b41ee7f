"""Datasets (Oxford-IIIT Pet, Kvasir-SEG, any folder), one sample schema, fitting and caching."""

from weakseg.data import folder as _folder  # noqa: F401  (registration)
from weakseg.data import kvasir as _kvasir  # noqa: F401
from weakseg.data import oxford_pet as _oxford_pet  # noqa: F401
from weakseg.data.base import SegmentationDataset
from weakseg.data.registry import build_dataset, list_datasets, register_dataset
from weakseg.data.sample import IGNORE_INDEX, Sample

__all__ = [
    "IGNORE_INDEX",
    "Sample",
    "SegmentationDataset",
    "build_dataset",
    "list_datasets",
    "register_dataset",
]
