"""Negatives for CAMs (issue 12, item 3): a folder whose labels.csv tags some images ``none`` (no foreground)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from weakseg.classify import is_multilabel, tag_targets
from weakseg.config import ClassifierConfig, RunConfig
from weakseg.data import build_dataset
from weakseg.data.prepared import prepare
from weakseg.errors import DataFileError
from weakseg.models.classifier import build_classifier
from weakseg.pipeline import run
from weakseg.pseudo import pseudo_label_dataset
from weakseg.sources.cam import cam_maps

SIZE = 64


def write_folder(root: Path, n: int = 8, extra_rows: list[dict[str, str]] | None = None) -> list[str]:
    """``n`` images: even ones a bright blob tagged ``polyp`` (mask: the blob), odd ones noise tagged ``none``
    (mask: empty). Returns the names."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rows, names = [], []
    for i in range(n):
        name = f"img_{i:02d}"
        image = rng.integers(0, 80, (SIZE, SIZE, 3), dtype=np.uint8)
        mask = np.zeros((SIZE, SIZE), np.uint8)
        if i % 2 == 0:
            cv2.circle(mask, (int(rng.integers(20, 44)), int(rng.integers(20, 44))), 12, 1, -1)
            image[mask == 1] = (230, 200, 60)
        cv2.imwrite(str(root / "images" / f"{name}.png"), image)
        cv2.imwrite(str(root / "masks" / f"{name}.png"), mask * 255)
        rows.append({"name": f"{name}.png", "label": "polyp" if i % 2 == 0 else "none"})
        names.append(name)
    with open(root / "labels.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["name", "label"])
        writer.writeheader()
        writer.writerows(rows + (extra_rows or []))
    return names


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write_folder(tmp_path / "negs")
    return tmp_path / "negs"


def test_none_is_a_tag_of_its_own_and_never_beside_another(folder, tmp_path):
    dataset = build_dataset("folder", folder, "all")
    assert dataset.tag_classes == ["none", "polyp"]
    assert dataset.load("img_00").labels == [1] and dataset.load("img_01").labels == [0]
    bad = tmp_path / "bad"
    write_folder(bad, 2)
    (bad / "labels.csv").write_text("name,label\nimg_00.png,none;polyp\nimg_01.png,none\n")
    with pytest.raises(DataFileError, match=r"'img_00' is tagged 'none'.*labels\.csv"):
        build_dataset("folder", bad, "all").load("img_00")


def test_negatives_make_the_classifier_multilabel_with_no_foreground_target(folder):
    split = prepare(build_dataset("folder", folder, "all"), SIZE, progress=False)
    assert is_multilabel(split, ClassifierConfig())  # unset: negatives choose one sigmoid per class
    assert not is_multilabel(split, ClassifierConfig(multilabel=False))  # an explicit choice stands
    target = tag_targets(split, list(range(len(split))), 2, True)
    polyp = split.tag_classes.index("polyp")
    assert target[1::2, polyp].eq(0).all() and target[0::2, polyp].eq(1).all()  # negatives: no foreground


def test_cam_maps_of_none_images_are_zero(folder):
    split = prepare(build_dataset("folder", folder, "all"), SIZE, progress=False)
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 2, weights=None, multilabel=True).eval()
    maps = cam_maps(model, split.images, split.labels, "gradcam", negative=0)
    assert maps[1::2].eq(0).all()
    assert (maps[0::2].amax(dim=(1, 2)) > 0.9).all()
    plain = cam_maps(model, split.images, split.labels, "gradcam")  # without: the 'none' class is explained
    assert (plain[1::2].amax(dim=(1, 2)) > 0.9).all()
    torch.testing.assert_close(plain[0::2], maps[0::2])  # positives: the same maps


def test_tags_method_on_a_folder_with_negatives_gives_them_empty_pseudo_masks(folder, tmp_path):
    # threshold 0 makes every pixel of every map foreground: only the negatives' rule keeps theirs empty
    config = RunConfig.model_validate(
        {
            "dataset": {"name": "folder", "root": "negs", "train_split": "all", "test_split": "all", "size": SIZE},
            "method": {"name": "gradcam", "refine": "threshold:t=0.0", "segmenter": False},
            "classifier": {"epochs": 1, "batch_size": 4, "weights": "none"},
            "train": {"progress": False},
        }
    )
    results = run(config, tmp_path / "run", data_root=tmp_path, progress=False, shared_dir=tmp_path / "shared")
    assert [r.stage for r in results] == ["pseudo"]
    split = prepare(build_dataset("folder", folder, "all"), SIZE, progress=False)
    masks = torch.load(next((tmp_path / "shared" / "pseudo").glob("*.pt")))
    cams = torch.load(next((tmp_path / "shared" / "cams").glob("*.pt")))
    negative = [labels == [0] for labels in split.labels]
    assert sum(negative) == 4
    for i, is_negative in enumerate(negative):
        assert bool(masks[i].any()) != is_negative and bool(cams[i].any()) != is_negative
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["tags"] == len(split) and labels["masks"] == 0  # a 'none' tag is a label too


def test_pseudo_label_command_writes_empty_masks_for_none_images(folder, tmp_path):
    dataset = build_dataset("folder", folder, "all")
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 2, weights=None, multilabel=True).eval()
    out = tmp_path / "pl"
    pseudo_label_dataset(dataset, model, out, "gradcam", "threshold:t=0.0", size=SIZE, workers=1, progress=False)
    for i, name in enumerate(dataset.names):
        mask = cv2.imread(str(out / "masks" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
        assert bool(mask.any()) == (i % 2 == 0), name
    assert json.loads((out / "pseudo.json").read_text())["negatives"] == "none"
