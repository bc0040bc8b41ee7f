"""Losses with one convention: a ``mode`` (binary or multiclass) and an ``ignore_index``.

Built by name from a spec such as ``ce``, ``ce+dice``, ``ce + 0.5*lovasz`` or ``focal:gamma=2,alpha=0.25``.
``ce`` (alias ``bce``) is cross-entropy in the model's mode: softmax cross-entropy for multiclass, BCE with logits
for binary (soft targets in [0, 1] allowed). ``focal`` is the focal loss of Lin et al. on the softmax (multiclass)
or the sigmoid (binary), written here: segmentation_models_pytorch's multiclass focal loss is a mean of one-vs-rest
sigmoid losses instead. Dice and Lovász come from segmentation_models_pytorch (tested against direct formulas).
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


class FocalLoss(nn.Module):
    """Focal loss ``-alpha_t (1 - p_t)^gamma log p_t``, the mean over labelled pixels; ``p_t`` is the softmax
    probability of the true class (multiclass) or the sigmoid's probability of the true label (binary).
    ``alpha`` weights the foreground (binary: ``alpha`` for 1, ``1 - alpha`` for 0) or each class (a list, one
    weight per class); None: no weighting. ``gamma = 0`` without ``alpha`` is cross-entropy."""

    def __init__(
        self,
        mode: str = "multiclass",
        gamma: float = 2.0,
        alpha: float | list[float] | None = None,
        ignore_index: int = IGNORE_INDEX,
    ):
        super().__init__()
        self.mode, self.gamma, self.alpha, self.ignore_index = mode, gamma, alpha, ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        if not valid.any():
            return logits.sum() * 0.0
        logits = logits.float()
        if self.mode == "binary":
            truth = target[valid].float()
            log_pt = -F.binary_cross_entropy_with_logits(logits[:, 0][valid], truth, reduction="none")
            weight = None if self.alpha is None else self.alpha * truth + (1 - self.alpha) * (1 - truth)
        else:
            truth = target[valid].long()
            log_p = F.log_softmax(logits, dim=1).movedim(1, -1)[valid]  # (P, C)
            log_pt = log_p.gather(1, truth[:, None])[:, 0]
            weight = None
            if self.alpha is not None:
                alpha = torch.as_tensor(self.alpha, dtype=logits.dtype, device=logits.device)
                weight = alpha[truth] if alpha.ndim else alpha
        loss = -((1 - log_pt.exp()).clamp_min(0) ** self.gamma) * log_pt
        return (loss * weight if weight is not None else loss).mean()


def _options(name: str, text: str) -> dict[str, float | list[float]]:
    """``gamma=2,alpha=0.25`` (a list of class weights as ``alpha=0.2/0.4/0.4``) -> keyword arguments."""
    options: dict[str, float | list[float]] = {}
    for item in filter(None, text.split(",")):
        key, sep, value = item.partition("=")
        try:
            options[key] = [float(v) for v in value.split("/")] if "/" in value else float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise ConfigError(f"bad option '{item}' of loss '{name}': use key=value, e.g. focal:gamma=2,alpha=0.25")
    return options


def _term(name: str, mode: str, ignore_index: int) -> nn.Module:
    name, _, text = name.partition(":")
    options = _options(name, text)
    smp_mode = "binary" if mode == "binary" else "multiclass"
    known = {"focal": {"gamma", "alpha"}}.get(name, set())
    if unknown := sorted(set(options) - known):
        raise ConfigError(f"loss '{name}' takes no option(s) {unknown}; it takes {sorted(known) or 'none'}")
    if name in ("ce", "bce"):
        return CrossEntropy(mode, ignore_index)
    if name == "dice":
        return smp_losses.DiceLoss(smp_mode, from_logits=True, ignore_index=ignore_index)
    if name == "focal":
        return FocalLoss(mode, ignore_index=ignore_index, **options)
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
