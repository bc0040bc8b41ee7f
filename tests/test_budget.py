"""Supervision budgets: seeded selections of masks / boxes and point sampling."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import draw_object
from weakseg.budget import Budget, BudgetSelection, point_masks, sample_clicks, sample_points, select
from weakseg.data.sample import IGNORE_INDEX
from weakseg.data.transforms import fit_sample

NAMES = [f"{breed}_{i}" for breed in ("Abyssinian", "Bengal", "american_bulldog") for i in range(1, 41)]


def shuffled(names: list[str], seed: int) -> list[str]:
    return [names[i] for i in np.random.default_rng(seed).permutation(len(names))]


def pet_like_mask(index: int = 0, size: tuple[int, int] = (48, 64)) -> np.ndarray:
    """0 background, 1 object, IGNORE_INDEX on a 1-pixel ring around the object (like an Oxford trimap)."""
    _, obj = draw_object(index, *size)
    ring = np.abs(np.diff(obj.astype(int), axis=0, prepend=0)) + np.abs(np.diff(obj.astype(int), axis=1, prepend=0))
    mask = obj.copy()
    mask[ring > 0] = IGNORE_INDEX
    return mask


# --------------------------------------------------------------------------------------------------
# Image selection


def test_same_seed_same_selection_in_any_input_order():
    budget = Budget(coverage=10, boxes=25, seed=3)
    first = select(budget, NAMES)
    for order_seed in range(3):
        again = select(Budget(coverage=10, boxes=25, seed=3), shuffled(NAMES, order_seed))
        assert again.masks == first.masks and again.boxes == first.boxes
    assert first.masks == sorted(first.masks) and set(first.masks) <= set(NAMES)
    assert first.images == len(NAMES)


def test_different_seeds_differ():
    picks = {tuple(select(Budget(coverage=10, seed=seed), NAMES).masks) for seed in range(6)}
    assert len(picks) == 6
    # masks and boxes are drawn independently: the same seed does not give the same images
    selection = select(Budget(coverage=20, boxes=20, seed=0), NAMES)
    assert selection.masks != selection.boxes


@pytest.mark.parametrize(
    ("percent", "expected"),
    [(10, 12), (25, 30), (50, 60), (1, 1), (0.1, 1), (99, 119), (100, 120), (150, 120), (0, 0), (-5, 0)],
)
def test_coverage_percent_gives_the_expected_count(percent, expected):
    selection = select(Budget(coverage=percent, boxes=percent, seed=1), NAMES)
    assert len(selection.masks) == expected == len(selection.boxes)
    assert len(set(selection.masks)) == expected


def test_full_coverage_keeps_every_image_sorted():
    selection = select(Budget(coverage=100, boxes=0), shuffled(NAMES, 0))
    assert selection.masks == sorted(NAMES) and selection.boxes == []
    assert select(Budget(coverage=50), []).masks == []


def test_a_larger_budget_keeps_the_images_of_a_smaller_one():
    small = select(Budget(coverage=5, seed=2), NAMES).masks
    large = select(Budget(coverage=40, seed=2), NAMES).masks
    # the same permutation is cut at a different length: a bigger budget keeps the smaller one's images
    assert set(small) <= set(large)


def test_selection_save_round_trips(tmp_path):
    budget = Budget(coverage=10, boxes=5, density=0.5, point_mode="balanced", seed=7)
    selection = select(budget, NAMES)
    path = tmp_path / "run" / "budget.json"
    selection.save(path)
    data = json.loads(path.read_text())
    assert data["budget"] == {
        "coverage": 10,
        "boxes": 5,
        "density": 0.5,
        "point_mode": "balanced",
        "seed": 7,
        "clicks": None,
        "from_files": False,
    }
    assert data["images"] == 120 and data["masks"] == selection.masks and data["boxes"] == selection.boxes
    loaded = BudgetSelection(
        budget=Budget(**data["budget"]), masks=data["masks"], boxes=data["boxes"], images=data["images"]
    )
    assert loaded == selection
    assert select(loaded.budget, NAMES) == selection  # the recorded budget reproduces the selection


# --------------------------------------------------------------------------------------------------
# Points


@pytest.mark.parametrize("density", [0.5, 2.0, 10.0, 37.5])
def test_point_density_labels_the_right_number_of_pixels(density):
    mask = pet_like_mask(0)
    valid = int((mask != IGNORE_INDEX).sum())
    points = sample_points(mask, density, "Abyssinian_1", seed=0)
    labelled = points != IGNORE_INDEX
    assert labelled.sum() == max(1, round(valid * density / 100))
    assert points.shape == mask.shape and points.dtype == mask.dtype
    np.testing.assert_array_equal(points[labelled], mask[labelled])  # labels are copied, never invented
    assert not (labelled & (mask == IGNORE_INDEX)).any()


def test_points_never_label_ignore_pixels():
    mask = pet_like_mask(1)
    mask[:, :20] = IGNORE_INDEX  # a large unlabelled region
    for seed in range(5):
        for mode in ("uniform", "balanced"):
            points = sample_points(mask, 30.0, f"img_{seed}", seed=seed, mode=mode)
            assert not ((points != IGNORE_INDEX) & (mask == IGNORE_INDEX)).any()


def test_point_edge_cases():
    mask = pet_like_mask(2)
    np.testing.assert_array_equal(sample_points(mask, 100, "a", 0), mask)
    assert (sample_points(mask, 0, "a", 0) == IGNORE_INDEX).all()
    tiny = sample_points(mask, 1e-6, "a", 0)
    assert (tiny != IGNORE_INDEX).sum() == 1  # at least one point
    unlabelled = np.full((8, 8), IGNORE_INDEX, np.uint8)
    assert (sample_points(unlabelled, 50, "a", 0) == IGNORE_INDEX).all()
    with pytest.raises(ValueError, match="point mode"):
        sample_points(mask, 1, "a", 0, mode="grid")


def test_balanced_points_cover_each_class():
    mask = np.zeros((64, 64), np.uint8)
    mask[:6, :6] = 1  # a small object: 36 of 4096 pixels
    mask[40:42, 40:50] = 2
    mask[50:, 50:] = IGNORE_INDEX
    for seed in range(4):
        uniform = sample_points(mask, 1.0, "x", seed=seed, mode="uniform")
        balanced = sample_points(mask, 1.0, "x", seed=seed, mode="balanced")
        k = round(int((mask != IGNORE_INDEX).sum()) * 0.01)
        counts = {c: int((balanced == c).sum()) for c in (0, 1, 2)}
        assert counts == {0: k // 3, 1: k // 3, 2: k // 3}
        assert (uniform != IGNORE_INDEX).sum() == k
    # a class smaller than its share gives all its pixels
    pool_limited = sample_points(mask, 40.0, "x", seed=0, mode="balanced")
    assert (pool_limited == 2).sum() == 20 and (pool_limited == 1).sum() == 36


def test_points_are_deterministic_per_seed_and_name():
    mask = pet_like_mask(3)
    a = sample_points(mask, 5, "Bengal_10", seed=1)
    np.testing.assert_array_equal(a, sample_points(mask.copy(), 5, "Bengal_10", seed=1))
    assert not np.array_equal(a, sample_points(mask, 5, "Bengal_11", seed=1))
    assert not np.array_equal(a, sample_points(mask, 5, "Bengal_10", seed=2))


def test_point_masks_over_a_stack(demo_root):
    from weakseg.data.oxford_pet import OxfordPet

    ds = OxfordPet(demo_root, split="test")
    samples = [fit_sample(ds[i], 64, "pad")[0] for i in range(4)]
    masks = torch.stack([torch.from_numpy(s.mask) for s in samples])
    names = [s.name for s in samples]
    budget = Budget(density=2.0, point_mode="uniform", seed=5)
    points = point_masks(masks, names, budget)
    assert points.shape == masks.shape and points.dtype == masks.dtype
    for i, name in enumerate(names):
        expected = sample_points(masks[i].numpy(), 2.0, name, seed=5)
        assert torch.equal(points[i], torch.from_numpy(expected))
        labelled = points[i] != IGNORE_INDEX
        assert labelled.sum() == max(1, round(int((masks[i] != IGNORE_INDEX).sum()) * 0.02))
        assert torch.equal(points[i][labelled], masks[i][labelled])
    # per-image choices depend on the name, not on the position in the stack
    reversed_points = point_masks(masks.flip(0), names[::-1], budget)
    assert torch.equal(reversed_points.flip(0), points)
    with pytest.raises(ValueError, match="no point density"):
        point_masks(masks, names, Budget())
    with pytest.raises(ValueError):
        point_masks(masks, names[:2], budget)


def test_clicks_land_inside_every_object_and_background_region():
    mask = np.zeros((40, 60), np.uint8)
    mask[5:15, 5:20] = 1  # two pets, one background region, a trimap-like ignore ring on the second
    mask[22:36, 30:55] = 1
    mask[21, 29:56] = IGNORE_INDEX
    clicks = sample_clicks(mask, 3, "two_pets", seed=4)
    labelled = clicks != IGNORE_INDEX
    assert labelled.sum() == 9 and (clicks[labelled] == mask[labelled]).all()
    assert (clicks[5:15, 5:20] == 1).sum() == 3 and (clicks[22:36, 30:55] == 1).sum() == 3
    # away from the border: no click on an object's outer ring
    ring = mask.copy()
    ring[6:14, 6:19] = 0
    ring[23:35, 31:54] = 0
    assert not ((clicks == 1) & (ring == 1)).any()
    assert np.array_equal(clicks, sample_clicks(mask, 3, "two_pets", seed=4))
    assert not np.array_equal(clicks, sample_clicks(mask, 3, "two_pets", seed=5))
    masks = torch.from_numpy(np.stack([mask, mask]))
    points = point_masks(masks, ["a", "b"], Budget(clicks=1))
    assert ((points != IGNORE_INDEX).flatten(1).sum(1) == 3).all()
