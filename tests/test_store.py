"""Prepared splits stored by rows on disk: reads match tensors, training reads batches only and learns exactly as
from tensors in RAM (in this process or with loader workers), older cache files are converted, temporaries go."""

from __future__ import annotations

import gc
import pickle
import subprocess

import numpy as np
import pytest
import torch

import weakseg.data.prepared as prepared_module
import weakseg.io as weakseg_io
from tests.synthetic import blob_split
from weakseg.config import TrainConfig
from weakseg.data.oxford_pet import OxfordPet
from weakseg.data.prepared import PreparedSplit, iterate_batches, open_split, prepare, write_split
from weakseg.data.sample import IGNORE_INDEX
from weakseg.data.store import NativeMasks, RowFile, Rows, StackedRows, known_per_row
from weakseg.data.transforms import augment_batch
from weakseg.evaluate import evaluate_model
from weakseg.models import build_model
from weakseg.runtime import seed_everything
from weakseg.sources.target import Target
from weakseg.train import fit

CPU = torch.device("cpu")


def on_disk(split: PreparedSplit, folder) -> PreparedSplit:
    """The same split stored as a cache entry and opened from it (pixels on disk)."""
    write_split(split, folder)
    return open_split(folder)


def test_rows_on_disk_read_what_the_tensor_indexes(tmp_path):
    data = torch.randint(0, 256, (23, 3, 8, 8), dtype=torch.uint8)
    np.save(tmp_path / "rows.npy", data.numpy())
    disk, ram = Rows(RowFile(tmp_path / "rows.npy")), Rows(data)
    assert disk.on_disk and not ram.on_disk and disk.shape == ram.shape == (23, 3, 8, 8)
    index = torch.tensor([5, 6, 7, 0, 22, 22, 3])  # runs, repeats, any order
    for rows in (disk, ram):
        assert torch.equal(rows.take(index), data[index])
        assert torch.equal(rows[4], data[4]) and torch.equal(rows[-1], data[-1])
        assert torch.equal(rows[2:9:3], data[2:9:3])
        assert torch.equal(rows[data[:, 0, 0, 0] > 128], data[data[:, 0, 0, 0] > 128])
        sub = rows.subset([9, 1, 4, 4]).subset([3, 0])
        assert torch.equal(sub.tensor(), data[[4, 9]])
        drop = torch.zeros(23, dtype=torch.bool)
        drop[[1, 4]] = True
        blanked = rows.blanked(drop)
        expected = data.clone()
        expected[drop] = IGNORE_INDEX
        assert torch.equal(blanked.tensor(), expected) and torch.equal(
            blanked.subset([4, 5]).take([0, 1]), expected[[4, 5]]
        )
        assert torch.equal(torch.cat(list(rows.chunks(5))), data)
        assert torch.equal(pickle.loads(pickle.dumps(rows)).take(index), data[index])
    assert torch.equal(disk.tensor(), data)  # mapped copy-on-write: a write stays in this process
    disk.tensor()[0] = 0
    assert torch.equal(Rows(RowFile(tmp_path / "rows.npy")).take([0]), data[:1])
    with pytest.raises(IndexError):
        Rows(RowFile(tmp_path / "rows.npy")).take([23])
    stacked = StackedRows([ram, disk.subset(range(23))])
    assert stacked.shape == (23, 2, 3, 8, 8) and torch.equal(stacked.take([3, 1])[:, 1], data[[3, 1]])


def test_known_pixels_per_row_match_the_tensor_formula(tmp_path):
    masks = torch.full((300, 6, 6), IGNORE_INDEX, dtype=torch.uint8)
    masks[::3, 2:4, 1:5] = 1
    expected = (masks != IGNORE_INDEX).flatten(1).sum(1)
    np.save(tmp_path / "masks.npy", masks.numpy())
    assert torch.equal(known_per_row(Rows(RowFile(tmp_path / "masks.npy"))), expected)
    assert torch.equal(known_per_row(masks), expected)
    disk_target = Target("masks", Rows(RowFile(tmp_path / "masks.npy")))
    assert torch.equal(disk_target.labelled, Target("masks", masks).labelled)
    assert disk_target.ident() == Target("masks", masks).ident()


def old_iterate_batches(split, batch_size, generator, augment, drop_singleton, order):
    """The batches as weakseg drew them before the store existed (whole tensors indexed, augment_batch)."""
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if drop_singleton and len(index) == 1 and len(order) > 1:
            break
        images, masks = split.images[index], split.masks[index]
        images, masks = augment_batch(images, masks, list(augment), generator)
        yield images.float().div_(255), masks.long(), index.tolist()


@pytest.mark.parametrize("workers", [0, 2])
def test_batches_are_the_ones_drawn_before(tmp_path, workers):
    split = blob_split(21, size=32)
    disk = on_disk(split, tmp_path / "entry")
    order = torch.randperm(21, generator=torch.Generator().manual_seed(1)).repeat(2)[:41]
    old_gen, new_gen = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    old = list(old_iterate_batches(split, 8, old_gen, ["hflip", "vflip"], True, order))
    kwargs = {"generator": new_gen, "augment": ["hflip", "vflip"], "drop_singleton": True, "order": order}
    new = list(iterate_batches(disk, 8, CPU, workers=workers, **kwargs))
    assert len(old) == len(new) == 5  # the last batch of one image is dropped
    for (a, am, ai), (b, bm, bi) in zip(old, new, strict=True):
        assert torch.equal(a, b) and torch.equal(am, bm) and ai == bi
    assert torch.equal(old_gen.get_state(), new_gen.get_state())  # the next epoch draws alike too


def trained(out_dir, train, val, **config):
    seed_everything(3)
    model = build_model("unet", weights=None)
    base = {"epochs": 2, "batch_size": 8, "lr": 3e-3, "loss": "ce+dice", "progress": False}
    result = fit(model, train, val, TrainConfig(**(base | config)), out_dir, CPU, seed=3)
    return model, result


def test_training_from_disk_is_training_from_ram(tmp_path):
    """Same seed, same weights and scores: tensors in RAM (the path before the store), rows on disk read in
    this process, and rows on disk read by two DataLoader workers."""
    train, val = blob_split(36, size=32, seed=0), blob_split(12, size=32, seed=1)
    disk_train, disk_val = on_disk(train, tmp_path / "train"), on_disk(val, tmp_path / "val")
    ram_model, ram = trained(tmp_path / "ram", train, val, augment=["hflip", "vflip"])
    for name, workers in (("disk", 0), ("workers", 2)):
        model, result = trained(tmp_path / name, disk_train, disk_val, augment=["hflip", "vflip"], workers=workers)
        for key, value in ram_model.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), (name, key)
        strip = [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in result.history]
        assert strip == [{k: v for k, v in row.items() if k not in ("seconds", "images_per_s")} for row in ram.history]
        assert evaluate_model(model, disk_val, CPU) == evaluate_model(ram_model, val, CPU)


def test_training_reads_a_batch_of_rows_at_a_time(tmp_path, monkeypatch):
    """Fitting, validating and testing a split on disk never maps or gathers it whole."""
    train = on_disk(blob_split(30, size=32, seed=0), tmp_path / "train")
    test = on_disk(blob_split(10, size=32, seed=1), tmp_path / "test")
    holdout, val = train.subset(range(22)), train.subset(range(22, 30))
    reads: list[int] = []
    original = RowFile.read

    def read(self, rows):
        reads.append(len(rows))
        return original(self, rows)

    def mapped(self):
        raise AssertionError("a whole split was mapped")

    monkeypatch.setattr(RowFile, "read", read)
    monkeypatch.setattr(RowFile, "mapped", mapped)
    model, _ = trained(tmp_path / "run", holdout, val.with_masks(val.mask_rows), epochs=1)
    evaluate_model(model, test, CPU, batch_size=4)
    assert reads and max(reads) <= 256  # batches of 8 and 4, the labelled-pixel count in chunks of 256 rows
    assert holdout.image_rows._whole is None and val.image_rows._whole is None


def test_prepare_reads_an_older_cache_file_without_decoding(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))
    ds = OxfordPet(demo_root, split="test")
    fresh = prepare(ds, 32, keep_native=True, progress=False, use_cache=False)
    (entry,) = [p for p in (tmp_path / "prepared").iterdir()]  # the temporary of the uncached split
    stem = prepared_module._cache_key(ds, 32, "resize", True, ds.fingerprint())
    legacy = PreparedSplit.__new__(PreparedSplit)  # the dataclass of tensors that weakseg pickled before
    legacy.__dict__ = {
        "names": fresh.names,
        "images": fresh.images.clone(),
        "masks": fresh.masks.clone(),
        "labels": fresh.labels,
        "boxes": fresh.boxes,
        "geometry": fresh.geometry,
        "native_masks": [fresh.native_masks[i] for i in range(len(fresh))],
        "mask_classes": fresh.mask_classes,
        "tag_classes": fresh.tag_classes,
        "fingerprint": fresh.fingerprint,
        "skipped": [],
        "labelled": fresh.labelled,
        "points": fresh.points,
    }
    torch.save(legacy, tmp_path / "prepared" / f"oxford_pet-{stem}.pt")
    monkeypatch.setattr(ds, "load", lambda name: pytest.fail(f"{name} decoded again"))
    converted = prepare(ds, 32, keep_native=True, progress=False)
    assert converted.on_disk and isinstance(converted.native_masks, NativeMasks)
    assert torch.equal(converted.images, fresh.images) and torch.equal(converted.masks, fresh.masks)
    assert converted.names == fresh.names and converted.geometry == fresh.geometry
    for i in range(len(fresh)):
        np.testing.assert_array_equal(converted.native_masks[i], fresh.native_masks[i])
    assert (tmp_path / "prepared" / f"oxford_pet-{stem}").is_dir()
    assert (tmp_path / "prepared" / f"oxford_pet-{stem}.pt").is_file()  # left for older checkouts
    del fresh
    gc.collect()
    assert not entry.exists()  # the uncached split's folder went with it


def test_native_masks_and_subsets_follow_the_images(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))
    ds = OxfordPet(demo_root, split="test")
    split = prepare(ds, 32, keep_native=True, progress=False)
    sub = split.subset([5, 2, 2])
    assert isinstance(sub.native_masks, NativeMasks) and len(sub.native_masks) == 3
    for k, i in enumerate([5, 2, 2]):
        np.testing.assert_array_equal(sub.native_masks[k], ds[i].mask)
        assert torch.equal(sub.image_rows[k], split.images[i])
    assert evaluate_model(build_model("unet", weights=None), sub, CPU)["images"] == 3
    copy = pickle.loads(pickle.dumps(sub))  # by path, as a spawned worker gets it
    np.testing.assert_array_equal(copy.native_masks[0], ds[5].mask)
    assert torch.equal(copy.images, sub.images)


def test_a_killed_preparation_leaves_nothing_behind(demo_root, tmp_path, monkeypatch):
    monkeypatch.setenv("WEAKSEG_CACHE", str(tmp_path))
    ds = OxfordPet(demo_root, split="test")

    def interrupted(name):
        raise KeyboardInterrupt  # Ctrl-C in the middle of decoding

    monkeypatch.setattr(ds, "load", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prepare(ds, 32, progress=False)
    assert not list((tmp_path / "prepared").iterdir())  # its temporary folder was removed
    # a folder left by a writer killed outright (SIGKILL) goes when the next preparation starts
    ended = subprocess.Popen(["true"])
    ended.wait()
    stale = tmp_path / "prepared" / f".oxford_pet-0123.{weakseg_io._HOST}-{ended.pid}.abcdefgh.tmp"
    stale.mkdir()
    (stale / "images.npy").write_bytes(b"half")
    assert prepare(OxfordPet(demo_root, split="test"), 32, progress=False).on_disk
    assert not stale.exists()
