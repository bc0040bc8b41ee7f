"""The multi-head segmenter: one shared encoder-decoder, one head per supervision source."""

from __future__ import annotations

import pytest
import torch

from weakseg.errors import ConfigError
from weakseg.models import build_model, load_model
from weakseg.train import save_checkpoint


@pytest.mark.parametrize("arch", ["unet", "deeplabv3"])
def test_heads_share_the_trunk_and_forward_uses_the_primary(arch):
    torch.manual_seed(0)
    model = build_model(arch, weights=None, mode="binary", heads=["masks", "cam", "boxes"]).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        out = model.forward_heads(x)
        assert set(out) == {"masks", "cam", "boxes"}
        assert all(v.shape == (2, 1, 64, 64) for v in out.values())
        torch.testing.assert_close(model(x), out["masks"])
        assert not torch.allclose(out["cam"], out["masks"])  # separately initialised heads
    trunk = {id(p) for p in model.net.encoder.parameters()} | {id(p) for p in model.net.decoder.parameters()}
    head_params = {n: {id(p) for p in h.parameters()} for n, h in model.heads.items()}
    assert all(not (ids & trunk) for ids in head_params.values())
    assert not (head_params["cam"] & head_params["masks"])


def test_a_loss_on_one_head_trains_the_trunk_but_not_other_heads():
    model = build_model("unet", weights=None, mode="binary", heads=["masks", "sam"])
    model.forward_heads(torch.rand(2, 3, 64, 64), ["sam"])["sam"].mean().backward()
    assert all(p.grad is None for p in model.heads["masks"].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.net.encoder.parameters())


def test_checkpoint_round_trip_keeps_heads(tmp_path):
    model = build_model("unet", weights=None, mode="binary", heads=["cam", "masks"], primary="masks").eval()
    save_checkpoint(tmp_path / "m.pt", model)
    loaded = load_model(tmp_path / "m.pt").eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.forward_heads(x)["cam"], model.forward_heads(x)["cam"])
        torch.testing.assert_close(loaded(x), model(x))


def test_bad_heads_are_rejected():
    with pytest.raises(ConfigError):
        build_model("unet", weights=None, heads=["masks", "masks"])
    with pytest.raises(ConfigError):
        build_model("unet", weights=None, heads=["masks"], primary="cam")
