"""Confusion-matrix metrics for binary and multi-class segmentation, with an ignore index.

Rows of a confusion matrix are ground truth, columns predictions. Binary tasks (2 classes) report the
foreground class for precision, recall, IoU and Dice; multi-class tasks report their mean over classes.
Dataset-level metrics pool all pixels; ``*_per_image`` metrics average per-image values over the images
where the value is defined (0/0 is undefined, not 0 or 1).
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from weakseg.data.sample import IGNORE_INDEX

METRIC_NAMES = ("accuracy", "precision", "recall", "iou", "dice", "miou", "miou_multiclass_images")


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def class_scores(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, IoU and Dice from a (C, C) or (N, C, C) confusion matrix."""
    cm = cm.astype(np.float64)
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    fp = cm.sum(-2) - tp
    fn = cm.sum(-1) - tp
    return {
        "precision": _safe_div(tp, tp + fp),
        "recall": _safe_div(tp, tp + fn),
        "iou": _safe_div(tp, tp + fp + fn),
        "dice": _safe_div(2 * tp, 2 * tp + fp + fn),
    }


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Mean over defined values; NaN (not a warning) where none is defined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


class ConfusionMatrix:
    """Accumulates one confusion matrix per image; reduces to dataset-level and per-image metrics."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX):
        if num_classes < 2:
            raise ValueError("num_classes must be at least 2 (background and one class)")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self._per_image: list[np.ndarray] = []

    def update(self, pred: torch.Tensor | np.ndarray, target: torch.Tensor | np.ndarray) -> None:
        """Add a batch (N, H, W) or one image (H, W) of predicted and true class indices."""
        pred = torch.as_tensor(pred)
        target = torch.as_tensor(target)
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
        if pred.dim() == 2:
            pred, target = pred[None], target[None]
        c = self.num_classes
        n = pred.shape[0]
        target = target.long()
        pred = pred.long().to(target.device)
        valid = target != self.ignore_index
        for what, values in (("target", target[valid]), ("prediction", pred[valid])):
            if values.numel() and (values.min() < 0 or values.max() >= c):
                raise ValueError(f"{what} has class indices outside [0, {c}) other than the ignore index")
        image = torch.arange(n, device=target.device).view(n, 1, 1).expand_as(target)
        code = (image * c + target) * c + pred
        counts = torch.bincount(code[valid], minlength=n * c * c)
        self._per_image.extend(counts.view(n, c, c).cpu().numpy().astype(np.int64))

    def add_images(self, per_image: np.ndarray) -> None:
        """Add images' confusion matrices (N, C, C), e.g. another accumulator's ``per_image``."""
        self._per_image.extend(np.asarray(per_image, np.int64).reshape(-1, self.num_classes, self.num_classes))

    @property
    def per_image(self) -> np.ndarray:
        """(N, C, C) confusion matrices, one per image."""
        if not self._per_image:
            return np.zeros((0, self.num_classes, self.num_classes), np.int64)
        return np.stack(self._per_image)

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) confusion matrix over all images."""
        return self.per_image.sum(0) if self._per_image else np.zeros((self.num_classes,) * 2, np.int64)

    def _summary(self, scores: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Reduce the class axis: the foreground class for binary tasks, the class mean otherwise."""
        if self.num_classes == 2:
            return {k: v[..., 1] for k, v in scores.items()}
        return {k: _nanmean(v, axis=-1) for k, v in scores.items()}

    def compute(self) -> dict[str, float | list[float]]:
        """All metrics as a flat dict of floats (per-class IoU as a list under ``iou_per_class``)."""
        cm = self.matrix
        total = cm.sum()
        scores = class_scores(cm)
        out: dict[str, float | list[float]] = {
            "accuracy": float(np.trace(cm) / total) if total else float("nan"),
        }
        out.update({k: float(v) for k, v in self._summary(scores).items()})
        out["miou"] = float(_nanmean(scores["iou"]))
        out["iou_per_class"] = [float(v) for v in scores["iou"]]

        per = self.per_image
        if len(per):
            image_scores = class_scores(per)
            pixels = per.sum((1, 2))
            acc = _safe_div(np.trace(per, axis1=1, axis2=2).astype(np.float64), pixels.astype(np.float64))
            out["accuracy_per_image"] = float(_nanmean(acc))
            for k, v in self._summary(image_scores).items():
                out[f"{k}_per_image"] = float(_nanmean(v))
            miou_image = _nanmean(image_scores["iou"], axis=1)
            out["miou_per_image"] = float(_nanmean(miou_image))
            classes_present = (per.sum(2) > 0).sum(1)
            multi = classes_present > 1
            out["miou_multiclass_images"] = float(_nanmean(miou_image[multi])) if multi.any() else float("nan")
        else:
            out["miou_multiclass_images"] = float("nan")
        out["images"] = len(per)
        return out


def score_masks(pred: np.ndarray, target: np.ndarray, num_classes: int = 2) -> dict[str, float | list[float]]:
    """Metrics for one predicted mask against one ground-truth mask (convenience wrapper)."""
    cm = ConfusionMatrix(num_classes)
    cm.update(pred, target)
    return cm.compute()
