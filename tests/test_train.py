"""The training loop learns, keeps the best checkpoint, logs every epoch and resumes."""

from __future__ import annotations

import csv

import pytest
import torch

from tests.synthetic import blob_split
from weakseg.config import TrainConfig
from weakseg.evaluate import evaluate_model
from weakseg.models import build_model, load_model
from weakseg.runtime import seed_everything
from weakseg.train import fit

CPU = torch.device("cpu")


def read_log(path) -> list[dict[str, str]]:
    with open(path) as fh:
        return list(csv.DictReader(fh))


def small_config(**kw) -> TrainConfig:
    base = {"epochs": 3, "batch_size": 8, "lr": 3e-3, "loss": "ce+dice", "progress": False}
    return TrainConfig(**(base | kw))


def test_fit_learns_blobs_and_writes_checkpoints_and_log(tmp_path):
    train, val = blob_split(48, seed=0), blob_split(16, seed=1)
    model = build_model("unet", classes=2, weights="imagenet")
    before = evaluate_model(model, val, CPU)["iou"]
    result = fit(model, train, val, small_config(epochs=4), tmp_path, CPU, seed=0)
    after = evaluate_model(model, val, CPU)["iou"]
    assert after > 0.6 and after > before + 0.2
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()
    rows = read_log(tmp_path / "log.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert result.best_score == pytest.approx(max(float(r["val_iou"]) for r in rows))
    best = load_model(tmp_path / "best.pt")
    assert evaluate_model(best, val, CPU)["iou"] == pytest.approx(after, abs=1e-6)


def test_resume_continues_after_the_last_finished_epoch(tmp_path):
    train, val = blob_split(16, seed=0), blob_split(8, seed=1)
    first = fit(build_model("unet", weights=None), train, val, small_config(epochs=2), tmp_path, CPU, seed=3)
    resumed = fit(build_model("unet", weights=None), train, val, small_config(epochs=3), tmp_path, CPU, seed=3)
    assert len(resumed.history) == 3
    assert resumed.history[:2] == first.history
    rows = read_log(tmp_path / "log.csv")
    assert len(rows) == 3


def test_a_different_setup_does_not_resume(tmp_path):
    train = blob_split(16, seed=0)
    fit(build_model("unet", weights=None), train, None, small_config(epochs=2), tmp_path, CPU, seed=0)
    other = fit(build_model("unet", weights=None), train, None, small_config(epochs=1, lr=1e-4), tmp_path, CPU)
    assert len(other.history) == 1


def test_same_seed_gives_the_same_training(tmp_path):
    train = blob_split(16, seed=0)
    seed_everything(7)  # the decoder's initialisation is seeded too
    a = fit(build_model("unet", weights=None), train, None, small_config(epochs=1), tmp_path / "a", CPU, seed=7)
    seed_everything(7)
    b = fit(build_model("unet", weights=None), train, None, small_config(epochs=1), tmp_path / "b", CPU, seed=7)
    assert a.history[0]["train_loss"] == pytest.approx(b.history[0]["train_loss"], rel=1e-5)


def test_binary_mode_trains_with_bce(tmp_path):
    train = blob_split(16, seed=0)
    model = build_model("deeplabv3", classes=2, weights=None, mode="binary")
    result = fit(model, train, train, small_config(epochs=1, loss="bce+dice"), tmp_path, CPU)
    assert torch.isfinite(torch.tensor(result.history[0]["train_loss"]))
