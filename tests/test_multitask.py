"""The multi-task model: one encoder, a segmentation decoder and a tag classification branch."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from weakseg.cams import build_cam
from weakseg.cams.base import scale_maps, upsample
from weakseg.errors import ConfigError
from weakseg.models import build_model, load_model
from weakseg.train import save_checkpoint


@pytest.mark.parametrize("arch", ["unet", "deeplabv3"])
def test_both_tasks_come_from_one_encoder_pass(arch):
    torch.manual_seed(0)
    model = build_model(arch, classes=3, weights=None, tags=4).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        masks, tags = model.forward_both(x)
        assert masks.shape == (2, 3, 64, 64) and tags.shape == (2, 4)
        torch.testing.assert_close(model(x), masks)
        # the tag logits are global average pooling + the linear layer on the deepest encoder features
        features = model.net.encoder(model.normalize(x))[-1]
        linear = model.tag_classifier().get_classifier()
        torch.testing.assert_close(tags, F.linear(features.mean((2, 3)), linear.weight, linear.bias))
    encoder = {id(p) for p in model.net.encoder.parameters()}
    branch = {id(p) for p in model.net.classification_head.parameters()}
    assert encoder and branch and not encoder & branch


def test_cams_of_the_tag_branch_are_the_class_weights_times_the_features():
    torch.manual_seed(1)
    model = build_model("unet", classes=2, weights=None, tags=3).eval()
    branch = model.tag_classifier()
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([2, 0])
    with torch.no_grad():
        features = branch.forward_features(x)
        weights = branch.get_classifier().weight[targets]
        expected = scale_maps(
            upsample(scale_maps(torch.einsum("nc,nchw->nhw", weights, features).clamp_min(0)), (64, 64))
        )
    with build_cam("cam", branch) as cam:
        torch.testing.assert_close(cam(x, targets), expected)
    with build_cam("gradcam", branch) as fast, build_cam("gradcam", branch, fast=False) as full:
        maps = fast(x, targets)
        assert fast._fast_ok  # the target layer outputs the deepest features: head-only gradients
        torch.testing.assert_close(maps, full(x, targets), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(maps, expected, atol=1e-5, rtol=1e-4)  # Grad-CAM = CAM for a GAP + linear head


def test_training_the_tag_branch_moves_the_encoder_not_the_decoder():
    torch.manual_seed(2)
    model = build_model("unet", classes=2, weights=None, tags=2)
    decoder = [p.detach().clone() for p in model.net.decoder.parameters()]
    encoder = [p.detach().clone() for p in model.net.encoder.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    _, tags = model.forward_both(torch.rand(2, 3, 64, 64))
    F.cross_entropy(tags, torch.tensor([0, 1])).backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(decoder, model.net.decoder.parameters(), strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(encoder, model.net.encoder.parameters(), strict=True))


def test_checkpoint_round_trip_keeps_both_branches(tmp_path):
    model = build_model("unet", classes=2, weights=None, tags=3, multilabel=True).eval()
    save_checkpoint(tmp_path / "m.pt", model)
    again = load_model(tmp_path / "m.pt").eval()
    assert again.multilabel and again.num_tags == 3
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model.forward_both(x), again.forward_both(x), strict=True):
            torch.testing.assert_close(a, b)


def test_tags_and_source_heads_do_not_mix():
    with pytest.raises(ConfigError, match="either"):
        build_model("unet", weights=None, tags=2, heads=["masks", "cam"])
