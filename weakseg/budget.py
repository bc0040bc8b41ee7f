"""Supervision budgets: a seeded, recorded choice of which training images keep which labels.

The same seed gives the same selection on any machine: choices come from NumPy's PCG64 generator seeded
with the budget seed and a fixed tag per choice (and the image name for per-image point sampling), over
names in sorted order, so they do not depend on dataset order, platform or process.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
import torch

from weakseg.data.sample import IGNORE_INDEX
from weakseg.io import write_json
from weakseg.labels import LabelLedger

if TYPE_CHECKING:
    from weakseg.data.prepared import PreparedSplit

POINT_MODES = ("uniform", "balanced")


def _rng(seed: int, *tags: str) -> np.random.Generator:
    return np.random.default_rng([seed, *(zlib.crc32(t.encode()) for t in tags)])


def choose_subset(names: list[str], percent: float, seed: int, tag: str) -> list[str]:
    """A seeded subset of ``percent`` % of the names (at least one if percent > 0), sorted."""
    ordered = sorted(names)
    if percent >= 100:
        return ordered
    if percent <= 0 or not ordered:
        return []
    k = max(1, round(len(ordered) * percent / 100))
    picked = _rng(seed, tag).permutation(len(ordered))[:k]
    return sorted(ordered[i] for i in picked)


@dataclass
class Budget:
    """What the annotation budget buys, in percent of training images (coverage, boxes) or pixels (density), or
    in clicks per object (each connected region of each class, background included)."""

    coverage: float = 100.0
    boxes: float = 0.0
    density: float | None = None
    point_mode: str = "uniform"
    seed: int = 0
    clicks: int | None = None
    from_files: bool = False


@dataclass
class BudgetSelection:
    """Which images keep full masks and boxes; point parameters (points are re-sampled from them), or, from
    files, the images that have clicks (``points``; None: every image when the budget has points)."""

    budget: Budget
    masks: list[str] = field(default_factory=list)
    boxes: list[str] = field(default_factory=list)
    images: int = 0
    points: list[str] | None = None

    def images_with(self, kind: str, names: list[str]) -> list[str]:
        """The images among ``names`` that the budget gives ``kind`` labels to (points and tags: every image
        when the budget has them)."""
        allowed = self.ledger().allowed[kind]
        return list(names) if allowed is None else [n for n in names if n in allowed]

    def ledger(self) -> LabelLedger:
        """An empty ledger that accepts exactly the labels this selection gives."""
        has_points = self.budget.density is not None or self.budget.clicks is not None
        points = set(self.points) if self.points is not None else None if has_points else set()
        return LabelLedger({"masks": set(self.masks), "boxes": set(self.boxes), "points": points, "tags": None})

    def save(self, path: str | Path, validation: list[str] | None = None) -> None:
        """Write the selection (and the images held out for validation, when given) as JSON."""
        data = {"budget": asdict(self.budget), "images": self.images, "masks": self.masks, "boxes": self.boxes}
        data |= {"points": self.points} if self.points is not None else {}
        write_json(path, data | ({"validation": validation} if validation is not None else {}))


def select(budget: Budget, names: list[str]) -> BudgetSelection:
    """Choose the images that keep full masks (``coverage`` %) and boxes (``boxes`` %)."""
    return BudgetSelection(
        budget=budget,
        masks=choose_subset(names, budget.coverage, budget.seed, "masks"),
        boxes=choose_subset(names, budget.boxes, budget.seed, "boxes"),
        images=len(names),
    )


def select_from_files(budget: Budget, split: PreparedSplit) -> BudgetSelection:
    """What the files hold: masks for the images that have one, boxes and clicks for those that have them."""
    names = split.names
    return BudgetSelection(
        budget=budget,
        masks=split.labelled_names,
        boxes=[n for n, b in zip(names, split.boxes, strict=True) if len(b)],
        images=len(names),
        points=[n for n, p in zip(names, split.points, strict=True) if len(p)],
    )


def click_masks(split: PreparedSplit) -> torch.Tensor:
    """(N, S, S) uint8 masks of a prepared split's clicks: the clicked pixel (at model size) has the clicked class,
    everything else ``IGNORE_INDEX``; a later click on the same pixel wins."""
    out = torch.full((len(split), split.size, split.size), IGNORE_INDEX, dtype=torch.uint8)
    for i, points in enumerate(split.points):
        if len(points):
            x = np.clip(np.floor(points[:, 0]).astype(int), 0, split.size - 1)
            y = np.clip(np.floor(points[:, 1]).astype(int), 0, split.size - 1)
            out[i, torch.from_numpy(y), torch.from_numpy(x)] = torch.from_numpy(points[:, 2].astype(np.uint8))
    return out


def sample_points(mask: np.ndarray, density: float, name: str, seed: int, mode: str = "uniform") -> np.ndarray:
    """Keep ``density`` % of the labelled pixels of ``mask`` as point labels; the rest becomes ignore.

    ``uniform`` samples labelled pixels uniformly; ``balanced`` splits the points equally between the classes
    present. At least one point per image is kept when the mask has any labelled pixel.
    """
    if mode not in POINT_MODES:
        raise ValueError(f"point mode must be one of {POINT_MODES}, not '{mode}'")
    flat = mask.reshape(-1)
    valid = np.flatnonzero(flat != IGNORE_INDEX)
    out = np.full_like(flat, IGNORE_INDEX)
    if density >= 100:
        out[valid] = flat[valid]
        return out.reshape(mask.shape)
    if valid.size == 0 or density <= 0:
        return out.reshape(mask.shape)
    rng = _rng(seed, "points", name)
    k = max(1, round(valid.size * density / 100))
    if mode == "uniform":
        chosen = rng.choice(valid, size=k, replace=False)
    else:
        classes = np.unique(flat[valid])
        per_class = max(1, k // len(classes))
        chosen = np.concatenate(
            [
                rng.choice(pool, size=min(per_class, pool.size), replace=False)
                for pool in (valid[flat[valid] == c] for c in classes)
            ]
        )
    out[chosen] = flat[chosen]
    return out.reshape(mask.shape)


def sample_clicks(mask: np.ndarray, k: int, name: str, seed: int) -> np.ndarray:
    """``k`` clicks per object: in every 8-connected region of every class of ``mask`` (background regions too),
    ``k`` pixels (fewer if the region is smaller) drawn away from the region's border when it has an interior,
    as an annotator clicks inside an object; the rest becomes ignore."""
    out = np.full_like(mask, IGNORE_INDEX)
    rng = _rng(seed, "clicks", name)
    for c in np.unique(mask[mask != IGNORE_INDEX]):
        count, regions = cv2.connectedComponents((mask == c).astype(np.uint8), connectivity=8)
        for r in range(1, count):
            region = (regions == r).astype(np.uint8)
            interior = cv2.erode(region, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
            ys, xs = np.nonzero(interior if interior.any() else region)
            chosen = rng.choice(len(ys), size=min(k, len(ys)), replace=False)
            out[ys[chosen], xs[chosen]] = c
    return out


def point_masks(masks: torch.Tensor, names: list[str], budget: Budget) -> torch.Tensor:
    """Point labels for a stack of masks (N, H, W): ``budget.clicks`` per object, or the budget's density."""
    if budget.clicks is None and budget.density is None:
        raise ValueError("the budget has no point density")

    def sample(mask: np.ndarray, name: str) -> np.ndarray:
        if budget.clicks is not None:
            return sample_clicks(mask, budget.clicks, name, budget.seed)
        return sample_points(mask, budget.density, name, budget.seed, budget.point_mode)

    out = [torch.from_numpy(sample(m.numpy(), n)) for m, n in zip(masks, names, strict=True)]
    return torch.stack(out) if out else masks.clone()
