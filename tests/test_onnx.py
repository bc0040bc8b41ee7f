"""Deployable models: a checkpoint exported to ONNX gives PyTorch's logits and probabilities, carries its meta,
and ``weakseg predict`` writes the same masks with the .onnx file as with the .pt file."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

import weakseg
from weakseg.cli import app
from weakseg.errors import ConfigError, WeightsUnavailableError
from weakseg.io import read_mask
from weakseg.models import build_model, load_model
from weakseg.models.onnx import OnnxSegmenter
from weakseg.train import save_checkpoint

ENCODER = "tf_efficientnet_lite0"
KINDS = {
    "multiclass": {"classes": 3},
    "binary": {"classes": 2, "mode": "binary"},
    "multihead": {"classes": 2, "mode": "binary", "heads": ["masks", "cam"], "primary": "cam"},
    "multitask": {"classes": 2, "tags": 3},
}
CLASS_NAMES = {"multiclass": ["background", "cat", "dog"]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, .onnx) per kind of model, random weights, saved as training saves them; the multiclass one
    exported by the command, the others by the Python API."""
    folder = tmp_path_factory.mktemp("onnx")
    out = {}
    for i, (kind, kwargs) in enumerate(KINDS.items()):
        torch.manual_seed(i)
        model = build_model("unet", ENCODER, weights=None, **kwargs)
        meta = {"size": 64, "fit": "pad", "mask_classes": CLASS_NAMES.get(kind, ["background", "foreground"])}
        checkpoint, path = folder / f"{kind}.pt", folder / f"{kind}.onnx"
        save_checkpoint(checkpoint, model, epoch=0, score=0.5, digest="test", meta=meta)
        if kind == "multiclass":
            result = CliRunner().invoke(app, ["export", str(checkpoint), "--onnx", str(path)])
            assert result.exit_code == 0, result.output
        else:
            assert weakseg.export_onnx(checkpoint, path) == path
        out[kind] = (checkpoint, path)
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_onnx_logits_and_probabilities_match_pytorch(exported, kind):
    checkpoint, path = exported[kind]
    model, deployed = load_model(checkpoint).eval(), OnnxSegmenter(path)
    assert (deployed.num_classes, deployed.binary, deployed.spec) == (model.num_classes, model.binary, model.spec)
    for shape in [(2, 3, 64, 64), (1, 3, 96, 64), (3, 3, 50, 70)]:  # dynamic batch, height and width
        x = torch.rand(*shape, generator=torch.Generator().manual_seed(sum(shape)))
        with torch.no_grad():
            logits = model(x)
        onnx_logits = deployed(x)
        assert onnx_logits.shape == logits.shape == (shape[0], 1 if model.binary else model.num_classes, *shape[2:])
        assert (onnx_logits - logits).abs().max() <= 1e-4
        probs = deployed.predict(x)
        assert probs.shape[1] == model.num_classes
        assert (probs - model.predict(x)).abs().max() <= 1e-4
    if kind == "multihead":  # the primary head, not the first one
        with torch.no_grad():
            assert (model.forward_heads(x)["masks"] - onnx_logits).abs().max() > 1e-3


@pytest.mark.parametrize("kind", ["multiclass", "binary"])
def test_metadata_holds_what_prediction_needs(exported, kind):
    checkpoint, path = exported[kind]
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    meta = json.loads(props["weakseg.meta"])
    assert meta == torch.load(checkpoint, weights_only=False)["meta"] == OnnxSegmenter(path).meta
    assert (
        meta["size"] == 64 and meta["fit"] == "pad" and len(meta["mask_classes"]) == (3 if kind == "multiclass" else 2)
    )
    assert props["weakseg.probabilities"] == ("softmax" if kind == "multiclass" else "sigmoid")
    assert json.loads(props["weakseg.model_spec"])["mode"] == ("multiclass" if kind == "multiclass" else "binary")


def test_predict_with_the_onnx_file_writes_the_pytorch_masks(exported, tmp_path, monkeypatch):
    checkpoint, path = exported["multiclass"]
    # PyTorch in float32 on the CPU, as ONNX Runtime runs here (on a GPU it would predict in bfloat16)
    monkeypatch.setattr("weakseg.runtime.pick_device", lambda name="auto": torch.device("cpu"))
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate([(64, 64), (70, 50), (90, 120)]):
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        cv2.imwrite(str(images / f"im{i}.png"), image)
    runner = CliRunner()
    for tiling in ([], ["--tile", "48", "--overlap", "8"]):
        outs = {}
        for model in (checkpoint, path):
            outs[model.suffix] = tmp_path / f"{model.suffix[1:]}{len(tiling)}"
            args = ["predict", str(images), "--checkpoint", str(model), "--out", str(outs[model.suffix])]
            result = runner.invoke(app, [*args, "--no-overlays", *tiling])
            assert result.exit_code == 0, result.output
        for i in range(3):
            torch_mask, onnx_mask = (read_mask(outs[s] / f"im{i}.png") for s in (".pt", ".onnx"))
            assert torch_mask.shape == onnx_mask.shape
            assert (torch_mask != onnx_mask).mean() < 1e-3  # equal but for argmax near-ties within float rounding


def test_onnx_segmenter_errors_are_one_line(exported, tmp_path):
    checkpoint, path = exported["binary"]
    with pytest.raises(WeightsUnavailableError, match="not found"):
        OnnxSegmenter(tmp_path / "missing.onnx")
    with pytest.raises(WeightsUnavailableError, match="cannot read"):
        OnnxSegmenter(checkpoint)
    deployed = OnnxSegmenter(path)
    deployed.input_multiple = 32  # as for an architecture that needs multiples of its output stride
    with pytest.raises(ConfigError, match="multiples of 32"):
        deployed(torch.rand(1, 3, 50, 64))


def test_evaluate_scores_the_onnx_file_as_the_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr("weakseg.runtime.pick_device", lambda name="auto": torch.device("cpu"))
    torch.manual_seed(0)
    model = build_model("unet", ENCODER, weights=None, classes=2, mode="binary").eval()
    with torch.no_grad():  # centre the random logits so that it predicts some foreground and some background
        model.net.segmentation_head[0].bias -= model(torch.rand(2, 3, 64, 64)).median()
    checkpoint, path = tmp_path / "binary.pt", tmp_path / "binary.onnx"
    meta = {"size": 64, "fit": "resize", "mask_classes": ["background", "foreground"]}
    save_checkpoint(checkpoint, model, epoch=0, score=0.5, digest="test", meta=meta)
    weakseg.export_onnx(checkpoint, path)
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i, (h, w) in enumerate([(64, 64), (70, 50), (90, 120)]):
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 2)
        mask = np.zeros((h, w), np.uint8)
        mask[h // 4 : 3 * h // 4, w // 5 : w // 2] = 255
        cv2.imwrite(str(tmp_path / "images" / f"im{i}.png"), image)
        cv2.imwrite(str(tmp_path / "masks" / f"im{i}.png"), mask)
    metrics = {}
    for model in (checkpoint, path):
        out = tmp_path / f"{model.suffix[1:]}.json"
        args = ["evaluate", "--checkpoint", str(model), "--dataset", "folder", "--root", str(tmp_path)]
        result = CliRunner().invoke(app, [*args, "--split", "all", "--json", str(out)])
        assert result.exit_code == 0, result.output
        metrics[model.suffix] = json.loads(out.read_text())
    pt, onnx_ = metrics[".pt"], metrics[".onnx"]
    assert 0.05 < pt["iou"] < 0.95  # neither all right nor all wrong, so a mismatch would show
    for key in ("iou", "dice", "accuracy", "miou_per_image"):
        assert onnx_[key] == pytest.approx(pt[key], abs=1e-3)
