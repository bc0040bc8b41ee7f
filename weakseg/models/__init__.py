"""Segmentation models: ``build_model(arch, encoder, classes)``, ``list_models()``, ``load_model(path)``."""

from weakseg.models import architectures as _architectures  # noqa: F401  (fills the registry)
from weakseg.models.encoders import OFFLINE_ENCODER
from weakseg.models.registry import build_model, checkpoint_meta, list_models, load_model, register_model
from weakseg.models.segmenter import Segmenter

__all__ = [
    "OFFLINE_ENCODER",
    "Segmenter",
    "build_model",
    "checkpoint_meta",
    "list_models",
    "load_model",
    "register_model",
]
