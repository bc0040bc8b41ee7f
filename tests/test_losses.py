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
