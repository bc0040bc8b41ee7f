"""Shared fixtures: a per-session prepared-split cache, the embedded demo sample, the real datasets, and a
generator of tiny folder datasets with known ground truth."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest

import weakseg

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO_ROOT / ".." / "shared" / "data").resolve()
DEMO_ROOT = Path(weakseg.__file__).resolve().parent / "assets" / "demo" / "oxford-iiit-pet-mini"
SHARED_REASON = "needs ../shared/data (real datasets); absent in this checkout"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"requires_shared: {SHARED_REASON}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("requires_shared") and not SHARED_DATA.is_dir():
        pytest.skip(SHARED_REASON)


@pytest.fixture(autouse=True, scope="session")
def _weakseg_cache(tmp_path_factory: pytest.TempPathFactory):
    """Point the prepared-split disk cache at a fresh folder for this test session."""
    with pytest.MonkeyPatch.context() as mp:
        cache = tmp_path_factory.mktemp("weakseg-cache")
        mp.setenv("WEAKSEG_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def demo_root() -> Path:
    """The Oxford-IIIT Pet mini sample shipped in weakseg/assets (official layout)."""
    assert (DEMO_ROOT / "annotations" / "list.txt").is_file(), "run benchmarks/make_demo_sample.py"
    return DEMO_ROOT


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data next to the repository (real datasets), or a skip."""
    if not SHARED_DATA.is_dir():
        pytest.skip(SHARED_REASON)
    return SHARED_DATA


@dataclass
class FolderTruth:
    """What ``make_folder_dataset`` wrote: the root and the expected content per image name."""

    root: Path
    names: list[str]
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)
    masks: dict[str, np.ndarray] = field(default_factory=dict)  # class indices (0/1 binary, 0..2 index mode)
    boxes: dict[str, np.ndarray] = field(default_factory=dict)  # x0, y0, x1, y1 (exclusive)
    labels: dict[str, list[str]] = field(default_factory=dict)
    splits: dict[str, list[str]] = field(default_factory=dict)


def draw_object(index: int, height: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A noisy RGB background with one filled ellipse; returns (image, binary object mask)."""
    rng = np.random.default_rng([seed, index])
    background = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
    center = (int(rng.integers(width // 3, 2 * width // 3)), int(rng.integers(height // 3, 2 * height // 3)))
    axes = (int(rng.integers(width // 8, width // 4)), int(rng.integers(height // 8, height // 4)))
    angle = float(rng.integers(0, 180))
    mask = np.zeros((height, width), np.uint8)
    cv2.ellipse(mask, center, axes, angle, 0, 360, 1, thickness=-1)
    colour = tuple(int(c) for c in rng.integers(150, 256, 3))
    image = background.copy()
    image[mask == 1] = colour
    return image, mask


@pytest.fixture
def make_folder_dataset(tmp_path: Path):
    """Factory writing a tiny folder dataset (see ``weakseg.data.folder``) and returning its ground truth.

    Images are PNG ellipses on noise; masks are 0/255 PNG (or class indices 0/1/2 with ``mask_mode='index'``,
    the class being 1 for 'cat' and 2 for 'dog'); labels.csv names files with their extension; boxes.json is
    COCO (x, y, w, h) with the tight box of each ellipse, plus a second box on the first image.
    """

    def make(
        name: str = "folder",
        n: int = 6,
        masks: bool = True,
        labels: bool = True,
        boxes: bool = True,
        splits: dict[str, list[int]] | None = None,
        mask_mode: str = "binary",
        splits_subdir: bool = False,
    ) -> FolderTruth:
        root = tmp_path / name
        (root / "images").mkdir(parents=True)
        if masks:
            (root / "masks").mkdir()
        truth = FolderTruth(root=root, names=[f"img_{i:03d}" for i in range(n)])
        coco: dict[str, list] = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "object"}]}
        rows = []
        for i, stem in enumerate(truth.names):
            height, width = 40 + 8 * (i % 3), 56 + 8 * (i % 2)
            image, obj = draw_object(i, height, width)
            cv2.imwrite(str(root / "images" / f"{stem}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
            tags = ["cat"] if i % 2 == 0 else ["dog"]
            if i == 1:
                tags = ["dog", "cat"]
            truth.sizes[stem] = (height, width)
            truth.labels[stem] = tags
            class_index = 1 if tags[0] == "cat" else 2
            if masks:
                stored = obj * 255 if mask_mode == "binary" else obj * class_index
                cv2.imwrite(str(root / "masks" / f"{stem}.png"), stored)
                truth.masks[stem] = obj if mask_mode == "binary" else obj * class_index
            x, y, w, h = cv2.boundingRect(obj)
            stem_boxes = [(x, y, w, h)] + ([(2.5, 3.0, 10.0, 6.5)] if i == 0 else [])
            truth.boxes[stem] = np.array([(bx, by, bx + bw, by + bh) for bx, by, bw, bh in stem_boxes], np.float32)
            coco["images"].append({"id": 100 + i, "file_name": f"{stem}.png", "height": height, "width": width})
            for bx, by, bw, bh in stem_boxes:
                coco["annotations"].append(
                    {
                        "id": len(coco["annotations"]) + 1,
                        "image_id": 100 + i,
                        "category_id": 1,
                        "bbox": [bx, by, bw, bh],
                        "area": bw * bh,
                        "iscrowd": 0,
                    }
                )
            rows.append({"name": f"{stem}.png", "label": ";".join(tags)})
        if labels:
            with open(root / "labels.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=["name", "label"])
                writer.writeheader()
                writer.writerows(rows)
        if boxes:
            (root / "boxes.json").write_text(json.dumps(coco))
        for split, indices in (splits or {}).items():
            split_dir = root / "splits" if splits_subdir else root
            split_dir.mkdir(exist_ok=True)
            truth.splits[split] = [truth.names[i] for i in indices]
            (split_dir / f"{split}.txt").write_text("".join(f"{s}\n" for s in truth.splits[split]))
        return truth

    return make
