"""ViT self-attention maps (issue 12, item 2): capture, fusion, prefix tokens, sizes, weights, the ``vit`` method.

Random weights throughout: no ViT weights can be installed offline, so these test the mechanism, not quality."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from timm.models.vision_transformer import VisionTransformer

from tests.synthetic import blob_split
from weakseg.cams.vit_attention import ViTAttention
from weakseg.config import RunConfig
from weakseg.errors import ConfigError, WeightsUnavailableError
from weakseg.methods.base import METHODS
from weakseg.pipeline import run


def tiny_vit(**kwargs) -> VisionTransformer:
    torch.manual_seed(0)
    options = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 4, "num_heads": 2, "num_classes": 0}
    return VisionTransformer(**(options | kwargs)).eval()


def timm_unfused_attention(model: VisionTransformer, x: torch.Tensor) -> list[torch.Tensor]:
    """Each block's attention from timm's own unfused path (a copy with fused_attn off, attn_drop's input)."""
    model = copy.deepcopy(model)
    seen: list[torch.Tensor] = []
    for block in model.blocks:
        block.attn.fused_attn = False
        block.attn.attn_drop.register_forward_hook(lambda m, args, out: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        model.forward_features(x)
    return seen


def test_captured_attention_is_timms_and_the_output_is_unchanged():
    model = tiny_vit(qk_norm=True)  # q_norm / k_norm are part of the recomputation
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        reference = model.forward_features(x)
    with ViTAttention(model, blocks=[0, 1, 2, 3], fusion="mean") as att:
        maps = att(x)
        with torch.no_grad():
            assert torch.equal(model.forward_features(x), reference)  # capturing changes nothing
    expected = timm_unfused_attention(model, x)
    assert len(att.attentions) == len(expected) == 4
    for got, want in zip(att.attentions, expected, strict=True):
        assert got.shape == (3, 2, 17, 17)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    assert maps.shape == (3, 32, 32) and float(maps.min()) == 0 and float(maps.max()) > 0.99
    assert not att._handles  # released on leaving the block


def numpy_fusion(attentions: list[np.ndarray], fusion: str, prefix: int, cls: bool) -> np.ndarray:
    """Direct loops: head mean; class-token row (or mean of patch rows) over patch columns; max/mean; rollout."""
    n, heads, t, _ = attentions[0].shape
    means = [sum(a[:, h] for h in range(heads)) / heads for a in attentions]

    def query(m: np.ndarray) -> np.ndarray:
        out = np.zeros((n, t - prefix))
        for i in range(n):
            rows = [0] if cls else list(range(prefix, t))
            for j in range(prefix, t):
                out[i, j - prefix] = sum(m[i, r, j] for r in rows) / len(rows)
        return out

    if fusion == "rollout":
        result = []
        for i in range(n):
            r = np.eye(t)
            for m in means:
                a = 0.5 * m[i] + 0.5 * np.eye(t)
                a = a / a.sum(axis=1, keepdims=True)
                r = a @ r
            result.append(r)
        return query(np.stack(result))
    per_block = [query(m) for m in means]
    return np.maximum.reduce(per_block) if fusion == "max" else sum(per_block) / len(per_block)


@pytest.mark.parametrize("fusion", ["max", "mean", "rollout"])
@pytest.mark.parametrize("tokens", [{}, {"reg_tokens": 2}, {"class_token": False, "global_pool": "avg"}])
def test_fusion_matches_direct_formulas(fusion, tokens):
    model = tiny_vit(**tokens)
    x = torch.rand(2, 3, 32, 32)
    with ViTAttention(model, fusion=fusion) as att:
        att(x)
        assert att.blocks == ([0, 1, 2, 3] if fusion == "rollout" else [1, 3])  # the defaults
        assert att.prefix == model.num_prefix_tokens
        got = att.fuse(att.attentions).numpy()
    expected = numpy_fusion([a.numpy() for a in att.attentions], fusion, att.prefix, model.has_class_token)
    assert got.shape == (2, 16)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)


def test_dynamic_size_and_registers_without_class_token():
    model = tiny_vit(class_token=False, global_pool="avg", reg_tokens=2, dynamic_img_size=True)
    with ViTAttention(model, blocks=[-1]) as att:
        maps = att(torch.rand(1, 3, 48, 40))
        assert att.blocks == [3] and att.attentions[0].shape[-1] == 2 + 6 * 5
    assert maps.shape == (1, 48, 40)


def test_clear_errors():
    fixed = tiny_vit()
    with ViTAttention(fixed) as att, pytest.raises(ValueError, match="dynamic_img_size=True"):
        att(torch.rand(1, 3, 48, 48))
    with pytest.raises(ValueError, match="among the 4 blocks"):
        ViTAttention(fixed, blocks=[4])
    with pytest.raises(ValueError, match="fusion"):
        ViTAttention(fixed, fusion="sum")

    class Rotary(type(fixed.blocks[0].attn)):
        def forward(self, x, attn_mask=None, is_causal=False):
            return super().forward(x, attn_mask, is_causal)

    other = tiny_vit()
    other.blocks[1].attn.__class__ = Rotary
    with pytest.raises(ValueError, match="block 1's attention is Rotary"):
        ViTAttention(other)


def test_weights_null_warns_and_pretrained_offline_is_one_line(monkeypatch, tmp_path):
    import huggingface_hub.constants

    import weakseg.models.encoders as encoders
    from weakseg.methods.vit import build_vit

    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model = build_vit("vit_tiny_patch16_224", None)
    with ViTAttention(model) as att:
        assert att(torch.rand(1, 3, 64, 48)).shape == (1, 64, 48)  # built with dynamic_img_size
    monkeypatch.setattr(encoders, "hub_reachable", lambda *a, **k: False)  # offline, with an empty cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match=r"method\.options\.weights") as err:
        build_vit("vit_tiny_patch16_224.augreg_in21k", "pretrained")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="unknown timm model 'vit_nope'"):
        build_vit("vit_nope", None)


def test_vit_method_uses_no_labels_and_reuses_its_maps(tmp_path):
    assert "unmeasured offline" in METHODS.meta("vit")["description"]
    data = {
        "dataset": {"val_fraction": 0.0, "size": 64},
        "method": {
            "name": "vit",
            "refine": "smooth:sigma=2 | otsu | open | lcc",
            "segmenter": False,
            "options": {"model": "vit_tiny_patch16_224", "weights": None, "fusion": "rollout", "batch_size": 4},
        },
    }
    splits = (blob_split(6, 64), blob_split(2, 64, seed=5))
    shared = tmp_path / "shared"
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        results = run(RunConfig.model_validate(data), tmp_path / "a", splits=splits, progress=False, shared_dir=shared)
    assert [r.stage for r in results] == ["pseudo"] and results[0].metrics["vit_random_weights"] == 1
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert all(labels[k] == 0 for k in ("masks", "boxes", "points", "tags"))
    data["method"]["refine"] = "otsu"  # another refinement: the same maps, new pseudo-labels
    run(RunConfig.model_validate(data), tmp_path / "b", splits=splits, progress=False, shared_dir=shared)
    assert len(list(shared.glob("vit/*.pt"))) == 1 and len(list(shared.glob("pseudo/*.pt"))) == 2
    data["method"]["options"]["blok"] = [1]
    with pytest.raises(ConfigError, match=r"method\.options\.blok"):
        run(RunConfig.model_validate(data), tmp_path / "c", splits=splits, progress=False, shared_dir=shared)
