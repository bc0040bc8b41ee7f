"""The training loop learns, keeps the best checkpoint, logs every epoch and resumes."""

from __future__ import annotations

import csv

import pytest
import torch
from pydantic import ValidationError

import weakseg.train as train_module
from tests.synthetic import blob_split
from weakseg.config import TrainConfig
from weakseg.errors import ConfigError, TrainingDivergedError
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


def trained(out_dir, train, val, config: TrainConfig, seed: int = 3, **model_options):
    """A fresh model built the same way each time, fitted into ``out_dir``; returns (model, result)."""
    seed_everything(seed)
    model = build_model("unet", weights=None, **model_options)
    return model, fit(model, train, val, config, out_dir, CPU, seed=seed)


def weights(path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def assert_same_weights(actual: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in expected.items():
        torch.testing.assert_close(actual[key], value, rtol=0, atol=1e-6, msg=key)


def test_an_interrupted_and_resumed_run_equals_the_uninterrupted_one(tmp_path):
    train, val = blob_split(16, seed=0), blob_split(8, seed=1)
    config = small_config(epochs=4, patience=0, augment=["hflip", "vflip"])  # patience 0: any plateau halves lr
    stochastic = {"drop_path_rate": 0.2}  # stochastic depth draws from torch's global random stream
    _, whole = trained(tmp_path / "a", train, val, config, **stochastic)
    trained(tmp_path / "b", train, val, config.model_copy(update={"epochs": 2}), **stochastic)  # stopped after 2
    _, resumed = trained(tmp_path / "b", train, val, config, **stochastic)

    lrs = [r["lr"] for r in whole.history]
    assert len(set(lrs)) > 1, "the learning-rate schedule must act for this test to check its resume"
    assert [r["epoch"] for r in resumed.history] == [1, 2, 3, 4]
    for key in ("train_loss", "val_loss", "val_iou", "val_dice", "lr"):
        assert [r[key] for r in resumed.history] == pytest.approx([r[key] for r in whole.history], rel=1e-6), key
    assert (resumed.best_epoch, resumed.best_score) == (whole.best_epoch, pytest.approx(whole.best_score, rel=1e-6))
    assert_same_weights(weights(tmp_path / "b" / "last.pt"), weights(tmp_path / "a" / "last.pt"))
    assert_same_weights(weights(tmp_path / "b" / "best.pt"), weights(tmp_path / "a" / "best.pt"))
    assert [int(r["epoch"]) for r in read_log(tmp_path / "b" / "log.csv")] == [1, 2, 3, 4]


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


def test_binary_mode_learns_with_bce(tmp_path):
    train, val = blob_split(32, seed=0), blob_split(16, seed=1)
    seed_everything(0)
    model = build_model("unet", classes=2, weights="imagenet", mode="binary")  # one foreground logit
    before = evaluate_model(model, val, CPU)["iou"]
    result = fit(model, train, val, small_config(epochs=5, loss="bce+dice"), tmp_path, CPU)
    losses = [r["train_loss"] for r in result.history]
    assert losses[-1] < 0.5 * losses[0]
    # chance is about 0.1 (the blob's share of the image when predicting foreground everywhere)
    assert result.best_score > 0.7 and result.best_score > before + 0.4
    assert evaluate_model(model, val, CPU)["iou"] == pytest.approx(result.best_score, abs=1e-6)


def scripted(monkeypatch, scores: list[float]) -> dict[str, int]:
    """Validation returns the next of ``scores`` as IoU; counts the epochs trained and validated."""
    calls = {"train": 0, "validate": 0}
    train_one_epoch = train_module.train_one_epoch

    def counted_epoch(*args, **kw):
        calls["train"] += 1
        return train_one_epoch(*args, **kw)

    def validate(*args, **kw):
        score = scores[calls["validate"]]
        calls["validate"] += 1
        return {"loss": 1 - score, "iou": score, "dice": score}

    monkeypatch.setattr(train_module, "train_one_epoch", counted_epoch)
    monkeypatch.setattr(train_module, "validate", validate)
    return calls


def test_early_stop_ends_a_run_on_a_plateau_and_a_resume_trains_no_more(tmp_path, monkeypatch):
    train, val = blob_split(8, size=32, seed=0), blob_split(4, size=32, seed=1)
    calls = scripted(monkeypatch, [0.2, 0.5, 0.5, 0.4, 0.9, 0.9])  # best after epoch 2, no gain in 3 and 4
    config = small_config(epochs=6, early_stop=2)
    _, interrupted = trained(tmp_path, train, val, config.model_copy(update={"epochs": 3}))
    assert interrupted.stopped_epoch is None and len(interrupted.history) == 3
    model, result = trained(tmp_path, train, val, config)  # resumed: epoch 4 is the second without a gain
    assert result.stopped_epoch == 4 and [r["epoch"] for r in result.history] == [1, 2, 3, 4]
    assert (result.best_epoch, result.best_score) == (2, 0.5)
    assert calls == {"train": 4, "validate": 4}
    best = torch.load(tmp_path / "best.pt", weights_only=False)
    assert best["epoch"] + 1 == 2 and torch.load(tmp_path / "last.pt", weights_only=False)["stopped_epoch"] == 4
    assert_same_weights(model.state_dict(), best["model"])

    # A stopped run is finished: resuming it, even with more epochs allowed, trains and validates nothing.
    model, again = trained(tmp_path, train, val, config.model_copy(update={"epochs": 20}))
    assert calls == {"train": 4, "validate": 4}
    assert again.stopped_epoch == 4 and again.history == result.history and again.best_epoch == 2
    assert_same_weights(model.state_dict(), best["model"])
    assert [int(r["epoch"]) for r in read_log(tmp_path / "log.csv")] == [1, 2, 3, 4]

    # The stopping rule is not part of the setup: without it the same run goes on to ``epochs``.
    _, extended = trained(tmp_path, train, val, config.model_copy(update={"early_stop": None}))
    assert calls == {"train": 6, "validate": 6}
    assert extended.stopped_epoch is None and len(extended.history) == 6 and extended.best_epoch == 5


def test_early_stop_needs_validation(tmp_path):
    train = blob_split(4, size=32, seed=0)
    model = build_model("unet", weights=None)
    for val in (None, train.subset([])):
        with pytest.raises(ConfigError, match="early_stop") as err:
            fit(model, train, val, small_config(early_stop=2), tmp_path, CPU)
        assert "\n" not in str(err.value)
    with pytest.raises(ValidationError):
        small_config(early_stop=0)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """From the second epoch on the model's logits turn NaN: fit stops with a clear error at the first such
    batch, never steps the optimiser with it, and last.pt / best.pt hold epoch 1's finite weights."""
    train, val = blob_split(16, seed=0), blob_split(8, seed=1)
    model = build_model("unet", classes=2, weights="none")
    calls = {"n": 0}
    original = train_module.head_logits

    def poisoned(model, images, names):
        calls["n"] += 1
        logits = original(model, images, names)
        return {k: v * float("nan") for k, v in logits.items()} if calls["n"] > 2 else logits

    monkeypatch.setattr(train_module, "head_logits", poisoned)
    with pytest.raises(TrainingDivergedError, match=r"loss became nan in epoch 2/3, batch 1"):
        fit(model, train, val, small_config(), tmp_path, CPU, seed=0)  # 2 batches of 8 per epoch
    weights = torch.load(tmp_path / "last.pt", weights_only=False)
    assert weights["epoch"] == 0 and read_log(tmp_path / "log.csv")[-1]["epoch"] == "1"
    for state in (weights["model"], torch.load(tmp_path / "best.pt", weights_only=False)["model"]):
        assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())
    assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN batch never reached the weights
