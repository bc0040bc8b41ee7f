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


def _mask_folder(root: Path) -> tuple[Path, Path]:
    """A folder dataset of three images with masks, and a folder of predicted masks (two right, one wrong)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "data" / "images").mkdir(parents=True)
    (root / "data" / "masks").mkdir()
    (root / "pred").mkdir()
    for i, name in enumerate("abc"):
        Image.fromarray(rng.integers(0, 255, (16, 20, 3), dtype=np.uint8)).save(
            root / "data" / "images" / f"{name}.png"
        )
        mask = np.zeros((16, 20), np.uint8)
        mask[4:12, 3 + i : 15] = 255
        Image.fromarray(mask).save(root / "data" / "masks" / f"{name}.png")
        Image.fromarray(mask if i < 2 else np.roll(mask, 4, axis=1)).save(root / "pred" / f"{name}.png")
    return root / "data", root / "pred"


def test_json_output_is_the_commands_result_alone(tmp_path):
    import json

    from weakseg.data import build_dataset
    from weakseg.evaluate import evaluate_mask_folder
    from weakseg.methods.base import list_methods

    data, pred = _mask_folder(tmp_path)
    args = ["evaluate", "--pred-dir", str(pred), "--dataset", "folder", "--root", str(data), "--split", "all"]
    result = weakseg("--json", *args, "--json", str(tmp_path / "metrics.json"))
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout)  # one JSON object and nothing else on stdout
    expected = evaluate_mask_folder(pred, build_dataset("folder", data, "all"))
    assert out["metrics"] == json.loads(json.dumps(expected)) and 0 < out["metrics"]["iou"] < 1
    assert out["metrics"] == json.loads((tmp_path / "metrics.json").read_text())
    listed = weakseg("--json", "list", "methods")
    assert list(json.loads(listed.stdout)["methods"]) == list_methods()


def test_quiet_prints_nothing_but_errors(tmp_path):
    data, pred = _mask_folder(tmp_path)
    args = ["evaluate", "--pred-dir", str(pred), "--dataset", "folder", "--root", str(data), "--split", "all"]
    loud, quiet = weakseg(*args), weakseg("--quiet", *args)
    assert loud.returncode == quiet.returncode == 0
    assert "iou" in loud.stdout and quiet.stdout == ""
    failed = weakseg("--quiet", "evaluate", "--pred-dir", str(tmp_path / "nosuch"), *args[3:])
    assert failed.returncode == 2 and "error" in failed.stderr


def test_progress_bars_show_rate_and_eta_and_obey_quiet(monkeypatch):
    from types import SimpleNamespace

    from rich.progress import TimeRemainingColumn

    from weakseg.progress import RateColumn, progress_bar, quiet, set_quiet

    monkeypatch.delenv("WEAKSEG_QUIET", raising=False)
    bar = progress_bar()
    assert not bar.disable and any(isinstance(c, RateColumn) for c in bar.columns)
    assert any(isinstance(c, TimeRemainingColumn) for c in bar.columns)
    rate = RateColumn()
    assert rate.render(SimpleNamespace(finished_speed=None, speed=12.34)).plain == "12.3/s"
    assert rate.render(SimpleNamespace(finished_speed=None, speed=0.5)).plain == "2.0 s/it"
    assert rate.render(SimpleNamespace(finished_speed=None, speed=None)).plain == ""
    set_quiet(True)
    try:
        assert quiet() and progress_bar().disable and progress_bar(True).disable
    finally:
        set_quiet(False)
    assert not quiet() and progress_bar(False).disable
