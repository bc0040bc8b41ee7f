"""weakseg.cams: parity with pytorch-grad-cam, the fast head-only gradient path, fusion, hooks, registry.

Parity is checked on the final (N, H, W) outputs of both libraries: pytorch-grad-cam scales each map with
``scale_cam_image`` (min-max, then ``cv2.resize`` INTER_LINEAR) and weakseg with ``scale_maps`` then
``F.interpolate(bilinear, align_corners=False)``. On float32 maps the two resizes sample at the same
half-pixel centres with the same clamped borders, so the outputs are directly comparable at input size
(observed differences ~1e-6; tolerance 1e-3). Models are tiny (64 px, batch 3), CPU, eval mode.
"""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
from torch import nn

from weakseg.cams import (
    CAM,
    CAM_METHODS,
    BaseCAM,
    FullGrad,
    GradCAM,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    XGradCAM,
    build_cam,
    default_target_layers,
    list_cams,
    scale_maps,
)
from weakseg.errors import ConfigError

pgc = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

TOL = 1e-3
TARGETS = [1, 5, 7]
GRADIENT_METHODS = [GradCAM, GradCAMPlusPlus, HiResCAM, XGradCAM, LayerCAM]
REFERENCE = {
    GradCAM: pgc.GradCAM,
    GradCAMPlusPlus: pgc.GradCAMPlusPlus,
    HiResCAM: pgc.HiResCAM,
    XGradCAM: pgc.XGradCAM,
    LayerCAM: pgc.LayerCAM,
    FullGrad: pgc.FullGrad,
}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster than two and spares a busy machine (restored afterwards)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    """Random resnet18 (10 classes) with randomised BatchNorm (timm zero-inits the last BN of each block)."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model


@pytest.fixture(scope="module")
def effnet() -> nn.Module:
    """tf_efficientnet_lite0 with the bundled ImageNet weights."""
    from weakseg.models.encoders import load_bundled

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    load_bundled(model, "tf_efficientnet_lite0")
    return model.eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    return torch.randn(3, 3, 64, 64, generator=generator)


def _layers(model: nn.Module, which: str) -> list[nn.Module]:
    if isinstance(model, timm.models.ResNet):
        return {
            "final": [model.layer4[-1]],
            "inner": [model.layer3[-1]],
            "multi": [model.layer3[-1], model.layer4[-1]],
        }[which]
    return {
        "final": [model.bn2],
        "inner": [model.blocks[-1]],
        "multi": [model.blocks[-2], model.bn2],
    }[which]


def _reference(method: type[BaseCAM], model: nn.Module, layers, images, targets) -> np.ndarray:
    with REFERENCE[method](model, [] if method is FullGrad else layers) as ref:
        return ref(images, [ClassifierOutputTarget(t) for t in targets])


def _no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._backward_hooks for m in model.modules())


# -- parity with pytorch-grad-cam ---------------------------------------------------------------------------
@pytest.mark.parametrize("which", ["final", "inner", "multi"])
@pytest.mark.parametrize("model_name", ["resnet", "effnet"])
@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_matches_pytorch_grad_cam(method, model_name, which, images, request):
    model = request.getfixturevalue(model_name)
    layers = _layers(model, which)
    with method(model, layers) as cam:
        ours = cam(images, TARGETS)
        assert cam._fast_ok is (which == "final")  # the fast path exactly when the layer is the final output
    theirs = _reference(method, model, layers, images, TARGETS)
    assert theirs.shape == tuple(ours.shape)
    assert np.abs(ours.numpy() - theirs).max() <= TOL
    assert float(ours.amax()) > 0.99  # not a degenerate all-zero comparison


@pytest.mark.parametrize("model_name", ["resnet", "effnet"])
def test_fullgrad_matches_pytorch_grad_cam(model_name, images, request):
    model = request.getfixturevalue(model_name)
    with FullGrad(model) as cam:
        ours = cam(images, TARGETS)
        if model_name == "resnet":
            assert len(cam.target_layers) == 20  # every BatchNorm2d (its convs have no bias)
    theirs = _reference(FullGrad, model, [], images, TARGETS)
    assert np.abs(ours.numpy() - theirs).max() <= TOL
    assert torch.all(ours.amax(dim=(1, 2)) > 0.99)
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward filled .grad


# -- output contract ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_output_shape_device_range(name, resnet, images):
    with build_cam(name, resnet) as cam:
        maps = cam(images, TARGETS)
        flat = cam(torch.zeros(1, 3, 64, 64), [0])  # a constant image: no NaN from the normalisation
    assert maps.shape == (3, 64, 64)
    assert maps.dtype == torch.float32
    assert maps.device == next(resnet.parameters()).device
    assert not maps.requires_grad
    assert torch.isfinite(maps).all() and torch.isfinite(flat).all()
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0
    assert torch.equal(maps.amin(dim=(1, 2)), torch.zeros(3))
    peaks = maps.amax(dim=(1, 2))  # 1, or 0 where the class evidence is negative everywhere (ReLU)
    assert torch.all((peaks > 1 - 1e-5) | (peaks == 0)) and float(peaks.max()) > 1 - 1e-5


@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_none_targets_use_argmax(name, resnet, images):
    with torch.no_grad():
        predicted = resnet(images).argmax(dim=1)
    with build_cam(name, resnet) as cam:
        implicit = cam(images)
        assert torch.equal(cam.targets, predicted)
        explicit = cam(images, predicted.tolist())
        one_class = cam(images, 2)
        assert torch.equal(cam.targets, torch.full((3,), 2))
    assert torch.allclose(implicit, explicit, atol=1e-6)
    assert one_class.shape == implicit.shape


def test_bad_targets_are_rejected(resnet, images):
    with GradCAM(resnet) as cam:
        with pytest.raises(ValueError, match="targets"):
            cam(images, [1, 2])
        with pytest.raises(ValueError, match="class ids"):
            cam(images, [1, 2, 10])


# -- method relations ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["resnet", "effnet"])
def test_cam_equals_gradcam_for_avgpool_linear_head(model_name, images, request):
    model = request.getfixturevalue(model_name)
    with CAM(model) as cam, GradCAM(model) as gradcam:
        a = cam(images, TARGETS)
        b = gradcam(images, TARGETS)
    assert torch.allclose(a, b, atol=1e-5)
    assert float(a.amax()) > 0.99


def test_cam_rejects_inner_layers(resnet, images):
    with CAM(resnet, [resnet.layer3[-1]]) as cam, pytest.raises(ValueError, match="forward_features"):
        cam(images)


def _manual_gradcam(model: nn.Module, layer: nn.Module, images: torch.Tensor, targets) -> torch.Tensor:
    """Raw Grad-CAM (N, h, w) for one layer, computed independently with a hook and a full backward."""
    store = {}
    handle = layer.register_forward_hook(lambda m, i, o: store.update(out=o))
    try:
        logits = model(images)
    finally:
        handle.remove()
    score = logits[torch.arange(len(images)), torch.as_tensor(targets)].sum()
    (grad,) = torch.autograd.grad(score, store["out"])
    return (grad.mean(dim=(2, 3))[:, :, None, None] * store["out"].detach()).sum(dim=1)


def test_multi_layer_fusion_is_mean_of_normalised_maps(resnet, images):
    layers = [resnet.layer3[-1], resnet.layer4[-1]]
    per_layer = []
    for layer in layers:
        raw = _manual_gradcam(resnet, layer, images, TARGETS).clamp_min(0)
        shifted = raw - raw.amin(dim=(1, 2), keepdim=True)
        norm = shifted / (1e-7 + shifted.amax(dim=(1, 2), keepdim=True))
        per_layer.append(nn.functional.interpolate(norm[:, None], size=(64, 64), mode="bilinear")[:, 0])
    expected = scale_maps((per_layer[0] + per_layer[1]) / 2)
    with GradCAM(resnet, layers) as cam:
        fused = cam(images, TARGETS)
    with GradCAM(resnet, layers[1:]) as cam:
        last_only = cam(images, TARGETS)
    assert torch.allclose(fused, expected, atol=1e-5)
    assert not torch.allclose(fused, last_only, atol=1e-2)  # both layers contribute


# -- fast head-only path ------------------------------------------------------------------------------------
@pytest.mark.parametrize("model_name", ["resnet", "effnet"])
@pytest.mark.parametrize("method", GRADIENT_METHODS, ids=lambda m: m.__name__)
def test_fast_path_equals_full_backward(method, model_name, images, request):
    model = request.getfixturevalue(model_name)
    stem = model.conv1 if model_name == "resnet" else model.conv_stem
    grad_enabled: list[bool] = []
    handle = stem.register_forward_hook(lambda *_: grad_enabled.append(torch.is_grad_enabled()))
    try:
        with method(model) as fast:
            a = fast(images, TARGETS)
            assert fast._fast_ok is True
        assert grad_enabled == [False]  # backbone ran without autograd: no backward through it
        with method(model, fast=False) as slow:
            b = slow(images, TARGETS)
            assert slow._fast_ok is None
        assert grad_enabled == [False, True]
    finally:
        handle.remove()
    assert torch.allclose(a, b, atol=1e-5)


def test_fast_path_with_nonlinear_head():
    """mobilenetv3's head (pool, conv, act, linear) is differentiated as is; the default layer is probed."""
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_050", pretrained=False, num_classes=5).eval()
    layers = default_target_layers(model)
    assert layers == [model.blocks]
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with GradCAM(model) as fast, GradCAM(model, fast=False) as slow:
        a = fast(x, [0, 3])
        b = slow(x, [0, 3])
        assert fast._fast_ok is True
    assert torch.allclose(a, b, atol=1e-5)


def test_fast_path_refused_when_output_modified_in_place(resnet, images):
    """layer4[-1].bn2's output is the very tensor forward_features returns, but changed in place after."""
    with GradCAM(resnet, [resnet.layer4[-1].bn2]) as cam:
        maps = cam(images, TARGETS)
        assert cam._fast_ok is False
    assert maps.shape == (3, 64, 64)


def test_general_path_for_a_plain_module(resnet, images):
    """A model without forward_features (a wrapper) takes the full-backward path and gives the same maps."""
    wrapped = nn.Sequential(nn.Identity(), resnet)
    with GradCAM(wrapped, [resnet.layer4[-1]]) as cam, GradCAM(resnet) as direct:
        a = cam(images, TARGETS)
        assert cam._fast_ok is None
        b = direct(images, TARGETS)
    assert torch.allclose(a, b, atol=1e-5)


# -- hooks, layers, registry --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CAM_METHODS))
def test_context_manager_removes_hooks(name, resnet, images):
    assert _no_hooks(resnet)
    with build_cam(name, resnet) as cam:
        assert not _no_hooks(resnet)
        cam(images[:1])
    assert _no_hooks(resnet)
    with pytest.raises(RuntimeError, match="released"):
        cam(images[:1])


def test_hooks_removed_after_an_error(resnet):
    with pytest.raises(ValueError), GradCAM(resnet) as cam:
        cam(torch.zeros(3, 64, 64))  # not a batch
    assert _no_hooks(resnet)


def test_default_target_layers(resnet, effnet):
    assert default_target_layers(resnet) == [resnet.layer4[-1]]
    assert default_target_layers(effnet) == [effnet.bn2]
    with pytest.raises(ValueError, match="target_layers"):
        default_target_layers(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten()))


def test_registry_and_build(resnet):
    assert list_cams() == ["cam", "gradcam", "gradcam++", "hirescam", "xgradcam", "layercam", "fullgrad"]
    for alias, cls in [("Grad-CAM++", GradCAMPlusPlus), ("gradcampp", GradCAMPlusPlus), ("HiRes_CAM", HiResCAM)]:
        with build_cam(alias, resnet) as cam:
            assert type(cam) is cls
    with build_cam("gradcam", resnet, [resnet.layer3[-1]]) as cam:
        assert cam.target_layers == [resnet.layer3[-1]]
    with pytest.raises(ConfigError, match="unknown CAM"):
        build_cam("scorecam", resnet)


def test_model_mode_and_grads_untouched(resnet, images):
    with GradCAM(resnet, [resnet.layer3[-1]]) as cam:
        cam(images, TARGETS)
    assert not resnet.training
    assert all(p.grad is None for p in resnet.parameters())
