"""FullGrad (Srinivas & Fleuret 2019), as pytorch-grad-cam computes it: |input × input-gradient| plus
|bias × bias-gradient| of every Conv2d / BatchNorm2d with a bias, each channel normalised, summed."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weakseg.cams.base import BaseCAM, Targets, scale_maps, upsample

BIAS_LAYER_TYPES = (nn.Conv2d, nn.BatchNorm2d)


def bias_layers(model: nn.Module) -> list[nn.Module]:
    """Modules of exactly type Conv2d or BatchNorm2d that have a bias (pytorch-grad-cam's selection: timm's
    ``BatchNormAct2d`` subclass is left out, its output being after the activation)."""
    return [m for m in model.modules() if type(m) in BIAS_LAYER_TYPES and m.bias is not None]


def effective_bias(layer: nn.Module) -> torch.Tensor:
    """The bias a layer adds: a conv's bias; for BatchNorm in eval, ``bias - mean * weight / sqrt(var + eps)``."""
    if isinstance(layer, nn.BatchNorm2d) and layer.running_mean is not None:
        scale = layer.weight / torch.sqrt(layer.running_var + layer.eps)
        return layer.bias - layer.running_mean * scale
    return layer.bias


class FullGrad(BaseCAM):
    """FullGrad. ``target_layers`` is ignored: all bias layers are used. Needs a full backward pass."""

    supports_fast_path = False
    needs_activations = False
    requires_target_layers = False

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module] | None = None, *, fast: bool = True):
        super().__init__(model, bias_layers(model), fast=fast)

    def _forward(self, x: torch.Tensor, targets: Targets) -> torch.Tensor:
        _, gradients, input_grad = self._forward_backward(x, targets, input_gradient=True)
        size = tuple(x.shape[-2:])
        total = scale_maps((input_grad * x).abs()).sum(dim=1)
        by_size: dict[tuple[int, int], torch.Tensor] = {}
        for layer, grad in zip(self.target_layers, gradients, strict=True):
            bias = effective_bias(layer).detach().float()[None, :, None, None]
            maps = scale_maps((bias * grad.float()).abs()).sum(dim=1)
            # bilinear resizing is linear: summing per resolution before upsampling gives the same result
            key = tuple(maps.shape[-2:])
            by_size[key] = maps if key not in by_size else by_size[key] + maps
        for maps in by_size.values():
            total = total + upsample(maps, size)
        return scale_maps(total)
