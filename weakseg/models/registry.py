"""Models created by name: a registry filled by ``@register_model``, ``list_models('*pattern*')``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weakseg.errors import ConfigError
from weakseg.models.encoders import (
    OFFLINE_ENCODER,
    build_with_weights,
    normalization,
    read_checkpoint,
)
from weakseg.models.segmenter import Segmenter
from weakseg.registry import Registry

Factory = Callable[..., nn.Module]
MODELS: Registry[Factory] = Registry("architecture")


def register_model(name: str) -> Callable[[Factory], Factory]:
    """Decorator: register a factory ``f(encoder_name, encoder_weights, classes, **kw) -> nn.Module``."""
    return MODELS.register(name)


def list_models(pattern: str = "*") -> list[str]:
    """Registered architecture names matching a shell-style pattern, sorted."""
    return MODELS.names(pattern)


def build_model(
    arch: str = "unet",
    encoder: str = OFFLINE_ENCODER,
    classes: int = 2,
    weights: str | None = "imagenet",
    mode: str = "multiclass",
    **kwargs: Any,
) -> Segmenter:
    """Build a segmentation model with a timm encoder (``heads=[...]``: one head per supervision source;
    ``tags=K``: a K-way classification branch on the encoder, a :class:`MultiTaskSegmenter`, with
    ``multilabel=True`` for multi-label tags).

    classes: number of mask classes (2 for foreground/background).
    mode:    ``multiclass`` (``classes`` logits, softmax) or ``binary`` (one logit, sigmoid; needs classes=2).
    weights: ``imagenet`` (bundled offline for EfficientNet-Lite0..2, else from the hub), ``none``, or a path
             to an encoder state dict.
    """
    factory = MODELS.get(arch)
    if mode not in ("binary", "multiclass"):
        raise ConfigError(f"mode must be 'binary' or 'multiclass', not '{mode}'")
    if mode == "binary" and classes != 2:
        raise ConfigError("binary mode predicts one foreground logit: it needs classes=2")
    encoder = encoder.removeprefix("tu-")
    heads, primary = kwargs.pop("heads", None), kwargs.pop("primary", None)
    tags, multilabel = kwargs.pop("tags", None), bool(kwargs.pop("multilabel", False))
    if tags and heads:
        raise ConfigError("a model has either one head per supervision source (heads) or a tag branch (tags)")
    out_channels = 1 if mode == "binary" else classes
    weights = None if weights in (None, "none", "None", "") else weights

    aux = {"aux_params": {"classes": int(tags), "dropout": 0.2, "pooling": "avg"}} if tags else {}

    def make(pretrained: bool) -> nn.Module:  # smp: True = timm's pretrained tag, None = random
        return factory(f"tu-{encoder}", True if pretrained else None, out_channels, **kwargs, **aux)

    net = build_with_weights(make, encoder, weights, part=lambda net: net.encoder.model)
    mean, std = normalization(encoder)
    spec = {"arch": arch, "encoder": encoder, "classes": classes, "mode": mode, **kwargs}
    if tags:
        spec |= {"tags": int(tags), "multilabel": multilabel}
    model = Segmenter(net, mean, std, spec)
    if tags:
        from weakseg.models.multitask import MultiTaskSegmenter

        model = MultiTaskSegmenter(model)
    if heads:  # one head per supervision source on the shared encoder-decoder
        from weakseg.models.multihead import MultiHeadSegmenter

        model = MultiHeadSegmenter(model, list(heads), primary)
    return model


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> Segmenter:
    """Rebuild a model from a weakseg checkpoint (``best.pt`` / ``last.pt``) or exported model file."""
    state = read_checkpoint(path, "model_spec", map_location)
    model = build_model(**state["model_spec"], weights=None)
    model.load_state_dict(state["model"])
    return model


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """What a checkpoint recorded about its inputs (``size``, ``fit``, ``mask_classes``), or {}."""
    path = Path(path)
    if not path.is_file():
        return {}
    state = torch.load(path, map_location="cpu", weights_only=False)
    return state.get("meta", {}) if isinstance(state, dict) else {}
