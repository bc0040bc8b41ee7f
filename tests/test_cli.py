"""The `weakseg` command as a user runs it: help, the demo, and one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def weakseg(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "weakseg.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env=os.environ.copy(),
    )


def test_help_lists_the_commands():
    result = weakseg("--help")
    assert result.returncode == 0
    for command in ("train", "evaluate", "predict", "demo", "experiment", "bench", "train-classifier", "pseudo-label"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("what", "expected"),
    [
        ("cams", "gradcam++"),
        ("refine", "grabcut: iters, fg, bg"),
        ("generators", "litemedsam"),
        ("methods", "layercam"),
    ],
)
def test_list_commands(what, expected):
    result = weakseg("list", what)
    assert result.returncode == 0 and expected in result.stdout.replace("\n", " ")


def test_bad_refine_pipeline_is_one_line(tmp_path):
    result = weakseg("train", "--set", "method.name=gradcam", "--set", "method.refine=otsu | grabcut:itres=3")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "itres" in result.stderr


def test_missing_dataset_is_one_line_naming_the_path(tmp_path):
    result = weakseg("evaluate", "--pred-dir", str(tmp_path), "--dataset", "kvasir", "--root", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "nope") in result.stderr.replace("\n", "")


def test_bad_config_value_is_one_line_naming_the_key(tmp_path):
    result = weakseg("train", "--set", "dataset.size=100", "--out", str(tmp_path))
    assert result.returncode == 2 and "dataset.size" in result.stderr and "Traceback" not in result.stderr


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\x00not a jpeg" * 10)
    model = tmp_path / "m.pt"
    import torch

    from weakseg.models import build_model

    net = build_model("unet", weights=None)
    torch.save({"model_spec": net.spec, "model": net.state_dict(), "meta": {"size": 64}}, model)
    result = weakseg("predict", str(bad), "--checkpoint", str(model), "--out", str(tmp_path / "p"))
    assert result.returncode == 2 and "broken.jpg" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_demo_trains_scores_and_writes_predictions(tmp_path):
    result = weakseg("demo", "--epochs", "1", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iou" in result.stdout
    masks = sorted((tmp_path / "demo" / "predictions").glob("*[!y].png"))
    overlays = sorted((tmp_path / "demo" / "predictions").glob("*_overlay.png"))
    assert len(masks) == len(overlays) > 0
    assert (tmp_path / "demo" / "metrics.json").is_file() and (tmp_path / "demo" / "best.pt").is_file()
