"""Segmentation architectures from segmentation_models_pytorch, registered by name."""

from __future__ import annotations

from typing import Any

import segmentation_models_pytorch as smp
from torch import nn

from weakseg.models.registry import register_model


@register_model("unet")
def unet(encoder_name: str, encoder_weights: bool | None, classes: int, **kw: Any) -> nn.Module:
    return smp.Unet(encoder_name=encoder_name, encoder_weights=encoder_weights, classes=classes, **kw)


@register_model("deeplabv3")
def deeplabv3(encoder_name: str, encoder_weights: bool | None, classes: int, **kw: Any) -> nn.Module:
    return smp.DeepLabV3(encoder_name=encoder_name, encoder_weights=encoder_weights, classes=classes, **kw)


@register_model("deeplabv3plus")
def deeplabv3plus(encoder_name: str, encoder_weights: bool | None, classes: int, **kw: Any) -> nn.Module:
    return smp.DeepLabV3Plus(encoder_name=encoder_name, encoder_weights=encoder_weights, classes=classes, **kw)


@register_model("fpn")
def fpn(encoder_name: str, encoder_weights: bool | None, classes: int, **kw: Any) -> nn.Module:
    return smp.FPN(encoder_name=encoder_name, encoder_weights=encoder_weights, classes=classes, **kw)
