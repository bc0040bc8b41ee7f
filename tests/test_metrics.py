"""ConfusionMatrix against direct NumPy formulas on random masks with ignore pixels (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from weakseg.data.sample import IGNORE_INDEX
from weakseg.metrics import ConfusionMatrix, class_scores, score_masks

SETTINGS = settings(max_examples=120, deadline=None)


# --------------------------------------------------------------------------------------------------
# A reference written from the definitions, pixel by pixel, without a confusion matrix


def mean_defined(values) -> float:
    """Mean of the values that are defined (not NaN); NaN when none is."""
    values = [v for v in values if not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def per_class(pred: np.ndarray, target: np.ndarray, c: int) -> dict[str, list[float]]:
    valid = target != IGNORE_INDEX
    out: dict[str, list[float]] = {"precision": [], "recall": [], "iou": [], "dice": []}
    for k in range(c):
        tp = int(((pred == k) & (target == k) & valid).sum())
        fp = int(((pred == k) & (target != k) & valid).sum())
        fn = int(((pred != k) & (target == k) & valid).sum())
        out["precision"].append(ratio(tp, tp + fp))
        out["recall"].append(ratio(tp, tp + fn))
        out["iou"].append(ratio(tp, tp + fp + fn))
        out["dice"].append(ratio(2 * tp, 2 * tp + fp + fn))
    return out


def summary(scores: dict[str, list[float]], c: int) -> dict[str, float]:
    """Foreground for binary tasks, mean over the defined classes otherwise."""
    return {k: (v[1] if c == 2 else mean_defined(v)) for k, v in scores.items()}


def accuracy(pred: np.ndarray, target: np.ndarray) -> float:
    valid = target != IGNORE_INDEX
    return ratio(int((pred == target)[valid].sum()), int(valid.sum()))


def reference(preds: np.ndarray, targets: np.ndarray, c: int) -> dict[str, float | list[float]]:
    pooled = per_class(preds, targets, c)  # all pixels of all images together
    out: dict[str, float | list[float]] = {"accuracy": accuracy(preds, targets), **summary(pooled, c)}
    out["miou"] = mean_defined(pooled["iou"])
    out["iou_per_class"] = pooled["iou"]
    images = [per_class(p, t, c) for p, t in zip(preds, targets, strict=True)]
    out["accuracy_per_image"] = mean_defined(accuracy(p, t) for p, t in zip(preds, targets, strict=True))
    for key in ("precision", "recall", "iou", "dice"):
        out[f"{key}_per_image"] = mean_defined(summary(s, c)[key] for s in images)
    miou_image = [mean_defined(s["iou"]) for s in images]
    out["miou_per_image"] = mean_defined(miou_image)
    multi = [len(set(t[t != IGNORE_INDEX].tolist())) > 1 for t in targets]
    out["miou_multiclass_images"] = mean_defined(m for m, keep in zip(miou_image, multi, strict=True) if keep)
    out["images"] = len(targets)
    return out


def assert_same(actual: dict, expected: dict) -> None:
    assert set(expected) <= set(actual)
    for key, value in expected.items():
        np.testing.assert_allclose(
            np.asarray(actual[key], float),
            np.asarray(value, float),
            rtol=1e-9,
            atol=1e-12,
            equal_nan=True,
            err_msg=key,
        )


@st.composite
def mask_batches(draw, num_classes: int):
    """(pred, target) uint8 stacks (N, H, W); targets hold IGNORE_INDEX pixels, predictions never do."""
    n = draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    target_values = st.sampled_from([*range(num_classes), IGNORE_INDEX])
    target = draw(arrays(np.uint8, (n, h, w), elements=target_values))
    pred = draw(arrays(np.uint8, (n, h, w), elements=st.integers(0, num_classes - 1)))
    return pred, target


any_task = st.sampled_from([2, 3]).flatmap(lambda c: st.tuples(st.just(c), mask_batches(c)))


# --------------------------------------------------------------------------------------------------
# Properties


@SETTINGS
@given(mask_batches(2))
def test_binary_metrics_match_the_formulas(batch):
    pred, target = batch
    cm = ConfusionMatrix(2)
    cm.update(pred, target)
    assert_same(cm.compute(), reference(pred, target, 2))


@SETTINGS
@given(mask_batches(3))
def test_multiclass_metrics_match_the_formulas(batch):
    pred, target = batch
    cm = ConfusionMatrix(3)
    cm.update(torch.from_numpy(pred), torch.from_numpy(target))
    assert_same(cm.compute(), reference(pred, target, 3))


@SETTINGS
@given(any_task)
def test_batched_update_equals_per_image_updates(task):
    c, (pred, target) = task
    batched, single = ConfusionMatrix(c), ConfusionMatrix(c)
    batched.update(pred, target)
    for p, t in zip(pred, target, strict=True):
        single.update(p, t)
    np.testing.assert_array_equal(batched.per_image, single.per_image)
    np.testing.assert_array_equal(batched.matrix, single.matrix)
    assert_same(batched.compute(), single.compute())
    # split into two batches of any size: the same again
    cut = len(pred) // 2
    two = ConfusionMatrix(c)
    two.update(pred[:cut], target[:cut])
    two.update(torch.from_numpy(pred[cut:]).long(), torch.from_numpy(target[cut:]).long())
    np.testing.assert_array_equal(two.per_image, batched.per_image)


@SETTINGS
@given(any_task, st.integers(0, 2**32 - 1))
def test_ignore_pixels_never_count(task, seed):
    c, (pred, target) = task
    cm = ConfusionMatrix(c)
    cm.update(pred, target)
    valid = target != IGNORE_INDEX
    assert cm.matrix.sum() == valid.sum()
    np.testing.assert_array_equal(cm.per_image.sum((1, 2)), valid.sum((1, 2)))
    np.testing.assert_array_equal(cm.per_image.sum(2), [[(t == k).sum() for k in range(c)] for t in target])
    # whatever is predicted on ignore pixels changes nothing
    other = pred.copy()
    noise = np.random.default_rng(seed).integers(0, c, pred.shape, dtype=np.uint8)
    other[~valid] = noise[~valid]
    cm2 = ConfusionMatrix(c)
    cm2.update(other, target)
    np.testing.assert_array_equal(cm2.per_image, cm.per_image)


@SETTINGS
@given(any_task)
def test_perfect_prediction_scores_one(task):
    c, (_, target) = task
    target = target.copy()
    flat = target.reshape(-1)
    flat[: min(c, flat.size)] = np.arange(min(c, flat.size))  # classes present (when the image is big enough)
    pred = np.where(target == IGNORE_INDEX, 0, target).astype(np.uint8)
    cm = ConfusionMatrix(c)
    cm.update(pred, target)
    result = cm.compute()
    present = {int(v) for v in np.unique(target) if v != IGNORE_INDEX}
    assert result["accuracy"] == 1.0 and result["accuracy_per_image"] == 1.0
    assert result["miou"] == 1.0 and result["miou_per_image"] == 1.0
    for key in ("precision", "recall", "iou", "dice"):
        for name in (key, f"{key}_per_image"):
            if c > 2 or 1 in present:
                assert result[name] == 1.0, name
            else:
                assert math.isnan(result[name]), name  # no foreground anywhere: 0/0
    assert [v == 1.0 for v in result["iou_per_class"]] == [k in present for k in range(c)]
    np.testing.assert_array_equal(cm.matrix, np.diag(np.diag(cm.matrix)))
    multi = any(len(set(t[t != IGNORE_INDEX].tolist())) > 1 for t in target)
    assert result["miou_multiclass_images"] == 1.0 if multi else math.isnan(result["miou_multiclass_images"])


# --------------------------------------------------------------------------------------------------
# Worked examples and edges


def test_a_hand_computed_binary_example():
    target = np.array([[0, 1, 1], [IGNORE_INDEX, 0, 1]], np.uint8)
    pred = np.array([[0, 1, 0], [1, 1, 1]], np.uint8)
    result = score_masks(pred, target)
    # TP 2, FP 1, FN 1, TN 1; the ignored pixel is not scored
    assert result["accuracy"] == pytest.approx(3 / 5)
    assert result["precision"] == pytest.approx(2 / 3) and result["recall"] == pytest.approx(2 / 3)
    assert result["iou"] == pytest.approx(1 / 2) and result["dice"] == pytest.approx(2 / 3)
    assert result["iou_per_class"] == pytest.approx([1 / 3, 1 / 2])
    assert result["miou"] == pytest.approx(5 / 12)
    assert result["images"] == 1 and result["miou_multiclass_images"] == pytest.approx(5 / 12)


def test_images_where_a_value_is_undefined_are_left_out_of_the_mean():
    cm = ConfusionMatrix(2)
    background_only = np.zeros((4, 4), np.uint8)
    cm.update(background_only, background_only)  # no foreground anywhere: precision, recall, IoU are 0/0
    target = np.zeros((4, 4), np.uint8)
    target[:2] = 1
    pred = np.zeros((4, 4), np.uint8)
    pred[:1] = 1  # half the object found, nothing wrong predicted
    cm.update(pred, target)
    result = cm.compute()
    assert result["iou_per_image"] == pytest.approx(0.5)  # the mean of 0.5 alone, not of (0.5, 0) or (0.5, 1)
    assert result["precision_per_image"] == pytest.approx(1.0)
    assert result["recall_per_image"] == pytest.approx(0.5)
    assert result["accuracy_per_image"] == pytest.approx((1.0 + 12 / 16) / 2)
    # second image: background IoU 8 / 12, object IoU 4 / 8; only it has more than one class
    assert result["miou_multiclass_images"] == pytest.approx((8 / 12 + 4 / 8) / 2)
    # the first image's mIoU is its background IoU alone (the object's IoU is undefined there)
    assert result["miou_per_image"] == pytest.approx((1.0 + (8 / 12 + 4 / 8) / 2) / 2)


def test_empty_and_fully_ignored_inputs():
    cm = ConfusionMatrix(3)
    result = cm.compute()
    assert math.isnan(result["accuracy"]) and math.isnan(result["miou"]) and result["images"] == 0
    cm.update(np.zeros((2, 3), np.uint8), np.full((2, 3), IGNORE_INDEX, np.uint8))
    result = cm.compute()
    assert result["images"] == 1 and math.isnan(result["accuracy"]) and math.isnan(result["miou_per_image"])


def test_class_scores_accepts_stacks():
    cms = np.array([[[3, 1], [0, 2]], [[0, 0], [0, 0]]])
    scores = class_scores(cms)
    assert scores["iou"].shape == (2, 2)
    np.testing.assert_allclose(scores["iou"][0], [3 / 4, 2 / 3])
    assert np.isnan(scores["iou"][1]).all()


def test_invalid_arguments():
    with pytest.raises(ValueError, match="at least 2"):
        ConfusionMatrix(1)
    with pytest.raises(ValueError, match="differ in shape"):
        ConfusionMatrix(2).update(np.zeros((2, 3, 3)), np.zeros((2, 3, 4)))


def test_out_of_range_classes_are_rejected():
    target = np.zeros((2, 4, 4), np.uint8)
    target[0, 0, 0] = 2  # not a class of a binary task, not the ignore index
    with pytest.raises(ValueError):
        ConfusionMatrix(2).update(np.zeros_like(target), target)


@settings(max_examples=60, deadline=None)
@given(any_task)
def test_pooled_metrics_match_scikit_learn(task):
    """An independent implementation: scikit-learn's confusion matrix, Jaccard and F1 (= Dice) over the
    non-ignored pixels of all images together."""
    metrics = pytest.importorskip("sklearn.metrics")
    c, (pred, target) = task
    cm = ConfusionMatrix(c)
    cm.update(pred, target)
    result = cm.compute()
    valid = target != IGNORE_INDEX
    if not valid.any():  # scikit-learn refuses empty inputs
        assert not cm.matrix.any()
        return
    y_true, y_pred, labels = target[valid], pred[valid], list(range(c))
    np.testing.assert_array_equal(cm.matrix, metrics.confusion_matrix(y_true, y_pred, labels=labels))
    kw = {"labels": labels, "average": None, "zero_division": 0}
    iou = metrics.jaccard_score(y_true, y_pred, **kw)
    precision, recall, dice, _ = metrics.precision_recall_fscore_support(y_true, y_pred, **kw)
    # scikit-learn writes 0 for 0/0; weakseg leaves the value undefined (NaN)
    in_true, in_pred = np.isin(labels, y_true), np.isin(labels, y_pred)
    precision[~in_pred], recall[~in_true] = np.nan, np.nan
    iou[~(in_true | in_pred)], dice[~(in_true | in_pred)] = np.nan, np.nan
    np.testing.assert_allclose(result["iou_per_class"], iou, rtol=1e-12, equal_nan=True)
    expected = {"precision": precision, "recall": recall, "iou": iou, "dice": dice}
    for key, per_class in expected.items():
        value = per_class[1] if c == 2 else (np.nan if np.isnan(per_class).all() else np.nanmean(per_class))
        np.testing.assert_allclose(result[key], value, rtol=1e-12, equal_nan=True, err_msg=key)
    np.testing.assert_allclose(result["miou"], np.nanmean(iou), rtol=1e-12)  # some class is always defined here
    assert result["accuracy"] == pytest.approx(metrics.accuracy_score(y_true, y_pred), rel=1e-12)
