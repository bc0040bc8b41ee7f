"""CAM (Zhou et al. 2016): classifier weights of the target class × the final feature map. No gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from weakseg.cams.base import BaseCAM, Targets, fuse_maps, has_timm_head


class CAM(BaseCAM):
    """CAM for timm classifiers with a global-average-pool + linear head.

    The map is ``ReLU(sum_c W[target, c] * F_c)`` with ``F = model.forward_features(x)``; the target layers
    must output exactly that feature map (the default does). For such a head it equals Grad-CAM after
    normalisation (Grad-CAM's weights are ``W[target] / (h * w)``).
    """

    supports_fast_path = False

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module] | None = None, *, fast: bool = True):
        if not has_timm_head(model) or not callable(getattr(model, "get_classifier", None)):
            raise ValueError("CAM needs a timm classifier (forward_features, forward_head, get_classifier)")
        classifier = model.get_classifier()
        if not isinstance(classifier, nn.Linear):
            raise ValueError(f"CAM needs a linear classifier, got {type(classifier).__name__}")
        pool_type = getattr(getattr(model, "global_pool", None), "pool_type", "avg")
        if pool_type != "avg":
            raise ValueError(f"CAM needs global average pooling, got '{pool_type}'")
        super().__init__(model, target_layers, fast=fast)
        self.classifier = classifier

    def _forward(self, x: torch.Tensor, targets: Targets) -> torch.Tensor:
        feats = self._final_features(x)
        if feats is None:
            raise ValueError("CAM's target layers must output the feature map model.forward_features returns")
        self._set_outputs(self.model.forward_head(feats), targets)
        weights = self.classifier.weight[self.targets].float()  # (N, C)
        cam = torch.einsum("nc,nchw->nhw", weights, feats.float())
        return fuse_maps([cam], tuple(x.shape[-2:]))
