"""One encoder, two tasks: a segmentation decoder and a tag classification branch (multi-task self-training).

The classification branch is smp's auxiliary head on the deepest encoder features (global average pooling,
dropout, linear). :class:`MultiTaskSegmenter` is a :class:`Segmenter` (``forward`` gives mask logits, so
training, evaluation and prediction code is unchanged); ``forward_both`` gives mask and tag logits from one
encoder pass; ``tag_classifier()`` is a view of the shared weights that the CAM methods take as a classifier.
"""

from __future__ import annotations

import torch
from torch import nn

from weakseg.cams.layers import probe_final_feature_layer
from weakseg.errors import ConfigError
from weakseg.models.segmenter import Segmenter


class MultiTaskSegmenter(Segmenter):
    """A segmenter whose smp network carries a classification head (built with ``aux_params``)."""

    def __init__(self, base: Segmenter):
        if getattr(base.net, "classification_head", None) is None:
            raise ConfigError("a multi-task model needs an smp network built with a classification head")
        super().__init__(base.net, tuple(base.mean.flatten().tolist()), tuple(base.std.flatten().tolist()), base.spec)
        self.num_tags = int(base.spec["tags"])
        self.multilabel = bool(base.spec.get("multilabel", False))

    def forward_both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mask logits (N, C, H, W), tag logits (N, K)) from one pass through the shared encoder."""
        features = self.net.encoder(self.normalize(images))
        masks = self.net.segmentation_head(self.net.decoder(features))
        return masks, self.net.classification_head(features[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.net.encoder(self.normalize(images))
        return self.net.segmentation_head(self.net.decoder(features))

    def tag_classifier(self) -> TagBranch:
        """The encoder and classification branch as a classifier (shared weights, no copy)."""
        return TagBranch(self)


class _AveragePool(nn.Module):
    pool_type = "avg"


class TagBranch(nn.Module):
    """The classification branch of a :class:`MultiTaskSegmenter` with the interface of a timm classifier:
    ``forward_features`` (the deepest encoder feature map), ``forward_head`` (pooling + linear),
    ``get_classifier``, ``global_pool`` and ``target_layers``, so every CAM method explains it as it explains
    a classifier, fast path included."""

    def __init__(self, model: MultiTaskSegmenter):
        super().__init__()
        self.model = model
        self.global_pool = _AveragePool()
        self._layers: list[nn.Module] | None = None

    @property
    def spec(self) -> dict:
        return self.model.spec

    @property
    def num_classes(self) -> int:
        return self.model.num_tags

    @property
    def multilabel(self) -> bool:
        return self.model.multilabel

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.net.encoder(self.model.normalize(images))[-1]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.net.classification_head(features)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(images))

    def get_classifier(self) -> nn.Module:
        return next(m for m in self.model.net.classification_head if isinstance(m, nn.Linear))

    def target_layers(self) -> list[nn.Module]:
        """The encoder module whose output is the deepest feature map (found once by a probe forward)."""
        if self._layers is None:
            layer = probe_final_feature_layer(self)
            if layer is None:
                raise ValueError("cannot find the encoder layer that outputs the deepest features: pass target_layers")
            self._layers = [layer]
        return list(self._layers)
