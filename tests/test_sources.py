"""Supervision sources as training targets: soft loss, target batching, the multi-head loop with its strong-only
phase, box-prompted masks for a split, and the source methods end to end (masks, points, boxes, sam, multi)."""

from __future__ import annotations

import csv
import json

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tests.synthetic import blob_split
from weakseg.budget import Budget, point_masks
from weakseg.config import RunConfig, TrainConfig, load_run_config
from weakseg.data import build_dataset
from weakseg.data.prepared import draw, iterate_batches, prepare
from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError
from weakseg.losses import SoftCrossEntropy
from weakseg.methods.multisource import list_sources
from weakseg.models import build_model
from weakseg.pipeline import list_methods, run
from weakseg.sources.boxes import boxes_from_mask
from weakseg.sources.prompted import prompted_masks
from weakseg.sources.sam import build_mask_generator
from weakseg.sources.target import Target
from weakseg.train import epoch_order, fit, start_strong_phase


def test_target_knows_which_images_it_labels():
    labels = torch.full((3, 4, 4), IGNORE_INDEX, dtype=torch.uint8)
    labels[1, 0, 0] = 1
    assert Target("points", labels).labelled.tolist() == [False, True, False]
    assert Target("cam", labels, soft=True).labelled.tolist() == [True, True, True]
    with pytest.raises(ValueError):
        Target("masks", labels.long())


def test_soft_cross_entropy_equals_bce_on_the_logit_difference_and_hard_ce_on_hard_targets():
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 5, 5)
    q = torch.rand(2, 5, 5)
    expected = F.binary_cross_entropy_with_logits(logits[:, 1] - logits[:, 0], q)
    assert float(SoftCrossEntropy("multiclass")(logits, q)) == pytest.approx(float(expected), rel=1e-5)
    hard = (q > 0.5).float()
    assert float(SoftCrossEntropy()(logits, hard)) == pytest.approx(float(F.cross_entropy(logits, hard.long())))
    binary = torch.randn(2, 1, 5, 5)
    expected = F.binary_cross_entropy_with_logits(binary[:, 0], q)
    assert float(SoftCrossEntropy("binary")(binary, q)) == pytest.approx(float(expected))
    with pytest.raises(ConfigError):
        SoftCrossEntropy()(torch.randn(1, 3, 4, 4), q[:1, :4, :4])


def test_draw_repeats_a_small_set_and_flips_move_every_target_with_its_image():
    split = blob_split(3, size=32)
    # two targets per image, both a copy of the image's red channel, so a flip must move all three together
    split.masks = split.images[:, :1].repeat(1, 2, 1, 1)
    generator = torch.Generator().manual_seed(0)
    order = draw(torch.arange(3), 10, generator)
    assert len(order) == 10 and sorted(order[:9].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # whole passes first
    seen = []
    for images, masks, index in iterate_batches(
        split, 4, torch.device("cpu"), generator=generator, augment=["hflip", "vflip"], order=order
    ):
        seen += index
        red = (images[:, 0] * 255).round().long()
        assert torch.equal(masks[:, 0], red) and torch.equal(masks[:, 1], red)
    assert seen == order.tolist()


def test_balanced_epochs_give_each_head_an_equal_share_of_draws():
    labelled = torch.zeros(300, 2, dtype=torch.bool)
    labelled[:8, 0] = True  # full masks on 8 images (2.5 %)
    labelled[:, 1] = True  # CAM maps on all
    generator = torch.Generator().manual_seed(0)
    balanced = epoch_order(labelled, [0, 1], 300, True, generator)
    union = epoch_order(labelled, [0, 1], 300, False, generator)
    assert len(balanced) == len(union) == 300
    assert (balanced < 8).sum() >= 150 and (union < 8).sum() == 8
    strong = epoch_order(labelled, [0], 300, True, generator)
    assert (strong < 8).all() and len(strong) == 300
    assert len(epoch_order(labelled, [0], None, True, generator)) == 8  # no count: each labelled image once


def _head_weights(model, name):
    return torch.cat([p.detach().flatten().clone() for p in model.heads[name].parameters()])


def test_fit_learns_each_head_from_its_labelled_images_and_only_the_primary_at_the_end(tmp_path):
    split = blob_split(8, size=64)
    few = split.masks.clone()
    few[2:] = IGNORE_INDEX  # full masks on 2 images only
    boxes = torch.zeros_like(split.masks)
    for i, m in enumerate(split.masks):
        ys, xs = m.nonzero(as_tuple=True)
        boxes[i, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1] = 1
    targets = [Target("masks", few), Target("boxes", boxes, weight=0.5), Target("cam", split.masks * 255, soft=True)]
    config = TrainConfig(epochs=5, batch_size=4, progress=False, epoch_images=8, strong_only=0.4, amp=False)

    def trained(strong_only: float, out: str):
        torch.manual_seed(0)
        model = build_model("unet", classes=2, weights=None, heads=["masks", "boxes", "cam"])
        before = {n: _head_weights(model, n) for n in ("masks", "boxes")}
        cfg = config.model_copy(update={"strong_only": strong_only})
        fit(model, split, None, cfg, tmp_path / out, torch.device("cpu"), targets=targets)
        return model, before

    model, before = trained(0.4, "mixed")
    with open(tmp_path / "mixed" / "log.csv") as fh:
        heads = [row["heads"] for row in csv.DictReader(fh)]
    assert heads == ["masks+boxes+cam"] * 3 + ["masks"] * 2
    assert not torch.equal(_head_weights(model, "boxes"), before["boxes"])
    model, before = trained(1.0, "strong")  # the whole run strong-only: the other heads never move
    assert torch.equal(_head_weights(model, "boxes"), before["boxes"])
    assert not torch.equal(_head_weights(model, "masks"), before["masks"])


def test_strong_phase_fine_tunes_at_a_lower_rate_from_a_weak_head(tmp_path):
    split = blob_split(8, size=64)
    few = split.masks.clone()
    few[2:] = IGNORE_INDEX
    targets = [Target("masks", few), Target("sam", split.masks)]
    config = TrainConfig(epochs=4, batch_size=4, progress=False, epoch_images=8, strong_only=0.5, amp=False)
    model = build_model("unet", classes=2, weights=None, heads=["masks", "sam"])
    fine_tuned = config.model_copy(update={"strong_lr": 0.1})
    fit(model, split, None, fine_tuned, tmp_path, torch.device("cpu"), targets=targets)
    with open(tmp_path / "log.csv") as fh:
        rates = [float(row["lr"]) for row in csv.DictReader(fh)]
    assert rates == pytest.approx([1e-3, 1e-3, 1e-4, 1e-4])

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    assert not torch.equal(_head_weights(model, "masks"), _head_weights(model, "sam"))
    start_strong_phase(model, optimizer, "masks", config.model_copy(update={"strong_init": "sam"}))
    assert torch.equal(_head_weights(model, "masks"), _head_weights(model, "sam"))
    assert optimizer.param_groups[0]["lr"] == 1e-3  # strong_lr 1: unchanged
    wrong = config.model_copy(update={"strong_init": "boxes"})
    with pytest.raises(ConfigError, match="no head 'boxes'"):  # before any training
        fit(model, split, None, wrong, tmp_path / "wrong", torch.device("cpu"), targets=targets)
    assert not (tmp_path / "wrong").exists()


def test_fit_rejects_targets_without_heads(tmp_path):
    split = blob_split(4, size=32)
    model = build_model("unet", classes=2, weights=None)
    targets = [Target("masks", split.masks), Target("boxes", split.masks)]
    with pytest.raises(ConfigError, match="multi-head"):
        fit(model, split, None, TrainConfig(epochs=1, progress=False), tmp_path, torch.device("cpu"), targets=targets)
    multi = build_model("unet", classes=2, weights=None, heads=["masks", "cam"])
    with pytest.raises(ConfigError, match="no head"):
        fit(multi, split, None, TrainConfig(epochs=1, progress=False), tmp_path, torch.device("cpu"), targets=targets)
    cam_only = [Target("cam", split.masks * 255, soft=True)]
    with pytest.raises(ConfigError, match="primary head 'masks' has no target"):
        fit(multi, split, None, TrainConfig(epochs=1, progress=False), tmp_path, torch.device("cpu"), targets=cam_only)


def test_prompted_masks_are_cached_at_native_size_fitted_like_the_truth_and_ignore_boxless_images(
    tmp_path, make_folder_dataset
):
    truth = make_folder_dataset(n=4)
    ds = build_dataset("folder", truth.root, "all")
    names = list(ds.names)
    ds._boxes[names[3]] = np.zeros((0, 4), np.float32)  # an image without a box: unlabelled
    generator = build_mask_generator("box")
    masks = prompted_masks(ds, names, generator, tmp_path / "cache", 32, progress=False)
    assert masks.shape == (4, 32, 32) and (masks[3] == IGNORE_INDEX).all()
    pngs = sorted((tmp_path / "cache").rglob("*.png"))
    assert len(pngs) == 3 and generator.model_calls == 3
    again = prompted_masks(ds, names, generator, tmp_path / "cache", 32, progress=False)
    assert torch.equal(again, masks) and generator.model_calls == 3  # read from the cache
    # the box mask covers the object: recall 1 against the fitted ground truth
    gt = torch.from_numpy(
        np.stack([cv2.resize(truth.masks[n], (32, 32), interpolation=cv2.INTER_NEAREST) for n in names[:3]])
    )
    assert ((masks[:3] == 1) | (gt == 0)).all()


def test_sources_and_methods_are_registered():
    assert {"masks", "points", "boxes", "sam", "cam"} <= set(list_sources())
    assert {"full", "masks", "points", "boxes", "sam", "multi"} <= set(list_methods())


def _config(**method) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"name": "oxford_pet", "root": ".", "size": 64, "val_fraction": 0.2},
            "budget": {"coverage": 25, "boxes": 100, "density": 5},
            "method": method,
            "classifier": {"epochs": 1, "batch_size": 16},
            "train": {"epochs": 2, "batch_size": 8, "progress": False, "epoch_images": 16, "strong_only": 0.5},
        }
    )


def test_source_methods_end_to_end_on_the_demo_sample(tmp_path, demo_root):
    shared = tmp_path / "shared"
    boxes = run(_config(name="boxes"), tmp_path / "boxes", demo_root, progress=False, shared_dir=shared)
    assert [r.stage for r in boxes] == ["pseudo", "final"]
    # head boxes cover part of a pet: precise, low recall
    assert boxes[0].metrics["precision"] > 0.7 and boxes[0].metrics["recall"] < 0.6
    sam = run(_config(name="sam", generator="box"), tmp_path / "sam", demo_root, progress=False, shared_dir=shared)
    # the 'box' generator at native resolution gives the same pseudo-labels as the boxes, up to resampling
    assert sam[0].metrics["iou"] == pytest.approx(boxes[0].metrics["iou"], abs=0.03)
    # one cached mask per trainval image with a head box: training images and validation images
    assert len(list((shared / "masks").rglob("*.png"))) == len(list(demo_root.glob("annotations/xmls/*.xml")))
    points = run(_config(name="points"), tmp_path / "points", demo_root, progress=False, shared_dir=shared)
    assert [r.stage for r in points] == ["final"]
    # points only: training and validation both spend points, never a mask; the count is every labelled pixel
    labels = json.loads((tmp_path / "points" / "labels.json").read_text())
    assert labels["masks"] == 0 and labels["by_use"]["validation"] == {
        "points": labels["by_use"]["validation"]["points"]
    }
    train_full = prepare(build_dataset("oxford_pet", demo_root, "trainval"), 64, progress=False)
    budget = Budget(density=5.0, seed=0)
    expected = int((point_masks(train_full.masks, train_full.names, budget) != IGNORE_INDEX).sum())
    assert labels["points"] == expected and labels["images"]["points"] == len(train_full)
    multi = _config(name="multi", sources=["cam", "masks", "sam"], generator="box", weights={"cam": 0.5})
    results = run(multi, tmp_path / "multi", demo_root, progress=False, shared_dir=shared)
    assert [r.stage for r in results] == ["final"]
    with open(tmp_path / "multi" / "log.csv") as fh:
        assert [row["heads"] for row in csv.DictReader(fh)] == ["masks+cam+sam", "masks"]
    budget = json.loads((tmp_path / "multi" / "budget.json").read_text())
    assert len(budget["masks"]) == round(0.25 * budget["images"])
    # masks for training and validation are the budget's masks, no more; boxes are the dataset's head boxes
    labels = json.loads((tmp_path / "multi" / "labels.json").read_text())
    assert labels["masks"] == len(budget["masks"]) and labels["by_use"]["validation"]["masks"] >= 1
    boxed = {p.stem for p in demo_root.glob("annotations/xmls/*.xml")}  # one head box each; validation uses masks
    assert labels["boxes"] == len(boxed - set(budget["validation"])) and set(budget["validation"]) <= set(
        budget["masks"]
    )
    picture = cv2.imread(str(tmp_path / "multi" / "source_examples.png"))
    assert picture.shape[1] == 5 * picture.shape[0] // 6  # image, 3 sources, ground truth; 6 rows
    checkpoint = torch.load(tmp_path / "multi" / "best.pt", weights_only=False)
    assert checkpoint["model_spec"]["heads"] == ["masks", "cam", "sam"]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ({"name": "multi", "sources": ["masks", "clicks"]}, r"method\.sources"),
        ({"name": "multi", "sources": ["masks"], "weights": {"cam": 1}}, r"method\.weights"),
    ],
)
def test_bad_sources_fail_before_training(tmp_path, demo_root, method, message):
    with pytest.raises(ConfigError, match=message):
        run(_config(**method), tmp_path, demo_root, progress=False)


def test_sources_needing_a_budget_say_so(tmp_path, demo_root):
    config = _config(name="boxes")
    config.budget.boxes = 0
    with pytest.raises(ConfigError, match=r"budget\.boxes"):
        run(config, tmp_path / "a", demo_root, progress=False)
    config = _config(name="points")
    config.budget.density = None
    with pytest.raises(ConfigError, match=r"budget\.density"):
        run(config, tmp_path / "b", demo_root, progress=False)


def test_plot_draws_a_line_per_series_and_references_flat(tmp_path):
    from weakseg.experiments.plot import plot_results

    def row(setting, mean):
        return {"setting": {"method": "multi", **setting}, "metrics": {"dice": {"mean": mean, "std": 0.01, "n": 3}}}

    results = {
        "experiment": "sweep",
        "rows": [
            row({"coverage": 2.5, "sources": ["masks"]}, 0.7),
            row({"coverage": 10, "sources": ["masks"]}, 0.8),
            row({"coverage": 2.5, "sources": ["masks", "cam"]}, 0.85),
            row({"sources": ["masks"]}, 0.9),  # the reference: no coverage setting
        ],
    }
    out = plot_results(results, "coverage", "dice", "sources", tmp_path / "p.png")
    image = cv2.imread(str(out))
    assert image is not None and image.shape[0] > 300 and image.std() > 10
    with pytest.raises(ConfigError, match="no 'final' rows"):
        plot_results(results, "coverage", "iou", None, tmp_path / "q.png")
    with pytest.raises(ConfigError, match="numeric setting"):
        plot_results(results, "density", "dice", None, tmp_path / "q.png")


def test_boxes_from_mask_box_each_object_and_skip_specks():
    mask = np.zeros((50, 80), np.uint8)
    mask[5:20, 10:30] = 1
    mask[30:45, 50:75] = 1
    mask[0, 79] = 1  # a speck
    mask[25, :] = IGNORE_INDEX  # ignore is not an object
    boxes = boxes_from_mask(mask)
    assert sorted(boxes.tolist()) == [[10, 5, 30, 20], [50, 30, 75, 45]]
    assert boxes_from_mask(np.zeros((4, 4), np.uint8)).shape == (0, 4)


def test_object_boxes_from_masks_cover_whole_pets(tmp_path, demo_root):
    config = _config(name="boxes", boxes_from="masks", segmenter=False)
    result = run(config, tmp_path / "a", demo_root, progress=False)[0].metrics
    assert result["recall"] > 0.97 and result["iou"] > 0.6  # whole-pet boxes, unlike the head boxes
    sam = _config(name="sam", boxes_from="masks", segmenter=False, generator="box")
    again = run(sam, tmp_path / "b", demo_root, progress=False)[0].metrics
    assert again["iou"] == pytest.approx(result["iou"], abs=0.03)


def test_generator_options_reach_the_generator_and_are_checked_first(tmp_path, demo_root):
    shared = tmp_path / "shared"
    rect = _config(name="sam", boxes_from="masks", segmenter=False, generator="box")
    ellipse = _config(
        name="sam", boxes_from="masks", segmenter=False, generator="box", generator_options={"shape_kind": "ellipse"}
    )
    boxes = run(rect, tmp_path / "rect", demo_root, progress=False, shared_dir=shared)[0].metrics
    round_ = run(ellipse, tmp_path / "ellipse", demo_root, progress=False, shared_dir=shared)[0].metrics
    assert round_["recall"] < boxes["recall"] - 0.05  # the inscribed ellipse leaves the box corners out
    assert len(list((shared / "masks").iterdir())) == 2  # one cache per generator identity
    with pytest.raises(ConfigError, match=r"method: mask generator 'litemedsam'.*thresh"):
        load_run_config(None, ["method.generator_options.thresh=0.1"])
    with pytest.raises(ConfigError, match="unknown mask generator 'sam_vit_x'"):
        load_run_config(None, ["method.generator=sam_vit_x"])
