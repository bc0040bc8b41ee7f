"""Losses share one mode + ignore_index convention; partial CE only sees labelled pixels."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError
from weakseg.losses import build_loss


def test_multiclass_ce_equals_torch_cross_entropy_over_labelled_pixels():
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 16, 16))
    target[:, :8] = IGNORE_INDEX
    expected = F.cross_entropy(logits, target, ignore_index=IGNORE_INDEX)
    torch.testing.assert_close(build_loss("ce")(logits, target), expected)


def test_binary_ce_is_bce_over_labelled_pixels_and_accepts_soft_targets():
    logits = torch.randn(2, 1, 8, 8)
    soft = torch.rand(2, 8, 8)
    loss = build_loss("bce", mode="binary")(logits, soft)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[:, 0], soft))
    hard = torch.randint(0, 2, (2, 8, 8))
    hard[0] = IGNORE_INDEX
    loss = build_loss("ce", mode="binary")(logits, hard)
    torch.testing.assert_close(loss, F.binary_cross_entropy_with_logits(logits[1, 0], hard[1].float()))


def test_ignored_pixels_do_not_change_the_loss_or_the_gradient():
    logits = torch.randn(1, 2, 8, 8, requires_grad=True)
    target = torch.randint(0, 2, (1, 8, 8))
    target[0, :4] = IGNORE_INDEX
    other = target.clone()
    loss_fn = build_loss("ce+dice")
    a = loss_fn(logits, target)
    (grad,) = torch.autograd.grad(a, logits)
    assert grad[:, :, :4].abs().max() == 0
    torch.testing.assert_close(loss_fn(logits, other), a)


def test_all_ignored_gives_zero_loss_with_a_gradient_path():
    logits = torch.randn(1, 2, 4, 4, requires_grad=True)
    loss = build_loss("ce")(logits, torch.full((1, 4, 4), IGNORE_INDEX))
    assert float(loss.detach()) == 0.0
    loss.backward()


def test_weighted_terms_add_up():
    logits = torch.randn(2, 2, 8, 8)
    target = torch.randint(0, 2, (2, 8, 8))
    ce, dice = build_loss("ce")(logits, target), build_loss("dice")(logits, target)
    torch.testing.assert_close(build_loss("ce + 0.5*dice")(logits, target), ce + 0.5 * dice)


@pytest.mark.parametrize("spec", ["focal", "lovasz", "ce+lovasz"])
@pytest.mark.parametrize("mode", ["binary", "multiclass"])
def test_other_terms_decrease_when_the_prediction_improves(spec, mode):
    target = torch.randint(0, 2, (2, 16, 16))
    good = (target.float() * 2 - 1) * 4
    logits_good = good[:, None] if mode == "binary" else torch.stack([-good, good], 1)
    loss_fn = build_loss(spec, mode)
    assert loss_fn(logits_good, target) < loss_fn(-logits_good, target)


def test_unknown_terms_are_config_errors():
    with pytest.raises(ConfigError, match="unknown loss"):
        build_loss("ce+hinge")
    with pytest.raises(ConfigError, match="bad loss term"):
        build_loss("x*dice")


def _with_ignored(shape, classes, seed=0):
    generator = torch.Generator().manual_seed(seed)
    target = torch.randint(0, classes, shape, generator=generator)
    target[torch.rand(shape, generator=generator) < 0.3] = IGNORE_INDEX
    return target


def test_multiclass_focal_is_the_softmax_focal_formula_over_labelled_pixels():
    logits = torch.randn(2, 3, 5, 6, generator=torch.Generator().manual_seed(1))
    target = _with_ignored((2, 5, 6), 3)
    alpha = [0.2, 0.5, 0.3]
    terms = []
    for n, i, j in (target != IGNORE_INDEX).nonzero().tolist():
        c = int(target[n, i, j])
        p = torch.softmax(logits[n, :, i, j].double(), 0)[c]
        terms.append(-alpha[c] * (1 - p) ** 2 * torch.log(p))
    expected = torch.stack(terms).mean().float()
    torch.testing.assert_close(build_loss("focal:gamma=2,alpha=0.2/0.5/0.3")(logits, target), expected)
    # gamma 0 without alpha is cross-entropy
    torch.testing.assert_close(build_loss("focal:gamma=0")(logits, target), build_loss("ce")(logits, target))


def test_binary_focal_matches_the_library_sigmoid_focal_loss():
    from segmentation_models_pytorch.losses import FocalLoss as SmpFocal

    logits = torch.randn(2, 1, 7, 7, generator=torch.Generator().manual_seed(2))
    target = _with_ignored((2, 7, 7), 2, seed=3)
    oracle = SmpFocal("binary", alpha=0.25, gamma=2.0, ignore_index=IGNORE_INDEX)(logits, target)
    torch.testing.assert_close(build_loss("focal:alpha=0.25", "binary")(logits, target), oracle)


def test_dice_ignores_unlabelled_pixels_as_the_direct_formula_over_labelled_ones():
    logits = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(4))
    target = _with_ignored((2, 6, 6), 3, seed=5)
    target[target == 2] = 0  # class 2 absent: it counts as zero loss in the mean over classes (smp's convention)
    valid = target != IGNORE_INDEX
    p = torch.softmax(logits, 1).movedim(1, -1)[valid]  # (P, 3)
    y = F.one_hot(target[valid], 3).float()
    dice = 2 * (p * y).sum(0) / (p.sum(0) + y.sum(0))
    expected = ((1 - dice) * (y.sum(0) > 0)).mean()
    torch.testing.assert_close(build_loss("dice")(logits, target), expected, atol=1e-5, rtol=1e-5)


def _lovasz_softmax_by_sets(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Berman et al.'s Lovász extension of the Jaccard loss, from its definition on sets: per present class,
    errors sorted decreasingly, each step weighted by the increase of Delta_J(M) = |M| / |{y = c} u M| as the
    i-th pixel joins the mispredicted set M; the mean over present classes."""
    losses = []
    for c in sorted(set(labels.tolist())):
        fg = {i for i, label in enumerate(labels.tolist()) if label == c}
        errors = [abs((i in fg) - float(probs[i, c])) for i in range(len(labels))]
        order = sorted(range(len(errors)), key=lambda i: -errors[i])
        total, previous, mispredicted = 0.0, 0.0, set()
        for i in order:
            mispredicted.add(i)
            delta = len(mispredicted) / len(fg | mispredicted)
            total += errors[i] * (delta - previous)
            previous = delta
        losses.append(total)
    return sum(losses) / len(losses)


def test_lovasz_softmax_is_the_lovasz_extension_over_labelled_pixels():
    logits = torch.randn(1, 3, 4, 5, generator=torch.Generator().manual_seed(6))
    target = _with_ignored((1, 4, 5), 3, seed=7)
    valid = target != IGNORE_INDEX
    probs = torch.softmax(logits.double(), 1).movedim(1, -1)[valid]
    expected = _lovasz_softmax_by_sets(probs, target[valid])
    assert float(build_loss("lovasz")(logits, target)) == pytest.approx(expected, abs=1e-5)
    # on one-hot predictions the extension is exact: 1 - IoU per present class, averaged
    hard = torch.randint(0, 3, (1, 4, 5), generator=torch.Generator().manual_seed(8))
    one_hot = F.one_hot(hard, 3).movedim(-1, 1).float() * 50
    truth = torch.randint(0, 3, (1, 4, 5), generator=torch.Generator().manual_seed(9))
    ious = [((hard == c) & (truth == c)).sum() / ((hard == c) | (truth == c)).sum() for c in truth.unique()]
    assert float(build_loss("lovasz")(one_hot, truth)) == pytest.approx(1 - float(torch.stack(ious).mean()), abs=1e-5)


def test_loss_options_are_checked():
    with pytest.raises(ConfigError, match="takes no option"):
        build_loss("dice:gamma=2")
    with pytest.raises(ConfigError, match="bad option"):
        build_loss("focal:gamma")
