"""Real partial labels from files: a folder where each image has what its files hold (a mask, boxes, clicks, a drawn
polygon, tags, or nothing), loaded, prepared and trained on with ``budget.source: files``."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from weakseg.budget import click_masks
from weakseg.config import RunConfig
from weakseg.data.folder import FolderDataset
from weakseg.data.prepared import prepare
from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import DataFileError
from weakseg.pipeline import run

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

TRAIN, TEST = list(range(8)), [8, 9]
MASKED = [0, 1]  # keep their mask files
DRAWN = 2  # a polygon in a CVAT file
CLICKED = [3, 4, 5]  # clicks in clicks.csv


@pytest.fixture
def partial(make_folder_dataset):
    """The fixture folder with masks for images 0, 1 (and the test images) only, a CVAT polygon on image 2 (its
    ellipse outline), two clicks (one on the object, one background) on images 3-5; boxes and tags for all."""
    truth = make_folder_dataset(n=10, splits={"trainval": TRAIN, "test": TEST})
    for i in TRAIN:
        if i not in MASKED:
            (truth.root / "masks" / f"{truth.names[i]}.png").unlink()
    rows = ["name,x,y,label"]
    for i in CLICKED:
        ys, xs = np.nonzero(truth.masks[truth.names[i]])
        rows += [f"{truth.names[i]}.png,{xs[len(xs) // 2]},{ys[len(ys) // 2]},positive", f"{truth.names[i]},0,0,0"]
    (truth.root / "clicks.csv").write_text("\n".join(rows) + "\n")
    name = truth.names[DRAWN]
    contour = cv2.findContours(truth.masks[name], cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)[0][0][:, 0]
    height, width = truth.sizes[name]
    points = ";".join(f"{x},{y}" for x, y in contour)
    (truth.root / "annotations").mkdir()
    (truth.root / "annotations" / "task.xml").write_text(
        f'<annotations><version>1.1</version><image id="0" name="{name}.png" width="{width}" height="{height}">'
        f'<polygon label="object" points="{points}"/><tag label="cat"/></image></annotations>'
    )
    return truth


def test_each_image_has_what_its_files_hold(partial):
    ds = FolderDataset(partial.root, split="trainval")
    samples = {s.name: s for s in (ds[i] for i in range(len(ds)))}
    names = partial.names
    for i in MASKED:
        np.testing.assert_array_equal(samples[names[i]].mask, partial.masks[names[i]])
    drawn = samples[names[DRAWN]].mask  # a polygon through the outline's pixels, read as pixel corners
    truth = partial.masks[names[DRAWN]]
    assert drawn is not None and (drawn & truth).sum() / (drawn | truth).sum() > 0.8
    for i in set(TRAIN) - {*MASKED, DRAWN}:
        assert samples[names[i]].mask is None  # unlabelled, not an error
    for i in CLICKED:
        points = samples[names[i]].points
        assert points.shape == (2, 3) and points[:, 2].tolist() == [1, 0]
        x, y = points[0, :2].astype(int)
        assert partial.masks[names[i]][y, x] == 1
    assert samples[names[0]].points.shape == (0, 3)
    for name in names[:8]:
        np.testing.assert_allclose(samples[name].boxes, partial.boxes[name])
    # tags from labels.csv and the CVAT tag, without repeats
    assert [ds.tag_classes[t] for t in samples[names[DRAWN]].labels] == partial.labels[names[DRAWN]]


def test_prepared_split_knows_which_images_have_masks_and_scales_clicks(partial):
    split = prepare(FolderDataset(partial.root, split="trainval"), 32, use_cache=False, progress=False)
    assert split.labelled == [i in (*MASKED, DRAWN) for i in TRAIN]
    assert split.labelled_names == [partial.names[i] for i in (*MASKED, DRAWN)]
    unlabelled = [i for i, has in enumerate(split.labelled) if not has]
    assert bool((split.masks[unlabelled] == IGNORE_INDEX).all())
    clicks = click_masks(split)
    for i in TRAIN:
        count = int((clicks[i] != IGNORE_INDEX).sum())
        assert count == (2 if i in CLICKED else 0)
        if i in CLICKED:  # the object click lands on the object at model size too
            height, width = partial.sizes[partial.names[i]]
            ys, xs = np.nonzero(partial.masks[partial.names[i]])
            x, y, c = split.points[i][0]
            assert c == 1 and (x, y) == pytest.approx((xs[len(xs) // 2] * 32 / width, ys[len(ys) // 2] * 32 / height))
            assert int(clicks[i, int(y), int(x)]) == 1 and int(clicks[i, 0, 0]) == 0


def test_a_run_on_real_labels_spends_what_the_files_hold(partial, tmp_path):
    config = RunConfig.model_validate(
        {
            "dataset": {"name": "folder", "root": str(partial.root), "size": 32, "val_fraction": 0},
            "budget": {"source": "files"},
            "method": {"name": "multi", "sources": ["masks", "boxes", "points"]},
            "model": {"weights": "none"},
            "train": {"epochs": 1, "batch_size": 4, "progress": False},
        }
    )
    results = run(config, tmp_path / "run", ".", progress=False)
    assert results[-1].stage == "final" and 0 <= results[-1].metrics["iou"] <= 1
    labels = json.loads((tmp_path / "run" / "labels.json").read_text())
    assert labels["masks"] == 3  # two mask files and one drawn polygon
    assert labels["boxes"] == sum(len(partial.boxes[partial.names[i]]) for i in TRAIN)
    assert labels["points"] == 2 * len(CLICKED) and labels["images"]["points"] == len(CLICKED)
    budget = json.loads((tmp_path / "run" / "budget.json").read_text())
    assert budget["masks"] == [partial.names[i] for i in (*MASKED, DRAWN)]
    assert budget["points"] == [partial.names[i] for i in CLICKED]


def test_bad_annotations_name_their_file(partial):
    (partial.root / "clicks.csv").write_text(f"name,x,y,label\n{partial.names[3]},500,2,positive\n")
    with pytest.raises(DataFileError, match="outside") as info:
        FolderDataset(partial.root, split="trainval")[3]
    assert "clicks.csv" in str(info.value)
    (partial.root / "clicks.csv").unlink()
    ds = FolderDataset(partial.root, split="trainval", mask_mode="index", mask_classes=["background", "cat", "dog"])
    with pytest.raises(DataFileError, match="class 'object'"):
        ds[DRAWN]
