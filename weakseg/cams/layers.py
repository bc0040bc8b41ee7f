"""Default target layers: the last feature block before global pooling (what ``forward_features`` returns)."""

from __future__ import annotations

import torch
from torch import nn


def default_target_layers(model: nn.Module) -> list[nn.Module]:
    """The "layer4-style" final feature layer of a timm classifier, as a one-element list.

    ResNet-like (``layer4``): ``layer4[-1]``; EfficientNet (``conv_head`` + ``bn2``): ``bn2``; any other model
    with ``forward_features``: the outermost module whose output is exactly the ``forward_features`` output
    (found with one small probe forward in eval mode). Pass ``target_layers`` explicitly to override.
    """
    if callable(getattr(model, "target_layers", None)):  # wrappers such as weakseg's Classifier know theirs
        return list(model.target_layers())
    layer4 = getattr(model, "layer4", None)
    if isinstance(layer4, nn.Sequential) and len(layer4) > 0:
        return [layer4[-1]]
    if isinstance(layer4, nn.Module):
        return [layer4]
    if isinstance(getattr(model, "bn2", None), nn.Module) and isinstance(getattr(model, "conv_head", None), nn.Module):
        return [model.bn2]
    layer = probe_final_feature_layer(model)
    if layer is None:
        raise ValueError(f"cannot guess a target layer for {type(model).__name__}: pass target_layers")
    return [layer]


def probe_final_feature_layer(model: nn.Module) -> nn.Module | None:
    """The outermost submodule whose output is the tensor ``forward_features`` returns (not modified after)."""
    if not callable(getattr(model, "forward_features", None)):
        return None
    seen: list[tuple[str, torch.Tensor, int]] = []
    modules = [(name, m) for name, m in model.named_modules() if name]
    handles = [
        m.register_forward_hook(
            lambda mod, inp, out, name=name: (
                seen.append((name, out, out._version)) if isinstance(out, torch.Tensor) else None
            )
        )
        for name, m in modules
    ]
    modes = {m: m.training for m in model.modules()}
    cfg = getattr(model, "pretrained_cfg", None) or {}
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    param = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, channels, height, width, device=param.device))
    finally:
        for handle in handles:
            handle.remove()
        for m, training in modes.items():
            m.training = training
    names = [name for name, out, version in seen if out is feats and version == feats._version]
    if not names:
        return None
    best = min(names, key=lambda n: (n.count("."), names.index(n)))
    return dict(modules)[best]
