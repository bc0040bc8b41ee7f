"""weakseg: from cheap labels (tags, boxes, points, a few masks) to pixel masks, measured honestly.

The Python API matches the CLI (:mod:`weakseg.api`): :func:`run` (``weakseg train``), :func:`run_experiment`,
:func:`label`, :func:`export_labels`, :func:`export_onnx` (``weakseg export``), :func:`write_report`; and the
pieces by name: :func:`build_model`, :func:`build_dataset`, :func:`build_cam` and the CAM classes
(``with weakseg.GradCAM(model, layers) as cam``), :func:`build_mask_generator`, :func:`parse_pipeline`,
:class:`OnnxSegmenter` (an exported model). Pieces are imported on first use, so ``import weakseg`` does not
load torch.
"""

from __future__ import annotations

import importlib
from typing import Any

from weakseg.api import export_labels, export_onnx, label, run, run_experiment, write_report

__version__ = "0.1.0"

_LAZY = {
    "build_model": "weakseg.models",
    "list_models": "weakseg.models",
    "load_model": "weakseg.models",
    "OnnxSegmenter": "weakseg.models.onnx",
    "build_dataset": "weakseg.data",
    "list_datasets": "weakseg.data",
    "build_cam": "weakseg.cams",
    "list_cams": "weakseg.cams",
    "CAM": "weakseg.cams",
    "GradCAM": "weakseg.cams",
    "GradCAMPlusPlus": "weakseg.cams",
    "HiResCAM": "weakseg.cams",
    "XGradCAM": "weakseg.cams",
    "LayerCAM": "weakseg.cams",
    "FullGrad": "weakseg.cams",
    "build_mask_generator": "weakseg.sources.sam",
    "list_mask_generators": "weakseg.sources.sam",
    "parse_pipeline": "weakseg.refine",
    "Budget": "weakseg.budget",
}

__all__ = ["__version__", "export_labels", "export_onnx", "label", "run", "run_experiment", "write_report", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'weakseg' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
