"""Image classifiers for tags (the source of class activation maps): a timm backbone with normalisation inside."""

from __future__ import annotations

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
from weakseg.models.segmenter import Normalized


class Classifier(Normalized):
    """A timm classifier taking RGB in [0, 1]. ``forward_features`` / ``forward_head`` are the timm model's,
    so CAM methods take their fast head-only gradient path; ``spec`` rebuilds the model from a checkpoint."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], spec: dict[str, Any]):
        super().__init__(mean, std)
        self.net = net
        self.spec = dict(spec)

    @property
    def num_classes(self) -> int:
        return int(self.spec["classes"])

    @property
    def multilabel(self) -> bool:
        return bool(self.spec.get("multilabel", False))

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalize(images))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.net.forward_head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return self.net.get_classifier()

    @property
    def global_pool(self) -> nn.Module | None:
        return getattr(self.net, "global_pool", None)

    def target_layers(self) -> list[nn.Module]:
        """The last feature block ("layer4"-style), the default layer for CAMs."""
        from weakseg.cams.layers import default_target_layers

        return default_target_layers(self.net)


def build_classifier(
    encoder: str = OFFLINE_ENCODER,
    classes: int = 2,
    weights: str | None = "imagenet",
    multilabel: bool = False,
    drop_rate: float = 0.2,
) -> Classifier:
    """A timm classifier with a fresh ``classes``-way head. ``weights``: ``imagenet`` (bundled offline for
    EfficientNet-Lite0..2, from the hub otherwise), ``none``, or a path to a backbone state dict."""
    import timm

    if classes < 1:
        raise ConfigError("a classifier needs at least one class")
    weights = None if weights in (None, "none", "None", "") else weights

    def make(pretrained: bool) -> nn.Module:
        return timm.create_model(encoder, pretrained=pretrained, num_classes=classes, drop_rate=drop_rate)

    net = build_with_weights(make, encoder, weights, skip="classifier.")
    head = net.get_classifier()
    if isinstance(head, nn.Linear):  # timm's EfficientNet head init (range 1/sqrt(classes)) is far too wide
        nn.init.normal_(head.weight, std=0.01)  # for a few classes: start near uniform predictions
        nn.init.zeros_(head.bias)
    mean, std = normalization(encoder)
    spec = {"encoder": encoder, "classes": classes, "multilabel": multilabel, "drop_rate": drop_rate}
    return Classifier(net, mean, std, spec)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """Rebuild a classifier from a checkpoint written by :func:`weakseg.classify.train_classifier`."""
    state = read_checkpoint(path, "classifier_spec", map_location)
    model = build_classifier(**state["classifier_spec"], weights=None)
    model.load_state_dict(state["model"])
    return model
