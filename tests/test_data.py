"""Datasets (Oxford-IIIT Pet, Kvasir-SEG, folder), their errors, fitting and caching, and archive download."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from tests.conftest import draw_object
from weakseg.data import IGNORE_INDEX, build_dataset, list_datasets
from weakseg.data import download as download_module
from weakseg.data import oxford_pet as oxford_module
from weakseg.data.download import fetch_archives
from weakseg.data.folder import FolderDataset
from weakseg.data.kvasir import KvasirSeg
from weakseg.data.oxford_pet import SPECIES, OxfordPet
from weakseg.data.prepared import cache_dir, prepare
from weakseg.data.sample import Sample
from weakseg.data.transforms import fit_sample
from weakseg.errors import ConfigError, DataFileError, DatasetNotFoundError, WeaksegError


def list_names(path: Path) -> list[str]:
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def copy_demo(demo_root: Path, dest: Path) -> Path:
    shutil.copytree(demo_root, dest)
    return dest


# --------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet: embedded demo sample


@pytest.mark.parametrize(("split", "count"), [("trainval", 48), ("test", 24), ("all", 72)])
def test_demo_sample_splits_follow_the_list_files(demo_root, split, count):
    ds = OxfordPet(demo_root, split=split)
    list_file = "list.txt" if split == "all" else f"{split}.txt"
    assert len(ds) == count
    assert ds.names == list_names(demo_root / "annotations" / list_file)
    assert ds.tag_classes == ["Abyssinian", "american_bulldog", "Bengal"]
    assert ds.class_ids == [1, 2, 6]
    breeds = [name.rsplit("_", 1)[0] for name in ds.names]
    assert {b: breeds.count(b) for b in set(breeds)} == {b: count // 3 for b in ds.tag_classes}


def test_demo_sample_is_small_and_licensed(demo_root):
    total = sum(p.stat().st_size for p in demo_root.rglob("*") if p.is_file())
    assert total <= 2_000_000
    licence = (demo_root / "LICENSE.txt").read_text()
    assert "CC BY-SA 4.0" in licence
    attribution = (demo_root / "ATTRIBUTION").read_text()
    for needle in (
        "Parkhi",
        "Vedaldi",
        "Zisserman",
        "Jawahar",
        "Cats and Dogs",
        "Naveen-Dodda/Sample_Pets_dataset",
    ):
        assert needle in attribution


def test_demo_sample_masks_labels_and_boxes(demo_root):
    ds = OxfordPet(demo_root, split="trainval")
    assert ds.mask_classes == ["background", "pet"]
    with_boxes = 0
    for index, name in enumerate(ds.names):
        sample = ds[index]
        assert isinstance(sample, Sample)
        assert sample.name == name
        h, w = sample.size
        assert max(h, w) == 192
        assert sample.image.shape == (h, w, 3) and sample.image.dtype == np.uint8
        assert sample.mask.shape == (h, w) and sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask).tolist()) <= {0, 1, IGNORE_INDEX}
        trimap = cv2.imread(str(demo_root / "annotations" / "trimaps" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        np.testing.assert_array_equal(sample.mask == IGNORE_INDEX, trimap == 3)  # boundary -> ignore
        np.testing.assert_array_equal(sample.mask == 1, trimap == 1)
        assert (sample.mask == 1).any() and (sample.mask == 0).any()
        assert len(sample.labels) == 1 and 0 <= sample.labels[0] < len(ds.tag_classes)
        assert ds.tag_classes[sample.labels[0]] == name.rsplit("_", 1)[0]
        assert sample.boxes.dtype == np.float32 and sample.boxes.shape[1] == 4
        for x0, y0, x1, y1 in sample.boxes:
            assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
            # a head box lies mostly on the pet (or its boundary)
            inside = sample.mask[int(y0) : int(y1), int(x0) : int(x1)]
            assert (inside != 0).mean() > 0.3
        with_boxes += len(sample.boxes) > 0
    has_xml = {p.stem for p in (demo_root / "annotations" / "xmls").glob("*.xml")}
    assert with_boxes == len(has_xml & set(ds.names)) == 47  # one trainval image has no xml upstream


def test_demo_sample_test_split_has_no_head_boxes(demo_root):
    ds = OxfordPet(demo_root, split="test")
    assert all(len(ds[i].boxes) == 0 for i in range(0, len(ds), 5))


def test_demo_sample_species_tags(demo_root):
    ds = OxfordPet(demo_root, split="all", tags="species")
    assert ds.tag_classes == ["cat", "dog"]
    for index in range(0, len(ds), 7):
        sample = ds[index]
        # official convention: cat breeds are capitalised, dog breeds are not
        expected = "cat" if sample.name[0].isupper() else "dog"
        assert ds.tag_classes[sample.labels[0]] == expected == ds.species[sample.name]
    with pytest.raises(ValueError, match="tags"):
        OxfordPet(demo_root, split="all", tags="colour")


def test_pet_masks_can_carry_the_tag_class(demo_root):
    # background / cat / dog: the trimap's pet pixels take 1 + the image's species; the rest is as in the binary masks
    binary = OxfordPet(demo_root, split="test", tags="species")
    species = OxfordPet(demo_root, split="test", tags="species", masks="tags")
    assert species.mask_classes == ["background", "cat", "dog"] and binary.mask_classes == ["background", "pet"]
    for name in binary.names[::6]:
        plain, classed = binary.load(name).mask, species.load(name).mask
        cls = 1 + SPECIES.index(binary.species[name])
        assert np.array_equal(classed == cls, plain == 1) and np.array_equal(classed != cls, plain != 1)
        assert set(np.unique(classed)) <= {0, cls, IGNORE_INDEX}
    breeds = OxfordPet(demo_root, split="test", masks="tags")
    assert breeds.mask_classes == ["background", *breeds.tag_classes]
    with pytest.raises(ValueError, match="masks"):
        OxfordPet(demo_root, split="test", masks="breed")


def test_demo_head_box_matches_rescaled_xml(demo_root):
    ds = OxfordPet(demo_root, split="trainval")
    sample = ds[ds.names.index("Abyssinian_1")]
    # upstream: 600 x 400 image, box xmin 333 ymin 72 xmax 425 ymax 158 (1-based, inclusive); scale 192/600
    np.testing.assert_allclose(sample.boxes, [[333 * 0.32 - 1, 72 * 0.32, 425 * 0.32, 158 * 0.32]], atol=1.0)
    assert sample.size == (128, 192)


def test_oxford_pet_through_the_registry(demo_root):
    assert {"oxford_pet", "kvasir", "folder"} <= set(list_datasets())
    ds = build_dataset("oxford_pet", demo_root, split="test")
    assert isinstance(ds, OxfordPet) and len(ds) == 24
    with pytest.raises(ConfigError, match="unknown dataset 'pets'"):
        build_dataset("pets", demo_root, split="test")


def test_oxford_pet_unknown_split_names_the_list(demo_root):
    with pytest.raises(DataFileError, match="unknown split") as info:
        OxfordPet(demo_root, split="val")
    assert info.value.path == demo_root / "annotations" / "val.txt"


# --------------------------------------------------------------------------------------------------
# Oxford-IIIT Pet: the real subset


@pytest.mark.requires_shared
def test_oxford_pet_shared_subset(shared_data):
    root = shared_data / "oxford-iiit-pet-subset"
    trainval, test = OxfordPet(root, split="trainval"), OxfordPet(root, split="test")
    assert (len(trainval), len(test)) == (300, 298)
    assert len(OxfordPet(root, split="all")) == 598  # Abyssinian_34 and _82 are in no list
    assert trainval.tag_classes == ["Abyssinian", "american_bulldog", "Bengal"] == test.tag_classes
    assert not set(trainval.names) & set(test.names)
    sample = trainval[trainval.names.index("Bengal_105")]  # two head boxes upstream
    assert sample.boxes.shape == (2, 4)
    assert set(np.unique(sample.mask).tolist()) == {0, 1, IGNORE_INDEX}
    png_named_jpg = test[test.names.index("Abyssinian_5")]  # upstream: a PNG with alpha under a .jpg name
    assert png_named_jpg.image.shape == (150, 200, 3) and png_named_jpg.mask.shape == (150, 200)
    assert len(png_named_jpg.boxes) == 0  # test images have no head boxes


# --------------------------------------------------------------------------------------------------
# Kvasir-SEG


@pytest.mark.requires_shared
def test_kvasir_shared_official_split(shared_data):
    root = shared_data / "kvasir-seg"
    train, val = KvasirSeg(root, split="train"), KvasirSeg(root, split="val")
    assert (len(train), len(val)) == (880, 120)
    assert KvasirSeg(root, split="test").names == val.names
    assert not set(train.names) & set(val.names)
    assert sorted(train.names + val.names) == KvasirSeg(root, split="all").names
    for ds in (train, val):
        for index in (0, len(ds) - 1):
            sample = ds[index]
            h, w = sample.size
            assert set(np.unique(sample.mask).tolist()) == {0, 1}
            assert sample.labels == [0] and ds.tag_classes == ["polyp"]
            assert len(sample.boxes) >= 1
            for x0, y0, x1, y1 in sample.boxes:
                assert 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h
                assert sample.mask[int(y0) : int(y1), int(x0) : int(x1)].mean() > 0.2


def make_kvasir(root: Path, n: int, split_files: bool = True) -> list[str]:
    """A tiny Kvasir-SEG in the official layout: JPEG images and JPEG (lossy) masks, box json, split lists."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names = [f"cju{i:04d}polyp" for i in range(n)]
    boxes = {}
    for i, name in enumerate(names):
        image, obj = draw_object(i, 36, 44, seed=7)
        cv2.imwrite(str(root / "images" / f"{name}.jpg"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / f"{name}.jpg"), obj * 255, [cv2.IMWRITE_JPEG_QUALITY, 75])
        x, y, w, h = cv2.boundingRect(obj)
        boxes[name] = {
            "height": 36,
            "width": 44,
            "bbox": [{"label": "polyp", "xmin": x, "ymin": y, "xmax": x + w, "ymax": y + h}],
        }
    (root / "kavsir_bboxes.json").write_text(json.dumps(boxes))
    if split_files:
        (root / "train.txt").write_text("\n".join(names[:-2]) + "\n")
        (root / "val.txt").write_text("\n".join(names[-2:]) + "\n")
    return names


def test_kvasir_tiny_official_layout(tmp_path):
    names = make_kvasir(tmp_path / "kvasir", 6)
    train = KvasirSeg(tmp_path / "kvasir", split="train")
    val = KvasirSeg(tmp_path / "kvasir", split="val")
    assert train.names == names[:4] and val.names == names[4:]
    assert KvasirSeg(tmp_path / "kvasir", split="test").names == names[4:]
    assert KvasirSeg(tmp_path / "kvasir", split="all").names == names
    for i, name in enumerate(names[:4]):
        sample = train[i]
        _, obj = draw_object(i, 36, 44, seed=7)
        assert sample.name == name and sample.mask.dtype == np.uint8
        assert set(np.unique(sample.mask).tolist()) == {0, 1}
        # JPEG masks are thresholded at 128: the recovered object matches the drawn one up to the edge
        assert (sample.mask == obj).mean() > 0.97
        x, y, w, h = cv2.boundingRect(obj)
        np.testing.assert_array_equal(sample.boxes, [[x, y, x + w, y + h]])
    with pytest.raises(DataFileError, match="unknown split"):
        KvasirSeg(tmp_path / "kvasir", split="trainval")


def test_kvasir_without_split_files_uses_a_seeded_split_with_a_warning(tmp_path):
    names = make_kvasir(tmp_path / "kvasir", 50, split_files=False)
    with pytest.warns(UserWarning, match=r"train\.txt' not found"):
        train = KvasirSeg(tmp_path / "kvasir", split="train")
    with pytest.warns(UserWarning, match=r"val\.txt' not found"):
        val = KvasirSeg(tmp_path / "kvasir", split="val")
    assert len(val) == 6 and len(train) == 44  # 12 % held out, as the official 120 of 1000
    assert not set(train.names) & set(val.names)
    assert sorted(train.names + val.names) == names
    assert train.names == sorted(train.names)
    with pytest.warns(UserWarning):
        assert KvasirSeg(tmp_path / "kvasir", split="train").names == train.names  # fixed seed


def test_kvasir_missing_mask_names_the_mask(tmp_path):
    names = make_kvasir(tmp_path / "kvasir", 4)
    missing = tmp_path / "kvasir" / "masks" / f"{names[1]}.jpg"
    missing.unlink()
    ds = KvasirSeg(tmp_path / "kvasir", split="train")
    with pytest.raises(DataFileError, match="mask file is missing") as info:
        ds[1]
    assert info.value.path == missing and str(missing) in str(info.value)


# --------------------------------------------------------------------------------------------------
# Folder datasets


def test_folder_dataset_reads_masks_labels_and_coco_boxes(make_folder_dataset):
    truth = make_folder_dataset(n=6)
    ds = FolderDataset(truth.root)
    assert ds.names == truth.names
    assert ds.tag_classes == ["cat", "dog"]
    assert ds.mask_classes == ["background", "foreground"]
    for index, name in enumerate(truth.names):
        sample = ds[index]
        assert sample.size == truth.sizes[name]
        assert sample.mask.dtype == np.uint8 and set(np.unique(sample.mask).tolist()) == {0, 1}
        np.testing.assert_array_equal(sample.mask, truth.masks[name])
        assert sorted(ds.tag_classes[i] for i in sample.labels) == sorted(truth.labels[name])
        np.testing.assert_allclose(sample.boxes, truth.boxes[name])
        # COCO x, y, w, h became x0, y0, x1, y1: the first box is the tight box of the mask
        ys, xs = np.nonzero(sample.mask)
        np.testing.assert_array_equal(sample.boxes[0], [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
    assert ds[0].boxes.shape == (2, 4)
    np.testing.assert_allclose(ds[0].boxes[1], [2.5, 3.0, 12.5, 9.5])
    assert ds[1].labels == [1, 0]  # "dog;cat", in file order


def test_folder_dataset_accepts_zero_one_masks(make_folder_dataset):
    truth = make_folder_dataset(n=2, labels=False, boxes=False)
    for name in truth.names:
        cv2.imwrite(str(truth.root / "masks" / f"{name}.png"), truth.masks[name])  # 0/1 instead of 0/255
    ds = FolderDataset(truth.root)
    np.testing.assert_array_equal(ds[0].mask, truth.masks[truth.names[0]])
    assert ds.tag_classes == [] and ds[0].labels == [] and ds[0].boxes.shape == (0, 4)


def test_folder_dataset_without_masks(make_folder_dataset):
    truth = make_folder_dataset(n=3, masks=False)
    sample = FolderDataset(truth.root)[2]
    assert sample.mask is None and sample.image.shape == (*truth.sizes[sample.name], 3)


@pytest.mark.parametrize("subdir", [False, True])
def test_folder_dataset_split_files(make_folder_dataset, subdir):
    truth = make_folder_dataset(n=6, splits={"train": [0, 2, 3, 5], "val": [4, 1]}, splits_subdir=subdir)
    train = FolderDataset(truth.root, split="train")
    val = build_dataset("folder", truth.root, split="val")
    assert train.names == truth.splits["train"] and val.names == truth.splits["val"]  # file order kept
    assert val[0].name == truth.names[4]
    assert len(FolderDataset(truth.root, split="all")) == 6
    with pytest.raises(DataFileError, match="split list is missing") as info:
        FolderDataset(truth.root, split="test")
    assert info.value.path == truth.root / "test.txt"


def test_folder_dataset_split_listing_an_absent_image(make_folder_dataset):
    truth = make_folder_dataset(n=3, splits={"train": [0, 1]})
    with open(truth.root / "train.txt", "a") as fh:
        fh.write("img_999\n")
    with pytest.raises(DataFileError, match=r"listed in 'train\.txt' is missing") as info:
        FolderDataset(truth.root, split="train")
    assert info.value.path.name == "img_999"


def test_folder_dataset_index_masks(make_folder_dataset):
    truth = make_folder_dataset(n=4, mask_mode="index")
    ds = FolderDataset(truth.root, mask_mode="index", mask_classes=["background", "cat", "dog"])
    assert ds.mask_classes == ["background", "cat", "dog"] and ds.num_mask_classes == 3
    seen = set()
    for index, name in enumerate(truth.names):
        mask = ds[index].mask
        np.testing.assert_array_equal(mask, truth.masks[name])
        seen |= set(np.unique(mask).tolist())
    assert seen == {0, 1, 2}
    with pytest.raises(ValueError, match="mask_mode"):
        FolderDataset(truth.root, mask_mode="rgb")


def test_folder_labels_csv_needs_its_columns(make_folder_dataset):
    truth = make_folder_dataset(n=2)
    (truth.root / "labels.csv").write_text("file,class\nimg_000.png,cat\n")
    with pytest.raises(DataFileError, match="'name' and 'label'") as info:
        FolderDataset(truth.root)
    assert info.value.path == truth.root / "labels.csv"


def test_folder_broken_coco_file_is_named(make_folder_dataset):
    truth = make_folder_dataset(n=2)
    (truth.root / "boxes.json").write_text('{"images": [{"id": 1}]}')
    with pytest.raises(DataFileError, match="cannot read COCO boxes") as info:
        FolderDataset(truth.root)
    assert info.value.path == truth.root / "boxes.json"


# --------------------------------------------------------------------------------------------------
# Clear errors


@pytest.mark.parametrize(
    ("factory", "label"),
    [
        (lambda root: OxfordPet(root, split="trainval"), "Oxford-IIIT Pet"),
        (lambda root: KvasirSeg(root, split="train"), "Kvasir-SEG"),
        (lambda root: FolderDataset(root), "Folder"),
    ],
)
def test_missing_root_names_the_path_looked_at(tmp_path, factory, label):
    root = tmp_path / "no" / "such" / "dataset"
    with pytest.raises(DatasetNotFoundError) as info:
        factory(root)
    assert str(root) in str(info.value) and label in str(info.value)
    assert info.value.looked == root
    assert isinstance(info.value, WeaksegError)


def test_folder_without_images_is_not_found(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DatasetNotFoundError, match="holds no images"):
        FolderDataset(tmp_path)


def test_oxford_missing_split_list(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path / "pets")
    (root / "annotations" / "test.txt").unlink()
    with pytest.raises(DataFileError, match="split list is missing") as info:
        OxfordPet(root, split="test")
    assert info.value.path == root / "annotations" / "test.txt"


def test_corrupt_image_names_the_file(demo_root, make_folder_dataset, tmp_path):
    noise = np.random.default_rng(3).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    root = copy_demo(demo_root, tmp_path / "pets")
    ds = OxfordPet(root, split="test")
    corrupt = root / "images" / f"{ds.names[2]}.jpg"
    corrupt.write_bytes(noise)
    with pytest.raises(DataFileError, match="cannot be decoded") as info:
        ds[2]
    assert info.value.path == corrupt and str(corrupt) in str(info.value)
    ds[3]  # the others still load

    truth = make_folder_dataset(n=3)
    bad = truth.root / "images" / "broken.jpg"
    bad.write_bytes(noise)
    (truth.root / "masks" / "broken.png").write_bytes(cv2.imencode(".png", np.zeros((4, 4), np.uint8))[1])
    folder = FolderDataset(truth.root)
    with pytest.raises(DataFileError, match="cannot be decoded") as info:
        folder[folder.names.index("broken")]
    assert str(bad) in str(info.value)


def test_missing_mask_names_the_mask_path(demo_root, make_folder_dataset, tmp_path):
    truth = make_folder_dataset(n=3)
    (truth.root / "masks" / "img_001.png").unlink()
    folder = FolderDataset(truth.root)  # a folder may have masks for some images only: the others are unlabelled
    assert folder[0].mask is not None and folder[1].mask is None

    root = copy_demo(demo_root, tmp_path / "pets")
    ds = OxfordPet(root, split="trainval")
    trimap = root / "annotations" / "trimaps" / f"{ds.names[0]}.png"
    trimap.unlink()
    with pytest.raises(DataFileError, match="mask file is missing") as info:
        ds[0]
    assert info.value.path == trimap


def test_mask_of_the_wrong_size_is_named(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path / "pets")
    ds = OxfordPet(root, split="test")
    trimap = root / "annotations" / "trimaps" / f"{ds.names[0]}.png"
    cv2.imwrite(str(trimap), np.full((10, 12), 2, np.uint8))
    with pytest.raises(DataFileError, match="trimap size") as info:
        ds[0]
    assert info.value.path == trimap


def test_broken_head_box_xml_is_named(demo_root, tmp_path):
    root = copy_demo(demo_root, tmp_path / "pets")
    ds = OxfordPet(root, split="trainval")
    xml = root / "annotations" / "xmls" / f"{ds.names[0]}.xml"
    xml.write_text("<annotation><object><bndbox>")
    with pytest.raises(DataFileError, match="cannot parse box file") as info:
        ds[0]
    assert info.value.path == xml


# --------------------------------------------------------------------------------------------------
# Fitting to the model size, prepared splits and their cache


def test_fit_sample_resize_and_pad(demo_root):
    sample = OxfordPet(demo_root, split="trainval")[0]
    h, w = sample.size
    assert w == 192 and h < w
    fitted, geo = fit_sample(sample, 96, "resize")
    assert fitted.image.shape == (96, 96, 3) and fitted.mask.shape == (96, 96)
    assert (geo.height, geo.width, geo.content_h, geo.content_w) == (h, w, 96, 96)
    np.testing.assert_allclose(fitted.boxes, sample.boxes * [96 / w, 96 / h, 96 / w, 96 / h], rtol=1e-6)
    assert set(np.unique(fitted.mask).tolist()) <= {0, 1, IGNORE_INDEX}  # nearest: no new values

    padded, geo = fit_sample(sample, 96, "pad")
    ch = round(h * 96 / w)
    assert (geo.content_h, geo.content_w) == (ch, 96)
    assert padded.image.shape == (96, 96, 3) and padded.mask.shape == (96, 96)
    assert (padded.mask[ch:] == IGNORE_INDEX).all() and (padded.image[ch:] == 0).all()
    assert (padded.mask[:ch] != IGNORE_INDEX).mean() > 0.8
    np.testing.assert_allclose(padded.boxes, sample.boxes * [96 / w, ch / h, 96 / w, ch / h], rtol=1e-6)
    assert padded.labels == sample.labels and padded.name == sample.name
    with pytest.raises(ConfigError, match="fit must be one of"):
        fit_sample(sample, 96, "crop")


@pytest.mark.parametrize("fit", ["resize", "pad"])
def test_prepare_gives_square_tensors_and_maps_back(demo_root, fit):
    ds = OxfordPet(demo_root, split="test")
    split = prepare(ds, 64, fit=fit, keep_native=True, progress=False)
    n = len(ds)
    assert len(split) == n and split.names == ds.names and split.size == 64
    assert split.images.shape == (n, 3, 64, 64) and split.images.dtype == torch.uint8
    assert split.masks.shape == (n, 64, 64) and split.masks.dtype == torch.uint8
    assert split.tag_classes == ds.tag_classes and split.mask_classes == ["background", "pet"]
    for i in range(0, n, 5):
        sample = ds[i]
        geo = split.geometry[i]
        h, w = sample.size
        assert (geo.height, geo.width) == (h, w)
        np.testing.assert_array_equal(split.native_masks[i], sample.mask)
        assert split.labels[i] == sample.labels
        if fit == "pad":
            assert (split.masks[i, geo.content_h :] == IGNORE_INDEX).all()
            assert (split.masks[i, :, geo.content_w :] == IGNORE_INDEX).all()
            assert max(geo.content_h, geo.content_w) == 64
        # model-resolution one-hot maps, mapped back to the native grid, agree with the native mask
        onehot = torch.stack([split.masks[i] == c for c in (0, 1)]).float()
        native = geo.to_native(onehot, mode="bilinear")
        assert native.shape == (2, h, w)
        labelled = sample.mask != IGNORE_INDEX
        agree = (native.argmax(0).numpy() == sample.mask)[labelled].mean()
        assert agree > 0.93
        nearest = geo.to_native(split.masks[i][None].float(), mode="nearest")[0].numpy()
        assert nearest.shape == (h, w) and (nearest == sample.mask).mean() > 0.85


def test_prepare_scales_boxes(demo_root):
    ds = OxfordPet(demo_root, split="trainval")
    split = prepare(ds, 64, fit="resize", progress=False)
    for i in (0, 10, 30):
        h, w = ds[i].size
        np.testing.assert_allclose(split.boxes[i], ds[i].boxes * [64 / w, 64 / h, 64 / w, 64 / h], rtol=1e-6)
        assert ((split.boxes[i] >= 0) & (split.boxes[i] <= 64)).all()


def test_prepare_without_masks(make_folder_dataset):
    truth = make_folder_dataset(n=3, masks=False)
    split = prepare(FolderDataset(truth.root), 32, progress=False, use_cache=False)
    assert split.masks is None and split.images.shape == (3, 3, 32, 32)


def test_session_cache_is_a_temporary_folder(_weakseg_cache):
    assert cache_dir() == _weakseg_cache != Path.home() / ".cache" / "weakseg"


def test_prepared_split_is_cached_on_disk(demo_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))  # an empty cache, whatever ran before
    ds = OxfordPet(demo_root, split="test")
    first = prepare(ds, 32, fit="pad", progress=False)
    (entry,) = (tmp_path / "prepared").glob("oxford_pet-*")  # a folder: images.npy, masks.npy, meta.pt
    assert entry.is_dir() and first.on_disk and {"images.npy", "masks.npy", "meta.pt"} <= set(os.listdir(entry))

    def fail(name):
        raise AssertionError(f"{name} decoded again instead of read from the cache")

    monkeypatch.setattr(ds, "load", fail)
    second = prepare(ds, 32, fit="pad", progress=False)
    assert second.names == first.names and second.labels == first.labels
    assert torch.equal(second.images, first.images) and torch.equal(second.masks, first.masks)
    assert second.geometry == first.geometry
    for a, b in zip(second.boxes, first.boxes, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(AssertionError, match="decoded again"):
        prepare(ds, 32, fit="resize", progress=False)  # another fit is another cache entry


def test_an_edited_mask_on_disk_is_never_served_from_the_cache(demo_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path / "cache"))
    root = copy_demo(demo_root, tmp_path / "pets")
    first = prepare(OxfordPet(root, split="test"), 32, progress=False)
    name = first.names[0]
    trimap = root / "annotations" / "trimaps" / f"{name}.png"
    edited = np.full_like(cv2.imread(str(trimap), cv2.IMREAD_UNCHANGED), 2)  # all background now
    cv2.imwrite(str(trimap), edited)
    again = prepare(OxfordPet(root, split="test"), 32, progress=False)
    assert again.fingerprint != first.fingerprint
    assert (again.masks[0] == 0).all() and not (first.masks[0] == 0).all()
    assert torch.equal(again.masks[1:], first.masks[1:])
    unchanged = prepare(OxfordPet(root, split="test"), 32, progress=False)
    assert unchanged.fingerprint == again.fingerprint and torch.equal(unchanged.masks, again.masks)


def test_a_fresh_copy_of_the_same_files_keeps_the_fingerprint(demo_root, tmp_path):
    """Data copied afresh (a new session, another machine: new modification times) is the same data; one
    changed byte is not."""
    first = copy_demo(demo_root, tmp_path / "a")
    second = copy_demo(demo_root, tmp_path / "b")
    trimap = second / "annotations" / "trimaps" / f"{OxfordPet(second, split='test').names[0]}.png"
    os.utime(trimap, ns=(1, 1))
    assert OxfordPet(first, split="test").fingerprint() == OxfordPet(second, split="test").fingerprint()
    data = bytearray(trimap.read_bytes())
    data[-1] ^= 1
    trimap.write_bytes(bytes(data))
    os.utime(trimap, ns=(1, 1))
    assert OxfordPet(first, split="test").fingerprint() != OxfordPet(second, split="test").fingerprint()


@pytest.mark.parametrize("damaged", ["meta.pt", "images.npy", "masks.npy"])
def test_corrupt_cache_is_rebuilt(demo_root, monkeypatch, tmp_path, damaged):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))
    ds = OxfordPet(demo_root, split="test")
    first = prepare(ds, 32, fit="resize", progress=False)
    images, masks = first.images.clone(), first.masks.clone()
    (entry,) = (tmp_path / "prepared").glob("oxford_pet-*")
    del first
    (entry / damaged).write_bytes((entry / damaged).read_bytes()[:200])  # cut short
    again = prepare(ds, 32, fit="resize", progress=False)
    assert torch.equal(again.images, images) and torch.equal(again.masks, masks)
    assert (entry / "images.npy").stat().st_size > 32 * 32 * 3 * len(ds)  # written again, whole


def test_cache_key_tells_tag_modes_apart(demo_root, monkeypatch, tmp_path):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))
    breeds = prepare(OxfordPet(demo_root, split="all"), 32, progress=False)
    species = prepare(OxfordPet(demo_root, split="all", tags="species"), 32, progress=False)
    assert breeds.tag_classes == ["Abyssinian", "american_bulldog", "Bengal"]
    assert species.tag_classes == ["cat", "dog"]


@pytest.mark.parametrize("size", [100, 0, -32, 48])
def test_size_must_be_a_multiple_of_32(demo_root, size):
    with pytest.raises(ConfigError, match="multiple of 32"):
        prepare(OxfordPet(demo_root, split="test"), size, progress=False)


# --------------------------------------------------------------------------------------------------
# Downloading official archives


def make_pet_archives(demo_root: Path, dest: Path, names: list[str]) -> tuple[Path, Path]:
    """images.tar.gz and annotations.tar.gz as on the Oxford site (top folders images/, annotations/)."""
    dest.mkdir(parents=True)
    images, annotations = dest / "images.tar.gz", dest / "annotations.tar.gz"
    rows = [r for r in (demo_root / "annotations" / "list.txt").read_text().splitlines() if r.split()[0] in names]
    lists = dest / "lists"
    lists.mkdir()
    for list_name in ("list.txt", "trainval.txt"):
        (lists / list_name).write_text("#Image CLASS-ID SPECIES BREED ID\n" + "\n".join(rows) + "\n")
    (lists / "test.txt").write_text("")
    with tarfile.open(images, "w:gz") as tar:
        for name in names:
            tar.add(demo_root / "images" / f"{name}.jpg", arcname=f"images/{name}.jpg")
    with tarfile.open(annotations, "w:gz") as tar:
        for name in names:
            tar.add(
                demo_root / "annotations" / "trimaps" / f"{name}.png",
                arcname=f"annotations/trimaps/{name}.png",
            )
            xml = demo_root / "annotations" / "xmls" / f"{name}.xml"
            if xml.is_file():
                tar.add(xml, arcname=f"annotations/xmls/{name}.xml")
        for list_name in ("list.txt", "trainval.txt", "test.txt"):
            tar.add(lists / list_name, arcname=f"annotations/{list_name}")
    return images, annotations


def test_fetch_archives_extracts_a_file_url(demo_root, tmp_path):
    names = ["Abyssinian_1", "american_bulldog_10", "Bengal_10"]
    images, annotations = make_pet_archives(demo_root, tmp_path / "server", names)
    root = tmp_path / "pets"
    fetch_archives([images.as_uri(), annotations.as_uri()], root)
    assert sorted(p.name for p in (root / "images").iterdir()) == sorted(f"{n}.jpg" for n in names)
    assert not (root / "images.tar.gz").exists() and not (root / "annotations.tar.gz").exists()
    ds = OxfordPet(root, split="trainval")  # the "#" header line of the official lists is skipped
    assert sorted(ds.names) == sorted(names)
    assert ds[0].image.shape[2] == 3 and len(ds[0].boxes) == 1


def test_oxford_pet_download_flag(demo_root, tmp_path, monkeypatch):
    names = ["Abyssinian_101", "Bengal_103"]
    images, annotations = make_pet_archives(demo_root, tmp_path / "server", names)
    monkeypatch.setattr(oxford_module, "URLS", [images.as_uri(), annotations.as_uri()])
    ds = OxfordPet(tmp_path / "pets", split="all", download=True)
    assert ds.names == names
    original = OxfordPet(demo_root, split="trainval")
    np.testing.assert_array_equal(ds[1].mask, original[original.names.index("Bengal_103")].mask)
    np.testing.assert_array_equal(ds[1].boxes, original[original.names.index("Bengal_103")].boxes)
    # already there: no second download
    monkeypatch.setattr(oxford_module, "URLS", ["file:///nonexistent/images.tar.gz"])
    assert len(OxfordPet(tmp_path / "pets", split="all", download=True)) == 2


def test_unreachable_url_raises_a_helpful_error(tmp_path):
    url = "file:///nonexistent/x.tar.gz"
    with pytest.raises(WeaksegError, match="cannot download") as info:
        fetch_archives([url], tmp_path / "root")
    message = str(info.value)
    assert url in message and "by hand" in message and str(tmp_path / "root") in message
    assert list((tmp_path / "root").iterdir()) == []  # nothing half-written is left behind


def test_unknown_archive_type(tmp_path):
    archive = tmp_path / "data.rar"
    archive.write_bytes(b"Rar!")
    with pytest.raises(WeaksegError, match="unknown archive type"):
        download_module.extract(archive, tmp_path / "out")


def test_corrupt_archive_raises_a_helpful_error(tmp_path):
    broken = tmp_path / "server" / "images.tar.gz"
    broken.parent.mkdir()
    broken.write_bytes(b"<html>503 Service Unavailable</html>")
    with pytest.raises(WeaksegError, match=r"images\.tar\.gz"):
        fetch_archives([broken.as_uri()], tmp_path / "root")
