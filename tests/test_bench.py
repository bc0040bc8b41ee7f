"""The training and CAM benchmarks compare equal work: tiny synthetic inputs, real models, real timings."""

from __future__ import annotations

import json
import statistics

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.synthetic import blob_split, tagged_blob_split
from weakseg.bench import bare_smp_loop, bench_cam, bench_sam, bench_train, weakseg_loop
from weakseg.errors import ConfigError
from weakseg.models import OFFLINE_ENCODER
from weakseg.models.classifier import build_classifier

CPU = torch.device("cpu")
TWO_LAYERS = ["net.blocks.5", "net.bn2"]


@pytest.fixture
def one_thread(monkeypatch):
    """One torch thread (the benchmarks keep it: OMP_NUM_THREADS set), restored afterwards: the test machine
    is shared, and oversubscribed threads make tiny timings crawl."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def classifier():
    torch.manual_seed(0)
    return build_classifier(OFFLINE_ENCODER, 2).eval()  # bundled ImageNet body, fresh 2-way head


@pytest.fixture(scope="module")
def tagged():
    return tagged_blob_split(8, size=64, seed=1)


def test_bench_train_alternates_pairs_of_equal_work(one_thread):
    split = blob_split(5, size=64)  # batches of 4 and 1: both sides drop the single-image batch
    result = bench_train(split, OFFLINE_ENCODER, batch_size=4, epochs=1, repeats=3, device="cpu")
    json.dumps(result)  # one JSON line
    assert result["pairs"] == 3 and len(result["pair_ratios"]) == 3
    assert result["orders"] == ["bare,weakseg", "weakseg,bare", "bare,weakseg"]
    assert result["ratio"] == statistics.median(result["pair_ratios"])
    assert result["images_seen"] == {"bare": [4, 4, 4], "weakseg": [4, 4, 4]}
    assert result["memory_format"].startswith("channels_last")
    assert result["warmup"]["images"] == 5 and result["warmup"]["timed"] is False
    for ratio, ours, bare, ours_s, bare_s in zip(
        result["pair_ratios"],
        result["weakseg_runs"],
        result["bare_runs"],
        result["weakseg_seconds"],
        result["bare_seconds"],
        strict=True,
    ):
        assert ours > 0 and bare > 0
        assert ratio == pytest.approx(ours / bare, rel=0.05)  # ratios of the same runs, unrounded
        assert ours == pytest.approx(4 / ours_s, rel=0.05) and bare == pytest.approx(4 / bare_s, rel=0.05)


def test_both_loops_train_the_same_images_and_write_checkpoints(tmp_path, one_thread):
    split = blob_split(6, size=64)
    bare_dir, ours_dir = tmp_path / "bare", tmp_path / "ours"
    bare_dir.mkdir()
    assert bare_smp_loop(split, OFFLINE_ENCODER, 4, 2, CPU, bare_dir, seed=0) == 12
    assert weakseg_loop(split, OFFLINE_ENCODER, 4, 2, CPU, ours_dir, seed=0) == 12
    state = torch.load(bare_dir / "last.pt", weights_only=False)
    assert state["epoch"] == 1 and state["optimizer"]["state"] and state["model"]
    conv = next(v for k, v in state["model"].items() if v.ndim == 4)
    assert torch.isfinite(conv).all()
    assert (ours_dir / "last.pt").is_file() and (ours_dir / "best.pt").is_file()


def test_bench_cam_two_layer_layercam_matches_grad_cam(classifier, tagged, one_thread):
    targets = [t[0] for t in tagged.labels]
    result = bench_cam(classifier, tagged.images, targets, "layercam", batch_size=4, repeats=2, layers=TWO_LAYERS)
    json.dumps(result)
    assert result["layers"] == TWO_LAYERS
    assert result["max_abs_diff"] < 1e-4
    assert result["orders"] == ["forward,weakseg,gradcam", "gradcam,weakseg,forward"]
    assert len(result["repeat_vs_gradcam"]) == 2 and len(result["runs"]["weakseg"]) == 2
    assert result["vs_gradcam"] == pytest.approx(statistics.median(result["repeat_vs_gradcam"]), abs=1e-3)
    assert min(result["weakseg_img_s"], result["gradcam_img_s"], result["forward_img_s"]) > 0


def test_bench_cam_default_layer_is_the_last_block(classifier, tagged, one_thread):
    result = bench_cam(classifier, tagged.images[:4], [0] * 4, "gradcam", batch_size=4, repeats=1)
    assert result["layers"] == ["net.bn2"] and result["max_abs_diff"] < 1e-4
    with pytest.raises(ConfigError, match="no layer named"):
        bench_cam(classifier, tagged.images[:4], [0] * 4, "layercam", batch_size=4, repeats=1, layers=["net.nope"])


@pytest.mark.parametrize(
    "args", [["--layers", "net.blocks.5", "--layers", "net.bn2"], ["--layers", "net.blocks.5,net.bn2"]]
)
def test_cli_bench_cam_passes_layers(monkeypatch, tagged, args):
    import weakseg.bench
    import weakseg.cli
    from weakseg.cli import app

    seen = {}

    def fake_bench_cam(model, images, targets, method, batch_size, repeats, layers=None):
        seen.update(method=method, layers=layers, images=len(images))
        return {"method": method, "layers": layers}

    monkeypatch.setattr(weakseg.cli, "_pet_trainval", lambda data_root, size: tagged)
    monkeypatch.setattr(weakseg.bench, "bench_cam", fake_bench_cam)
    result = CliRunner().invoke(app, ["bench", "cam", "--method", "layercam", "--images", "4", *args])
    assert result.exit_code == 0, result.output
    assert seen == {"method": "layercam", "layers": TWO_LAYERS, "images": 4}
    assert json.loads(result.output.strip().splitlines()[-1])["layers"] == TWO_LAYERS


def test_bench_sam_alternates_pairs_and_scores_the_fast_masks_against_the_baseline():
    """The same images through two option sets of one generator (here the painted box, rect against ellipse)."""
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    boxes = [np.float32([[5, 5, 30, 35]]), np.zeros((0, 4), np.float32), np.float32([[0, 0, 50, 40]])]
    same = bench_sam({"a": (images[:2], boxes[:2]), "b": (images[2:], boxes[2:])}, "box", {}, {}, pairs=3)
    json.dumps(same)  # one JSON line
    assert same["orders"] == ["baseline,fast", "fast,baseline", "baseline,fast"] and len(same["pair_ratios"]) == 3
    assert same["ratio"] == statistics.median(same["pair_ratios"])
    expected = {"images": 2, "iou_min": 1.0, "iou_min_image": 0, "iou_mean": 1.0, "changed_pixels": 0}
    assert same["iou_vs_baseline"]["a"] == expected
    assert same["quality_gate"] == {"min_iou": 0.99, "passed": True}
    other = bench_sam({"a": (images, boxes)}, "box", {}, {"shape_kind": "ellipse"}, pairs=1)
    quality = other["iou_vs_baseline"]["a"]
    assert 0.7 < quality["iou_min"] < 0.85 and quality["changed_pixels"] > 0  # an ellipse covers pi/4 of its box
    assert quality["iou_min_image"] in (0, 2) and not other["quality_gate"]["passed"]  # image 1 has no box: IoU 1
    assert other["fast"] != other["baseline"] and "loadavg_1m" in other["load"]["before"]
