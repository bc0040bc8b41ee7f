"""Class activation maps for timm classifiers, in the spirit of pytorch-grad-cam but batched on the device.

    with GradCAM(model, target_layers) as cam:
        maps = cam(images, targets)  # (N, H, W) in [0, 1], on the model's device

Gradient methods on the final feature layer of a timm model skip the backbone backward pass (see
:mod:`weakseg.cams.base`).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from weakseg.cams.base import BaseCAM, fuse_maps, resolve_targets, scale_maps, upsample
from weakseg.cams.cam import CAM
from weakseg.cams.fullgrad import FullGrad
from weakseg.cams.grad_cam import GradCAM
from weakseg.cams.grad_cam_plusplus import GradCAMPlusPlus
from weakseg.cams.hirescam import HiResCAM
from weakseg.cams.layer_cam import LayerCAM
from weakseg.cams.layers import default_target_layers
from weakseg.cams.xgrad_cam import XGradCAM
from weakseg.registry import Registry


def _cam_key(name: str) -> str:
    """Case-insensitive; ``-``/``_`` ignored, ``gradcampp`` / ``gradcamplusplus`` = ``gradcam++``."""
    return name.strip().lower().replace("-", "").replace("_", "").replace("plusplus", "++").replace("pp", "++")


CAM_METHODS: Registry[type[BaseCAM]] = Registry("CAM method", normalize=_cam_key)
"""The CAM methods by name, in this order (the simplest first)."""
for _name, _cls in [
    ("cam", CAM),
    ("gradcam", GradCAM),
    ("gradcam++", GradCAMPlusPlus),
    ("hirescam", HiResCAM),
    ("xgradcam", XGradCAM),
    ("layercam", LayerCAM),
    ("fullgrad", FullGrad),
]:
    CAM_METHODS.add(_name, _cls)


def list_cams(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`build_cam` matching a shell-style pattern, in :data:`CAM_METHODS` order."""
    return CAM_METHODS.names(pattern, sort=False)


def build_cam(name: str, model: nn.Module, target_layers: Sequence[nn.Module] | None = None, **kwargs) -> BaseCAM:
    """Create a CAM method by name (case-insensitive; ``-``/``_`` ignored, ``gradcampp`` = ``gradcam++``)."""
    return CAM_METHODS.get(name)(model, target_layers, **kwargs)


__all__ = [
    "CAM",
    "CAM_METHODS",
    "BaseCAM",
    "FullGrad",
    "GradCAM",
    "GradCAMPlusPlus",
    "HiResCAM",
    "LayerCAM",
    "XGradCAM",
    "build_cam",
    "default_target_layers",
    "fuse_maps",
    "list_cams",
    "resolve_targets",
    "scale_maps",
    "upsample",
]
