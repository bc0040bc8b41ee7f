"""Image tags -> classifier -> CAM -> refinement -> pseudo-labels -> segmenter (issue 3)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.synthetic import tagged_blob_split
from weakseg.cams import GradCAM, build_cam
from weakseg.classify import evaluate_classifier, random_resized_crop, train_classifier
from weakseg.cli import app
from weakseg.config import CamConfig, ClassifierConfig, RunConfig
from weakseg.data import build_dataset
from weakseg.errors import ConfigError
from weakseg.evaluate import evaluate_mask_folder
from weakseg.metrics import ConfusionMatrix
from weakseg.models.classifier import build_classifier, load_classifier
from weakseg.pipeline import list_methods, run
from weakseg.pseudo import pseudo_label_dataset
from weakseg.sources.cam import cam_maps, resolve_layers

FAST = ClassifierConfig(epochs=8, batch_size=8, lr=2e-3)


@pytest.fixture(scope="module")
def tagged():
    return tagged_blob_split(48, size=128, seed=3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tagged):
    """A classifier fine-tuned on the red/blue blob tags (bundled ImageNet weights)."""
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 2)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    result = train_classifier(model, tagged, FAST, path, torch.device("cpu"), seed=0, progress=False)
    return model.eval(), path, result


def test_classifier_wraps_timm_with_normalisation_inside():
    model = build_classifier("tf_efficientnet_lite0", 3).eval()
    x = torch.rand(2, 3, 64, 64)
    assert model(x).shape == (2, 3)
    expected = model.net((x - 0.5) / 0.5)  # the bundled weights expect mean = std = 0.5
    torch.testing.assert_close(model(x), expected)
    assert model.target_layers() == [model.net.bn2]


def test_cam_through_the_wrapper_equals_cam_on_the_raw_timm_model():
    model = build_classifier("tf_efficientnet_lite0", 3).eval()
    x = torch.rand(2, 3, 64, 64)
    with GradCAM(model) as wrapped, GradCAM(model.net, [model.net.bn2]) as raw:
        torch.testing.assert_close(wrapped(x, [0, 2]), raw((x - 0.5) / 0.5, [0, 2]))
        assert wrapped._fast_ok  # the head-only gradient path is taken through the wrapper


def test_random_resized_crop_keeps_shape_and_varies_per_image():
    generator = torch.Generator().manual_seed(0)
    ramp = torch.linspace(0, 1, 32).expand(4, 3, 32, 32).contiguous()
    out = random_resized_crop(ramp, generator, scale=(0.2, 0.5))
    assert out.shape == ramp.shape
    assert not torch.allclose(out[0], out[1])  # each image gets its own crop
    assert out.min() >= 0 and out.max() <= 1
    full = random_resized_crop(ramp, generator, scale=(1.0, 1.0), ratio=(1.0, 1.0))
    assert (full - ramp).abs().max() < 0.02  # the whole image: (almost) itself


def test_classifier_learns_tags_and_resumes(trained, tagged, tmp_path):
    model, path, result = trained
    assert evaluate_classifier(model, tagged, torch.device("cpu")) >= 0.9
    assert len(result.history) == FAST.epochs and path.with_suffix(".csv").is_file()
    again = build_classifier("tf_efficientnet_lite0", 2)
    before = path.stat().st_mtime_ns
    rerun = train_classifier(again, tagged, FAST, path, torch.device("cpu"), seed=0, progress=False)
    assert path.stat().st_mtime_ns == before  # finished: nothing retrained
    assert rerun.history == result.history
    torch.testing.assert_close(again.state_dict(), model.state_dict())
    loaded = load_classifier(path).eval()
    x = tagged.images[:4].float() / 255
    torch.testing.assert_close(loaded(x), model(x))


def test_cam_maps_highlight_the_tagged_blob(trained, tagged):
    model, _, _ = trained
    maps = cam_maps(model, tagged.images, tagged.labels, "gradcam", CamConfig(batch_size=16))
    assert maps.shape == (48, 128, 128) and maps.min() >= 0 and maps.max() <= 1
    inside = (maps * tagged.masks).sum((1, 2)) / tagged.masks.sum((1, 2))
    outside = (maps * (1 - tagged.masks)).sum((1, 2)) / (1 - tagged.masks).sum((1, 2))
    assert (inside > outside).float().mean() >= 0.8
    fused = cam_maps(model, tagged.images[:8], tagged.labels[:8], "gradcam", CamConfig(scales=[1.0, 1.5], flip=True))
    assert fused.shape == (8, 128, 128) and not torch.allclose(fused, maps[:8])


def test_named_target_layers_and_clear_error(trained):
    model, _, _ = trained
    assert resolve_layers(model, ["net.bn2"]) == [model.net.bn2]
    with pytest.raises(Exception, match="no layer named"):
        resolve_layers(model, ["net.layer4"])


@pytest.mark.parametrize("method", ["cam", "gradcam++", "hirescam", "fullgrad"])
def test_every_cam_method_gives_maps_for_the_classifier(trained, tagged, method):
    model, _, _ = trained
    with build_cam(method, model) as cam:
        maps = cam(tagged.images[:4].float() / 255, [t[0] for t in tagged.labels[:4]])
    assert maps.shape == (4, 128, 128) and float(maps.amax()) > 0.9


def test_cam_methods_are_training_methods():
    assert {"cam", "gradcam", "gradcam++", "hirescam", "fullgrad"} <= set(list_methods())


def test_tags_method_end_to_end_reuses_shared_artefacts(tmp_path, tagged):
    config = RunConfig.model_validate(
        {
            "dataset": {"val_fraction": 0.2, "size": 128},
            "method": {"name": "gradcam", "refine": "otsu | lcc"},
            "model": {"mode": "binary"},
            "classifier": {"epochs": 8, "batch_size": 8, "lr": 2e-3},
            "train": {"epochs": 1, "batch_size": 8, "loss": "bce+dice", "progress": False},
        }
    )
    shared = tmp_path / "shared"
    test = tagged_blob_split(12, size=128, seed=9)
    results = run(config, tmp_path / "a", splits=(tagged, test), progress=False, shared_dir=shared)
    stages = {r.stage: r.metrics for r in results}
    assert set(stages) == {"pseudo", "final"}
    assert stages["pseudo"]["iou"] > 0.3  # otsu on the blob CAMs finds the blobs, roughly
    assert stages["final"]["classifier_accuracy"] >= 0.5
    # tags only: the classifier saw every training image's tags, validation the held-out images' tags; no mask
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert labels["masks"] == 0 and labels["tags"] == len(tagged)
    assert labels["by_use"]["validation"] == {"tags": round(0.2 * len(tagged))}
    assert (tmp_path / "a" / "pseudo_examples.png").is_file()
    kinds = {p.parent.name for p in shared.rglob("*.pt")}
    assert kinds == {"classifier", "cams", "pseudo"}
    cams_before = sorted(shared.glob("cams/*.pt"))
    # Another refinement reuses the classifier and maps, and adds only its own pseudo-labels.
    other = config.model_copy(update={"method": config.method.model_copy(update={"refine": "threshold:0.5"})})
    other = other.model_copy(update={"method": other.method.model_copy(update={"segmenter": False})})
    results = run(other, tmp_path / "b", splits=(tagged, test), progress=False, shared_dir=shared)
    assert [r.stage for r in results] == ["pseudo"]
    assert sorted(shared.glob("cams/*.pt")) == cams_before and len(list(shared.glob("pseudo/*.pt"))) == 2
    # The pseudo metrics equal a direct count on the stored masks.
    masks = torch.load(next(p for p in shared.glob("pseudo/*.pt") if "threshold" in p.with_suffix(".json").read_text()))
    cm = ConfusionMatrix(2)
    cm.update(masks, tagged.masks)
    assert results[0].metrics["iou"] == pytest.approx(cm.compute()["iou"])


def test_pseudo_label_dataset_streams_resumes_and_scores(tmp_path, demo_root):
    dataset = build_dataset("oxford_pet", demo_root, "test")
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", len(dataset.tag_classes)).eval()
    out = tmp_path / "pseudo"
    report = pseudo_label_dataset(
        dataset, model, out, "gradcam", "otsu | lcc", size=96, overlays=True, workers=1, chunk=5, progress=False
    )
    assert report.written == len(dataset) and report.skipped == 0
    for name in dataset.names:
        mask = np.asarray(cv2.imread(str(out / "masks" / f"{name}.png"), 0))
        assert mask.shape == dataset.load(name).size and set(np.unique(mask)) <= {0, 255}
    assert len(list((out / "soft").glob("*.png"))) == len(dataset) and any((out / "overlays").glob("*.jpg"))
    (out / "masks" / f"{dataset.names[0]}.png").unlink()
    again = pseudo_label_dataset(dataset, model, out, "gradcam", "otsu | lcc", size=96, workers=1, progress=False)
    assert (again.written, again.skipped) == (1, len(dataset) - 1)
    metrics = evaluate_mask_folder(out / "masks", dataset)
    assert 0 < metrics["iou"] < 1


def test_pseudo_label_folder_made_with_other_settings_is_refused_or_replaced(tmp_path, demo_root):
    dataset = build_dataset("oxford_pet", demo_root, "test")
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", len(dataset.tag_classes)).eval()
    out = tmp_path / "pseudo"
    pseudo_label_dataset(dataset, model, out, "gradcam", "otsu", size=64, soft=False, workers=1, progress=False)
    first = {p.name: p.read_bytes() for p in (out / "masks").iterdir()}
    with pytest.raises(ConfigError, match=r"other settings \(method\)"):
        pseudo_label_dataset(dataset, model, out, "gradcam++", "otsu", size=64, soft=False, workers=1, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == first  # nothing lost
    with torch.no_grad():  # other classifier weights are other settings too
        next(model.parameters()).add_(0.01)
    with pytest.raises(ConfigError, match="classifier"):
        pseudo_label_dataset(dataset, model, out, "gradcam", "otsu", size=64, soft=False, workers=1, progress=False)
    report = pseudo_label_dataset(
        dataset, model, out, "gradcam", "threshold", size=64, soft=False, workers=1, progress=False, overwrite=True
    )
    assert (report.written, report.skipped) == (len(dataset), 0)  # every mask made again, none kept from before
    fresh = tmp_path / "fresh"
    pseudo_label_dataset(dataset, model, fresh, "gradcam", "threshold", size=64, soft=False, workers=1, progress=False)
    assert {p.name: p.read_bytes() for p in (out / "masks").iterdir()} == {
        p.name: p.read_bytes() for p in (fresh / "masks").iterdir()
    }


def test_cli_train_classifier_pseudo_label_and_evaluate(tmp_path, demo_root):
    runner = CliRunner()
    config = tmp_path / "c.yaml"
    config.write_text(f"dataset: {{root: {demo_root}, size: 96}}\nclassifier: {{epochs: 1, batch_size: 16}}\n")
    result = runner.invoke(app, ["train-classifier", "-c", str(config), "--out", str(tmp_path / "clf")])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and (tmp_path / "clf" / "classifier.pt").is_file()
    out = tmp_path / "pl"
    args = ["pseudo-label", "--classifier", str(tmp_path / "clf" / "classifier.pt"), "--out", str(out)]
    args += ["--root", str(demo_root), "--split", "test", "--size", "96", "--refine", "otsu", "--workers", "1"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    scores = tmp_path / "scores.json"
    args = ["evaluate", "--pred-dir", str(out / "masks"), "--root", str(demo_root), "--split", "test"]
    result = runner.invoke(app, [*args, "--json", str(scores)])
    assert result.exit_code == 0, result.output
    # the CLI's score equals an independent count over the written PNGs and the trimaps (1 pet, 2 background)
    inter = union = 0
    for mask_file in (out / "masks").glob("*.png"):
        predicted = cv2.imread(str(mask_file), 0) > 127
        trimap = cv2.imread(str(demo_root / "annotations" / "trimaps" / mask_file.name), cv2.IMREAD_UNCHANGED)
        known = trimap != 3
        inter += int((predicted & (trimap == 1) & known).sum())
        union += int(((predicted | (trimap == 1)) & known).sum())
    assert json.loads(scores.read_text())["iou"] == pytest.approx(inter / union, abs=1e-6)


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_bench_cam_times_all_three_and_maps_agree_with_grad_cam(trained, tagged, method):
    from weakseg.bench import bench_cam

    model, _, _ = trained
    result = bench_cam(model, tagged.images[:8], [t[0] for t in tagged.labels[:8]], method, batch_size=4, repeats=1)
    assert {"method", "weakseg_img_s", "gradcam_img_s", "forward_img_s", "max_abs_diff"} <= set(result)
    assert result["max_abs_diff"] < 1e-4 and min(result["weakseg_img_s"], result["forward_img_s"]) > 0


def test_pseudo_labels_refined_at_native_resolution(tmp_path, demo_root):
    dataset = build_dataset("oxford_pet", demo_root, "test")
    names = dataset.names[:3]
    dataset.names = names
    model = build_classifier("tf_efficientnet_lite0", len(dataset.tag_classes)).eval()
    out = tmp_path / "native"
    pseudo_label_dataset(
        dataset, model, out, "gradcam", "otsu | lcc", size=96, refine_at="native", workers=1, progress=False
    )
    for name in names:
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), 0)
        assert mask.shape == dataset.load(name).size and set(np.unique(mask)) <= {0, 255}
    with pytest.raises(Exception, match="refine_at"):
        pseudo_label_dataset(dataset, model, out, refine_at="somewhere", progress=False)


def test_dev_and_rest_stages_split_the_training_images_by_the_budget(tmp_path, tagged):
    # 25 % of the images keep masks: the pseudo-labels are scored on them (dev, tuning use) and on the others
    # (rest); both equal direct counts on the stored pseudo-labels
    config = RunConfig.model_validate(
        {
            "dataset": {"val_fraction": 0.0, "size": 128},
            "budget": {"coverage": 25},
            "method": {"name": "gradcam", "refine": "otsu", "dev": True, "segmenter": False},
            "classifier": {"epochs": 2, "batch_size": 8, "lr": 2e-3},
            "train": {"progress": False},
        }
    )
    test = tagged_blob_split(4, size=128, seed=9)
    shared = tmp_path / "shared"
    results = {
        r.stage: r.metrics
        for r in run(config, tmp_path / "a", splits=(tagged, test), progress=False, shared_dir=shared)
    }
    assert set(results) == {"pseudo", "dev", "rest"}
    budget = json.loads((tmp_path / "a" / "budget.json").read_text())
    dev = set(budget["masks"])
    assert results["dev"]["images"] == len(dev) == round(0.25 * len(tagged))
    assert results["rest"]["images"] == len(tagged) - len(dev)
    masks = torch.load(next(shared.glob("pseudo/*.pt")))
    for stage, rows in (
        ("dev", [i for i, n in enumerate(tagged.names) if n in dev]),
        ("rest", [i for i, n in enumerate(tagged.names) if n not in dev]),
    ):
        cm = ConfusionMatrix(2)
        cm.update(masks[rows], tagged.masks[rows])
        assert results[stage]["iou"] == pytest.approx(cm.compute()["iou"])
    labels = json.loads((tmp_path / "a" / "labels.json").read_text())
    assert labels["by_use"]["tuning"] == {"masks": len(dev)}
