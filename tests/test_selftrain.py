"""Multi-task self-training (issue 11): tags -> classification branch -> CAM -> refine -> train, in rounds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.synthetic import tagged_blob_split
from weakseg.config import RunConfig, TrainConfig
from weakseg.errors import ConfigError
from weakseg.methods.selftrain import class_probabilities, pseudo_labels, self_training
from weakseg.methods.tags import quality
from weakseg.models import build_model, load_model
from weakseg.pipeline import RunContext, run
from weakseg.refine import Refiner, parse_pipeline
from weakseg.train import fit


def _config(**method) -> RunConfig:
    return RunConfig.model_validate(
        {
            "dataset": {"val_fraction": 0.2, "size": 128},
            "method": {"name": "selftrain", "refine": "otsu", "rounds": 1, "regenerate": "seg", **method},
            "model": {"mode": "multiclass"},
            "classifier": {"epochs": 8, "batch_size": 8, "lr": 2e-3},
            "train": {"epochs": 1, "batch_size": 8, "loss": "ce", "progress": False},
        }
    )


@pytest.fixture(scope="module")
def splits():
    return tagged_blob_split(24, size=128, seed=3), tagged_blob_split(6, size=128, seed=9)


@pytest.mark.slow
def test_rounds_regenerate_pseudo_labels_from_the_previous_rounds_model(tmp_path, splits):
    train, test = splits
    config = _config()
    results = run(config, tmp_path / "run", splits=splits, progress=False)
    assert [(r.stage, r.setting) for r in results] == [
        ("pseudo", {"round": 0}),
        ("final", {"round": 0}),
        ("pseudo", {"round": 1}),
        ("final", {"round": 1}),
    ]
    # Otsu on the branch's CAMs localises the blobs: well above labelling every pixel foreground
    assert results[0].metrics["iou"] > 1.5 * float((train.masks == 1).float().mean())
    # round 1's pseudo-labels are round 0's segmenter output refined by the pipeline: recompute them
    model = load_model(tmp_path / "run" / "round0" / "best.pt")
    assert model.num_tags == 2
    ctx = RunContext(config, tmp_path, torch.device("cpu"), train, train, None, test, None, tmp_path)
    soft = class_probabilities(model, train, ctx)[:, 1]
    with Refiner(parse_pipeline("otsu"), workers=1) as refiner:
        masks = refiner.map(list(train.images.permute(0, 2, 3, 1).numpy()), list(soft.numpy()))
    recomputed = quality(torch.from_numpy(np.stack(masks)), train.masks)
    assert results[2].metrics["iou"] == pytest.approx(recomputed["iou"], abs=0.01)
    # tags only: every training image's tags, the held-out images' tags for validation, no mask
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["masks"] == 0 and labels["tags"] == len(train)
    assert labels["by_use"]["validation"] == {"tags": round(0.2 * len(train))}

    # the same command again resumes every round from its checkpoints: identical results, nothing retrained
    stamps = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").glob("round*/*.pt")}
    again = run(config, tmp_path / "run", splits=splits, progress=False)
    assert [r.metrics for r in again] == [r.metrics for r in results]
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_the_tag_loss_trains_the_classification_branch_with_the_segmenter(tmp_path):
    # fit without a tag loss leaves the branch as it was; with one, it learns, and the tags are the split's
    split = tagged_blob_split(8, size=64, seed=1)
    config = TrainConfig(epochs=1, batch_size=4, loss="ce", progress=False)

    def branch_after(tag_weight: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = build_model("unet", classes=2, weights=None, tags=2)
        fit(model, split, None, config, tmp_path / str(tag_weight), torch.device("cpu"), tag_weight=tag_weight)
        return model.tag_classifier().get_classifier().weight.detach()

    torch.manual_seed(0)
    start = build_model("unet", classes=2, weights=None, tags=2).tag_classifier().get_classifier().weight.detach()
    torch.testing.assert_close(branch_after(0.0), start)
    assert not torch.allclose(branch_after(1.0), start)
    with pytest.raises(ConfigError, match="multi-task"):
        fit(
            build_model("unet", classes=2, weights=None),
            split,
            None,
            config,
            tmp_path / "x",
            torch.device("cpu"),
            tag_weight=1.0,
        )


def test_an_unknown_regeneration_source_is_a_config_error():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        _config(regenerate="dreams")


def _three_classes(split):
    """The blobs' masks with the tag's class: background / red / blue."""
    tags = torch.tensor([t[0] for t in split.labels])[:, None, None]
    split.masks = torch.where(split.masks == 1, 1 + tags, split.masks).to(torch.uint8)
    split.mask_classes = ["background", "red", "blue"]
    return split


def test_multiclass_pseudo_labels_give_each_foreground_pixel_its_strongest_tags_class(tmp_path):
    split = _three_classes(tagged_blob_split(3, size=32, seed=1))
    split.labels = [[0], [1], [1, 0]]  # the third image carries both tags
    maps = torch.zeros(3, 2, 32, 32)
    maps[:, 0, 4:12, 4:12] = 0.9  # each image's first tag: a square on the left
    maps[2, 1, 4:12, 8:20] = 1.0  # the third image's second tag (red): stronger, overlapping on the right
    ctx = RunContext(_config(), tmp_path, torch.device("cpu"), split, split, None, split, None, tmp_path)
    soft, labels = pseudo_labels(ctx, maps, parse_pipeline("threshold:0.5"))
    assert torch.equal(soft, (maps.max(1).values * 255).round().to(torch.uint8))
    assert torch.equal(labels[0, 4:12, 4:12], torch.full((8, 8), 1, dtype=torch.uint8))  # red
    assert torch.equal(labels[1, 4:12, 4:12], torch.full((8, 8), 2, dtype=torch.uint8))  # blue
    assert (labels[2, 4:12, 4:8] == 2).all() and (labels[2, 4:12, 8:20] == 1).all()  # blue, then red where stronger
    foreground = maps.max(1).values >= 0.5
    assert (labels[~foreground] == 0).all()


def test_an_image_with_several_tags_gets_a_multi_label_crf(tmp_path):
    split = _three_classes(tagged_blob_split(3, size=32, seed=1))
    split.labels = [[0], [1], [1, 0]]
    maps = torch.zeros(3, 2, 32, 32)
    maps[:, 0, 2:14, 2:14] = 1.0
    maps[2, 1, 16:30, 16:30] = 1.0  # the third image's second tag, apart from the first
    ctx = RunContext(_config(), tmp_path, torch.device("cpu"), split, split, None, split, None, tmp_path)
    pipeline = parse_pipeline("threshold:0.5 | crf:iters=3,compat_bilateral=0")  # the blobs are elsewhere
    _, labels = pseudo_labels(ctx, maps, pipeline)
    image = split.images[2].permute(1, 2, 0).contiguous().numpy()
    k = pipeline.label_map(image, maps[2].numpy())  # 0, then its tags in order: blue (tag 1), red (tag 0)
    assert set(np.unique(k).tolist()) == {0, 1, 2}
    np.testing.assert_array_equal(labels[2].numpy(), np.choose(k, [0, 2, 1]))
    with Refiner(pipeline) as refiner:  # one-tag images: the two-label CRF of their class
        one = refiner.map([split.images[0].permute(1, 2, 0).contiguous().numpy()], [maps[0].max(0).values.numpy()])
    np.testing.assert_array_equal(labels[0].numpy(), one[0] * 1)


def test_a_negative_image_gets_no_foreground(tmp_path):
    from weakseg.methods.selftrain import tag_maps

    split = tagged_blob_split(4, size=32, seed=1)
    split.tag_classes, split.labels = ["polyp", "none"], [[0], [1], [0], [1]]  # images 1 and 3: negatives
    ctx = RunContext(_config(), tmp_path, torch.device("cpu"), split, split, None, split, None, tmp_path)
    torch.manual_seed(0)
    model = build_model("unet", "tf_efficientnet_lite0", 2, None, tags=2, multilabel=True)
    for source in ("cam", "seg"):
        assert (tag_maps(model, ctx, source)[[1, 3]] == 0).all()
    assert tag_maps(model, ctx, "seg")[[0, 2]].amin() > 0  # probabilities: the positives' maps are not zeroed
    three = _three_classes(tagged_blob_split(4, size=32, seed=1))
    three.tag_classes, three.mask_classes = ["red", "none"], ["background", "red", "none"]
    ctx = RunContext(_config(), tmp_path, torch.device("cpu"), three, three, None, three, None, tmp_path)
    with pytest.raises(ConfigError, match="'none' is not a class"):
        self_training(ctx)


@pytest.mark.slow
def test_a_three_class_task_runs_from_tags_to_a_three_class_segmenter(tmp_path):
    train, test = (
        _three_classes(tagged_blob_split(24, size=128, seed=3)),
        _three_classes(tagged_blob_split(6, size=128, seed=9)),
    )
    results = run(_config(rounds=0), tmp_path / "run", splits=(train, test), progress=False)
    pseudo, final = (r.metrics for r in results)
    assert len(pseudo["iou_per_class"]) == len(final["iou_per_class"]) == 3
    assert load_model(tmp_path / "run" / "round0" / "best.pt").num_classes == 3
    # each blob is found with its colour's class (the classes swapped would score 0 on both)
    assert min(pseudo["iou_per_class"][1:]) > 0.1 and final["miou"] > 0
