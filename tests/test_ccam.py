"""C-CAM (issue 12): losses against direct formulas, pooled features, polarity, a tiny training, the method."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.synthetic import blob_split
from weakseg.config import RunConfig
from weakseg.data.prepared import PreparedSplit
from weakseg.data.transforms import Geometry
from weakseg.errors import ConfigError
from weakseg.pipeline import run
from weakseg.sources.ccam import (
    CCAMOptions,
    border_activation,
    build_ccam,
    ccam_losses,
    ccam_maps,
    cosine_similarity,
    parse_options,
    pooled_features,
    rank_weights,
    sim_max_loss,
    sim_min_loss,
    train_ccam,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True, scope="module")
def _fast_cpu():
    """One torch thread (``weakseg.pipeline.run`` keeps it: OMP_NUM_THREADS is set) and denormals flushed: tiny
    models on a shared, busy CPU run many times faster so (randomly initialised encoders make denormal
    gradients)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def squares(n: int, size: int = 64, seed: int = 0) -> PreparedSplit:
    """Bright squares (a quarter to half the side) on dark noise; the masks are the squares."""
    rng = np.random.default_rng(seed)
    images, masks = [], []
    for _ in range(n):
        image = rng.integers(0, 100, (3, size, size)).astype(np.uint8)
        mask = np.zeros((size, size), np.uint8)
        side = int(rng.integers(size // 4, size // 2))
        y, x = (int(v) for v in rng.integers(4, size - side - 4, 2))
        mask[y : y + side, x : x + side] = 1
        image[:, mask == 1] = rng.integers(170, 256, (3, 1)).astype(np.uint8)
        images.append(torch.from_numpy(image))
        masks.append(torch.from_numpy(mask))
    return PreparedSplit(
        names=[f"square_{i}" for i in range(n)],
        images=torch.stack(images),
        masks=torch.stack(masks),
        labels=[[0]] * n,
        boxes=[np.zeros((0, 4), np.float32)] * n,
        geometry=[Geometry(size, size, size, size)] * n,
        mask_classes=["background", "square"],
        tag_classes=["square"],
    )


def direct_cos(a: torch.Tensor, b: torch.Tensor) -> list[list[float]]:
    return [[min(max(float(x @ y) / (float(x.norm()) * float(y.norm())), 0.0005), 0.9995) for y in b] for x in a]


# ---------------------------------------------------------------------------------------------------- losses


def test_cosine_similarity_is_clamped_away_from_0_and_1():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-1.0, 0.0], [1.0, 1.0]])
    sim = cosine_similarity(a, a)
    torch.testing.assert_close(sim, torch.tensor(direct_cos(a, a)))
    assert sim[0, 0] == pytest.approx(0.9995) and sim[0, 1] == pytest.approx(0.0005)  # same / orthogonal
    assert sim[0, 2] == pytest.approx(0.0005) and sim[0, 3] == pytest.approx(math.sqrt(0.5))  # opposite / 45 deg


def test_rank_weights_follow_the_authors_example():
    # the authors' own example (core/loss.py __main__): descending rank 0, 1, 2, 3 -> exp(-(rank - 1) * alpha)
    example = torch.tensor([[1, 2, 3, 4], [2, 3, 1, 4], [4, 2, 1, 3]]).float()
    rank = torch.tensor([[3, 2, 1, 0], [2, 1, 3, 0], [0, 2, 3, 1]]).float()
    torch.testing.assert_close(rank_weights(example, 0.25), torch.exp(-(rank - 1) * 0.25))
    assert rank_weights(example, 0.0).eq(1).all()  # alpha 0: every pair counts alike


def test_the_three_loss_terms_equal_direct_formulas():
    torch.manual_seed(0)
    fg, bg, alpha = torch.rand(4, 6), torch.rand(4, 6), 0.25  # non-negative features, as after a ReLU

    def pull(v: torch.Tensor) -> float:
        sim = direct_cos(v, v)
        total = 0.0
        for row in sim:
            for value in row:
                rank = sum(other > value for other in row)  # 0-based, the image itself first
                total += -math.log(value) * math.exp(-(rank - 1) * alpha)
        return total / len(v) ** 2

    push = sum(-math.log(1 - s) for row in direct_cos(bg, fg) for s in row) / 16
    assert float(sim_max_loss(fg, alpha)) == pytest.approx(pull(fg), rel=1e-5)
    assert float(sim_min_loss(bg, fg)) == pytest.approx(push, rel=1e-5)
    terms = ccam_losses(fg, bg, alpha)
    assert set(terms) == {"pull_fg", "push", "pull_bg"}
    assert [float(t) for t in terms.values()] == pytest.approx([pull(fg), push, pull(bg)], rel=1e-5)


def test_losses_pull_alike_vectors_and_push_apart_fg_from_bg():
    fg = torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.0]])
    bg = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.1, 1.0]])
    assert float(sim_min_loss(bg, fg)) < float(sim_min_loss(fg, fg))  # fg far from bg: small push term
    assert float(sim_max_loss(fg)) < float(sim_max_loss(torch.cat([fg[:1], bg[:1]])))  # alike: small pull term


def test_pooled_features_are_means_of_p_times_f_and_1_minus_p_times_f():
    torch.manual_seed(1)
    features, maps = torch.randn(2, 3, 4, 5), torch.rand(2, 1, 4, 5)
    v_fg, v_bg = pooled_features(features, maps)
    for n in range(2):
        for c in range(3):
            assert float(v_fg[n, c]) == pytest.approx(float((maps[n, 0] * features[n, c]).sum()) / 20, abs=1e-6)
            assert float(v_bg[n, c]) == pytest.approx(float(((1 - maps[n, 0]) * features[n, c]).sum()) / 20, abs=1e-6)


# ---------------------------------------------------------------------------------------------------- polarity


def test_border_activation_tells_a_border_map_from_an_object_map():
    ring = torch.ones(1, 1, 20, 20)
    ring[..., 4:16, 4:16] = 0
    blob = 1 - ring
    assert border_activation(ring) > 0.5 > border_activation(blob)
    assert border_activation(ring) == pytest.approx(1.0)  # strips of 3 pixels: all on the ring


def test_flipping_the_polarity_swaps_foreground_and_background():
    torch.manual_seed(0)
    model = build_ccam(weights=None).eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        fg, bg, p = model(x)
        model.flip_polarity()
        fg2, bg2, p2 = model(x)
    assert model.flipped and p.shape == (2, 1, 4, 4)
    torch.testing.assert_close(p2, 1 - p)
    torch.testing.assert_close(fg2, bg)
    torch.testing.assert_close(bg2, fg)
    assert "polarity" in model.state_dict()  # the flip travels with the weights


@pytest.mark.parametrize(
    ("bias", "polarity", "flipped"), [(6.0, "auto", True), (-6.0, "auto", False), (6.0, "off", False)]
)
def test_a_map_high_on_the_border_after_the_first_epoch_is_flipped_once(tmp_path, bias, polarity, flipped):
    split = squares(8, size=32, seed=1)
    torch.manual_seed(0)
    model = build_ccam(weights=None)
    with torch.no_grad():  # the map starts near 1 (or 0) everywhere, the border included
        model.bn.bias.fill_(bias)
    options = CCAMOptions(epochs=2, batch_size=4, augment=[], polarity=polarity)
    result = train_ccam(model, split, options, tmp_path / "m.pt", CPU, progress=False)
    assert result.flipped is flipped and model.flipped is flipped
    assert (result.history[0]["border"] > 0.5) is (bias > 0)
    assert math.isnan(result.border) if polarity == "off" else result.border == result.history[0]["border"]
    if flipped:  # after the flip the map is low on the border
        assert result.history[1]["border"] < 0.5
    assert torch.load(tmp_path / "m.pt", weights_only=False)["flipped"] is flipped


# ---------------------------------------------------------------------------------------------------- training


def test_options_are_checked_and_name_the_bad_key():
    assert parse_options({}).frozen is False and parse_options({"init": "tags"}).frozen is True
    assert parse_options({"init": "tags", "freeze": False}).frozen is False
    with pytest.raises(ConfigError, match=r"method\.options\.epoch"):
        parse_options({"epoch": 3})
    with pytest.raises(ConfigError, match=r"method\.options\.init"):
        parse_options({"init": "moco"})


def test_ccam_learns_the_squares_and_resumes(tmp_path):
    # Measured with this setup (frozen ImageNet encoder, 24 squares, 3 epochs): IoU of the map (>= 0.5) with the
    # squares 0.59 to 0.64 over training seeds 0, 1, 2, where calling every pixel foreground scores 0.14 and a
    # frozen random encoder 0.11; the encoder trained jointly (4 epochs, 32 squares) gave 0.42 to 0.57, slower.
    split = squares(24, size=64, seed=0)
    torch.manual_seed(0)
    model = build_ccam()  # bundled ImageNet EfficientNet-Lite0
    options = CCAMOptions(epochs=3, batch_size=8, freeze=True)
    path = tmp_path / "ccam.pt"
    result = train_ccam(model, split, options, path, CPU, progress=False)
    maps = ccam_maps(model, split.images, [1.0], flip=True)
    assert maps.shape == (24, 64, 64) and maps.min() >= 0 and maps.max() <= 1
    truth = split.masks.bool()
    predicted = maps >= 0.5
    iou = float((predicted & truth).sum() / (predicted | truth).sum())
    everything = float(truth.sum() / truth.numel())
    assert iou > 0.35 > 2 * everything, (iou, everything)
    inside = (maps * truth).sum((1, 2)) / truth.sum((1, 2))
    outside = (maps * ~truth).sum((1, 2)) / (~truth).sum((1, 2))
    assert (inside > outside).float().mean() >= 0.9
    assert len(result.history) == 3 and path.with_suffix(".csv").is_file()
    again = build_ccam(weights=None)
    before = path.stat().st_mtime_ns
    rerun = train_ccam(again, split, options, path, CPU, progress=False)
    assert path.stat().st_mtime_ns == before and rerun.history == result.history  # finished: nothing retrained
    torch.testing.assert_close(again.state_dict(), model.state_dict())


# ---------------------------------------------------------------------------------------------------- method


def method_config(root, options: dict, refine: str = "otsu", **extra) -> RunConfig:
    data = {
        "dataset": {"name": "folder", "root": str(root), "train_split": "trainval", "test_split": "test"},
        "method": {"name": "ccam", "refine": refine, "options": options},
        "model": {"mode": "binary"},
        "classifier": {"epochs": 1, "batch_size": 4},
        "train": {"epochs": 1, "batch_size": 4, "loss": "bce+dice", "progress": False},
    }
    data["dataset"] |= {"size": 64, "val_fraction": 0.25}
    for key, value in extra.items():
        data[key] = data.get(key, {}) | value
    return RunConfig.model_validate(data)


FAST = {"epochs": 1, "batch_size": 4, "scales": [1.0], "flip": False}


def test_ccam_method_runs_end_to_end_and_counts_the_labels_it_reads(tmp_path, make_folder_dataset):
    truth = make_folder_dataset(n=10, splits={"trainval": list(range(8)), "test": [8, 9]})
    shared = tmp_path / "shared"
    results = run(method_config(truth.root, FAST), tmp_path / "a", data_root="/", progress=False, shared_dir=shared)
    stages = {r.stage: r.metrics for r in results}
    assert set(stages) == {"pseudo", "final"} and 0 <= stages["pseudo"]["iou"] <= 1
    assert stages["pseudo"]["ccam_flipped"] in (0, 1) and "ccam_flipped" in stages["final"]
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert labels["tags"] == labels["masks"] == 0  # ImageNet init: no label read
    assert {p.parent.name for p in shared.rglob("*.pt")} == {"ccam", "cams", "pseudo"}
    # another refinement reuses the trained model and its maps
    other = method_config(truth.root, FAST, refine="threshold:0.5", method={"segmenter": False})
    results = run(other, tmp_path / "b", data_root="/", progress=False, shared_dir=shared)
    assert [r.stage for r in results] == ["pseudo"]
    assert len(list(shared.glob("cams/*.pt"))) == 1 and len(list(shared.glob("pseudo/*.pt"))) == 2
    # the tag-trained (frozen) encoder with the class loss reads every training image's tags
    tagged = method_config(truth.root, FAST | {"init": "tags", "class_weight": 1.0}, method={"segmenter": False})
    results = run(tagged, tmp_path / "c", data_root="/", progress=False, shared_dir=shared)
    assert "classifier_accuracy" in results[0].metrics
    assert json.loads((tmp_path / "c" / "labels.json").read_text())["tags"] == 1 + 8  # image 1 has two tags
    assert {p.parent.name for p in shared.rglob("*.pt")} == {"ccam", "cams", "pseudo", "classifier"}


def test_tag_variants_refuse_a_dataset_whose_tags_tell_no_image_apart(tmp_path):
    # blob_split: every image tagged 'blob' (as Kvasir's 'polyp'); refused before any training
    train, test = blob_split(6, size=64, seed=0), blob_split(2, size=64, seed=1)
    for options in ({"init": "tags"}, {"class_weight": 1.0}):
        config = method_config(tmp_path, FAST | options)
        with pytest.raises(ConfigError, match="at least 2 tag classes"):
            run(config, tmp_path / "x", splits=(train, test), progress=False)
    assert not (tmp_path / "x" / "shared").exists()
    with pytest.raises(ConfigError, match=r"method\.options\.alpah"):
        run(method_config(tmp_path, {"alpah": 0.5}), tmp_path / "y", splits=(train, test), progress=False)


def test_maps_use_every_scale_and_the_flip():
    torch.manual_seed(0)
    model = build_ccam(weights=None).eval()
    images = squares(3, size=64).images
    one = ccam_maps(model, images, [1.0])
    fused = ccam_maps(model, images, [1.0, 2.0], flip=True, readout="sigmoid")
    assert one.shape == fused.shape == (3, 64, 64) and not torch.allclose(one, fused)
    assert float(fused.amin()) == 0 and float(fused.amax()) == pytest.approx(1, abs=1e-5)  # min-max per image
    z = model.logits(model.features(images.float() / 255))[:, 0]
    expected = F.interpolate(torch.sigmoid(z)[:, None], size=(64, 64), mode="bilinear", align_corners=False)[:, 0]
    expected = expected - expected.amin((1, 2), keepdim=True)
    expected = expected / (1e-7 + expected.amax((1, 2), keepdim=True))
    torch.testing.assert_close(ccam_maps(model, images, [1.0], readout="sigmoid"), expected, atol=1e-5, rtol=0)
