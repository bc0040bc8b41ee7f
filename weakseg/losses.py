"""Losses with one convention: a ``mode`` (binary or multiclass) and an ``ignore_index``.

Built by name from a spec such as ``ce``, ``ce+dice`` or ``ce + 0.5*lovasz``. ``ce`` (alias ``bce``) is
cross-entropy in the model's mode: softmax cross-entropy for multiclass, BCE with logits for binary (soft
targets in [0, 1] allowed). Dice, focal and Lovász come from segmentation_models_pytorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError


class CrossEntropy(nn.Module):
    """Cross-entropy over labelled pixels only (partial CE when most pixels are ignore)."""

    def __init__(self, mode: str = "multiclass", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.mode = mode
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.mode == "multiclass":
            if not (target != self.ignore_index).any():
                return logits.sum() * 0.0
            return F.cross_entropy(logits.float(), target.long(), ignore_index=self.ignore_index)
        logits = logits[:, 0].float()
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        return F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())


class SoftCrossEntropy(nn.Module):
    """Cross-entropy against a soft foreground probability (a CAM map in [0, 1]) for foreground/background
    models: BCE with logits in binary mode, two-class softmax cross-entropy with target (1 - q, q) in multiclass.
    Images are weighted equally; a soft target has no ignore value (an unlabelled image is left out instead)."""

    def __init__(self, mode: str = "multiclass"):
        super().__init__()
        self.mode = mode

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        q = target.float()
        if self.mode == "binary":
            return F.binary_cross_entropy_with_logits(logits[:, 0].float(), q)
        if logits.shape[1] != 2:
            raise ConfigError("soft targets need a foreground/background model (2 classes or binary mode)")
        log_p = F.log_softmax(logits.float(), dim=1)
        return -(q * log_p[:, 1] + (1 - q) * log_p[:, 0]).mean()


def _term(name: str, mode: str, ignore_index: int) -> nn.Module:
    smp_mode = "binary" if mode == "binary" else "multiclass"
    if name in ("ce", "bce"):
        return CrossEntropy(mode, ignore_index)
    if name == "dice":
        return smp_losses.DiceLoss(smp_mode, from_logits=True, ignore_index=ignore_index)
    if name == "focal":
        return smp_losses.FocalLoss(smp_mode, ignore_index=ignore_index)
    if name == "lovasz":
        return smp_losses.LovaszLoss(smp_mode, ignore_index=ignore_index, per_image=False)
    raise ConfigError(f"unknown loss '{name}'; known: ce (bce), dice, focal, lovasz")


class CombinedLoss(nn.Module):
    """A weighted sum of loss terms sharing mode and ignore index."""

    def __init__(self, spec: str, mode: str = "multiclass", ignore_index: int = IGNORE_INDEX):
        super().__init__()
        self.spec = spec
        self.mode = mode
        self.weights: list[float] = []
        terms = []
        for part in spec.replace(" ", "").split("+"):
            weight, _, name = part.rpartition("*")
            try:
                self.weights.append(float(weight) if weight else 1.0)
            except ValueError as err:
                raise ConfigError(f"bad loss term '{part}' in '{spec}'") from err
            terms.append(_term(name, mode, ignore_index))
        self.terms = nn.ModuleList(terms)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        target = target.long() if self.mode == "multiclass" else target.float()
        total = logits.new_zeros(())
        for weight, term in zip(self.weights, self.terms, strict=True):
            total = total + weight * term(logits, target)
        return total


def build_loss(spec: str, mode: str = "multiclass", ignore_index: int = IGNORE_INDEX) -> CombinedLoss:
    """``build_loss('ce+dice', mode='binary')`` and so on."""
    return CombinedLoss(spec, mode, ignore_index)
