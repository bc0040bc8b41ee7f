"""A dataset split decoded once, fitted to the model size and held as tensors (cached on disk)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weakseg.data.base import SegmentationDataset
from weakseg.data.sample import IGNORE_INDEX
from weakseg.data.transforms import Geometry, augment_batch, check_size, fit_sample
from weakseg.errors import ConfigError
from weakseg.identity import digest
from weakseg.io import atomic_path
from weakseg.progress import progress_bar

CACHE_VERSION = 4  # 2: keyed by the files' fingerprint; splits carry it. 3: checked loaders; skipped items listed
# 4: clicks, and masks of some images only (``labelled``)


def cache_dir() -> Path:
    """Where prepared splits are cached: ``$WEAKSEG_CACHE`` or ``~/.cache/weakseg``."""
    return Path(os.environ.get("WEAKSEG_CACHE", Path.home() / ".cache" / "weakseg"))


@dataclass
class PreparedSplit:
    """Images (N, 3, S, S) uint8, masks (N, S, S) uint8 with ``IGNORE_INDEX``, and per-image metadata.

    ``masks`` is None when no image has a mask; ``labelled`` says which images have one (the others' masks are
    all ``IGNORE_INDEX``). ``points``: each image's clicks (K, 3) x, y, class at model size. ``native_masks``
    keeps the ground truth at native resolution (for honest evaluation), if asked and every image has a mask.
    """

    names: list[str]
    images: torch.Tensor
    masks: torch.Tensor | None
    labels: list[list[int]]
    boxes: list[np.ndarray]
    geometry: list[Geometry]
    native_masks: list[np.ndarray] | None = None
    mask_classes: list[str] = field(default_factory=lambda: ["background", "foreground"])
    tag_classes: list[str] = field(default_factory=list)
    fingerprint: str = ""
    """:meth:`SegmentationDataset.fingerprint` of the files the split was prepared from."""
    skipped: list[dict[str, str]] = field(default_factory=list)
    """Items left out because their files are bad (``on_error='skip'``): ``{split, name, file, reason}``, in the
    dataset's order. Not carried by :meth:`subset`."""
    labelled: list[bool] = field(default_factory=list)
    points: list[np.ndarray] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.labelled:
            self.labelled = [self.masks is not None] * len(self.names)
        if not self.points:
            self.points = [np.zeros((0, 3), np.float32) for _ in self.names]

    @property
    def labelled_names(self) -> list[str]:
        """The images that have a mask."""
        return [n for n, has in zip(self.names, self.labelled, strict=True) if has]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, indices: list[int] | np.ndarray) -> PreparedSplit:
        """A view on some of the images (tensors are indexed, not copied per sample)."""
        idx = [int(i) for i in indices]
        index = torch.as_tensor(idx, dtype=torch.long)
        return PreparedSplit(
            names=[self.names[i] for i in idx],
            images=self.images[index],
            masks=None if self.masks is None else self.masks[index],
            labels=[self.labels[i] for i in idx],
            boxes=[self.boxes[i] for i in idx],
            geometry=[self.geometry[i] for i in idx],
            native_masks=None if self.native_masks is None else [self.native_masks[i] for i in idx],
            mask_classes=self.mask_classes,
            tag_classes=self.tag_classes,
            fingerprint=self.fingerprint,
            labelled=[self.labelled[i] for i in idx],
            points=[self.points[i] for i in idx],
        )

    def with_masks(self, masks: torch.Tensor) -> PreparedSplit:
        """The same images with other training masks (pseudo-labels, budgets)."""
        if masks.shape != (len(self), self.size, self.size):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit {len(self)} images of {self.size}")
        out = self.subset(range(len(self)))
        out.masks, out.labelled = masks, [True] * len(self)
        return out


def _is_option(value: object) -> bool:
    """A dataset attribute that can change what is prepared: a plain value or a list of them (declared classes)."""
    plain = (str, int, float, bool)
    return isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value))


def _cache_key(dataset: SegmentationDataset, size: int, fit: str, keep_native: bool, files: str) -> str:
    ident = {
        "v": CACHE_VERSION,
        "dataset": type(dataset).__name__,
        "root": str(dataset.root.resolve()),
        "split": dataset.split,
        "size": size,
        "fit": fit,
        "native": keep_native,
        "names": digest(dataset.names, 40),
        "files": files,
        "options": {k: v for k, v in vars(dataset).items() if k not in ("names", "_skipped") and _is_option(v)},
    }
    return digest(ident, 20)


def prepare(
    dataset: SegmentationDataset,
    size: int,
    fit: str = "resize",
    keep_native: bool = False,
    use_cache: bool = True,
    progress: bool = True,
) -> PreparedSplit:
    """Decode and fit every sample of ``dataset`` (in threads), or load the same from the disk cache.

    An item whose files are bad stops with a :class:`~weakseg.errors.DataFileError`, or, with the dataset's
    ``on_error='skip'``, is left out and listed in the split's ``skipped``. A split without images is an error."""
    check_size(size)
    if not len(dataset):
        raise ConfigError(f"split '{dataset.split}' of '{dataset.root}' holds no images")
    files = dataset.fingerprint()  # an edited image or mask on disk is a cache miss
    key = _cache_key(dataset, size, fit, keep_native, files)
    path = cache_dir() / "prepared" / f"{dataset.key or type(dataset).__name__}-{key}.pt"
    if use_cache and path.is_file():
        try:
            return torch.load(path, weights_only=False)
        except Exception:  # a corrupt cache is rebuilt, never fatal
            path.unlink(missing_ok=True)

    def load(i: int):
        sample = dataset.try_load(dataset.names[i])
        if sample is None:
            return None
        fitted, geometry = fit_sample(sample, size, fit)
        return fitted, geometry, (sample.mask if keep_native else None)

    n = len(dataset)
    images = torch.empty((n, 3, size, size), dtype=torch.uint8)
    masks = torch.full((n, size, size), IGNORE_INDEX, dtype=torch.uint8)
    names, labels, boxes, geometry, native, labelled, points = [], [], [], [], [], [], []
    already_skipped = len(dataset.skipped)
    with (
        ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task(f"preparing {dataset.key or 'dataset'}/{dataset.split}", total=n)
        for source, loaded in enumerate(pool.map(load, range(n))):
            bar.advance(task)
            if loaded is None:  # skipped: its file and reason are in dataset.skipped
                continue
            fitted, geo, native_mask = loaded
            i = len(names)
            names.append(dataset.names[source])
            images[i] = torch.from_numpy(fitted.image).permute(2, 0, 1)
            labelled.append(fitted.mask is not None)
            if fitted.mask is not None:
                masks[i] = torch.from_numpy(fitted.mask)
            labels.append(fitted.labels)
            boxes.append(fitted.boxes)
            points.append(fitted.points)
            geometry.append(geo)
            native.append(native_mask)
    order = {name: k for k, name in enumerate(dataset.names)}
    skipped = sorted(dataset.skipped[already_skipped:], key=lambda item: order.get(item["name"], n))
    if not names:
        first = skipped[0]
        raise ConfigError(
            f"all {n} images of split '{dataset.split}' were skipped as unreadable, the first: {first['reason']}: "
            f"'{first['file']}'"
        )
    if len(names) < n:  # copies: a cached view would store the whole buffer
        images, masks = images[: len(names)].clone(), masks[: len(names)].clone()
    split = PreparedSplit(
        names=names,
        images=images,
        masks=masks if any(labelled) else None,
        labels=labels,
        boxes=boxes,
        geometry=geometry,
        native_masks=native if keep_native and all(labelled) else None,
        mask_classes=list(dataset.mask_classes),
        tag_classes=list(dataset.tag_classes),
        fingerprint=files,
        skipped=skipped,
        labelled=labelled,
        points=points,
    )
    if use_cache:
        with atomic_path(path) as tmp:
            torch.save(split, tmp)
    return split


def draw(pool: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` entries of ``pool`` in shuffled passes (repeated and cut when ``count`` exceeds its size)."""
    if not len(pool):
        return pool[:0]
    passes = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-count // len(pool)))]
    return torch.cat(passes)[:count]


def iterate_batches(
    split: PreparedSplit,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: list[str] | tuple[str, ...] = (),
    drop_singleton: bool = False,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
    """Yield (images float [0, 1] on device, masks long on device or None, indices) batches, over ``order`` (the
    image indices to draw, repeats allowed) when given. Masks may carry extra leading dimensions per image
    ((N, K, S, S) for K targets): flips apply to all of them."""
    if order is None:
        n = len(split)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if drop_singleton and len(index) == 1 and len(order) > 1:
            break
        images = split.images[index]
        masks = None if split.masks is None else split.masks[index]
        if augment:
            images, masks = augment_batch(images, masks, list(augment), generator or torch.default_generator)
        images = images.to(device, non_blocking=True).float().div_(255)
        images = images.contiguous(memory_format=torch.channels_last)  # faster convolutions, CPU and GPU
        if masks is not None:
            masks = masks.to(device, non_blocking=True).long()
        yield images, masks, index.tolist()
