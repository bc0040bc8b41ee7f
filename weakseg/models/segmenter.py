"""The base segmentation model: normalisation inside, one convention for outputs."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.runtime import autocast


class Normalized(nn.Module):
    """A model that takes RGB in [0, 1] and normalises it with its pretrained weights' mean and std."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return (images - self.mean) / self.std


class Segmenter(Normalized):
    """Wraps a network so that it takes RGB in [0, 1] and normalises with its encoder's statistics.

    ``forward`` returns logits: one channel in binary mode (sigmoid), ``num_classes`` channels otherwise
    (softmax). ``probabilities`` always returns (N, num_classes, H, W), so callers need not know the mode.
    ``spec`` holds what ``build_model`` needs to rebuild the model from a checkpoint.
    """

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], spec: dict[str, Any]):
        super().__init__(mean, std)
        self.net = net
        self.spec = dict(spec)
        self.num_classes = int(spec["classes"])
        self.binary = spec.get("mode", "multiclass") == "binary"

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities (N, num_classes, H, W) from this model's logits."""
        if self.binary:
            fg = torch.sigmoid(logits[:, :1].float())
            return torch.cat([1 - fg, fg], dim=1)
        return F.softmax(logits.float(), dim=1)

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """Class probabilities for a batch of images in [0, 1]."""
        return self.probabilities(self(images))


@torch.no_grad()
def predict_probabilities(
    model: Segmenter, images: torch.Tensor, tta: list[str] | tuple[str, ...] = (), amp: bool = True
) -> torch.Tensor:
    """Class probabilities (N, C, S, S); ``tta=['hflip']`` averages with the flipped prediction."""
    with autocast(images.device, amp):
        probs = model.probabilities(model(images))
        for name in tta:
            dim = {"hflip": -1, "vflip": -2}[name]
            probs = probs + model.probabilities(model(images.flip(dim))).flip(dim)
    return probs / (1 + len(tta))
