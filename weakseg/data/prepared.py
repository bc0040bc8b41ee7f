"""A dataset split decoded once, fitted to the model size and stored by rows on disk (the prepared-split cache).

A cache entry is a folder: ``images.npy`` (N, 3, S, S) and ``masks.npy`` (N, S, S) uint8, the native-resolution
masks (``native.bin`` + ``native.npy``) when kept, and ``meta.pt`` with the per-image metadata. Preparation writes
each image's rows as it is decoded, and training reads the rows of one batch at a time (:mod:`weakseg.data.store`),
so neither holds the split's pixels in memory, however many images it has.

Large images (``tile``): instead of being fitted to S x S, each image is cut at native resolution into S x S tiles
(:func:`weakseg.data.tiles.tile_sample`: zero padding at the right / bottom borders, mask padding ignored), and
each tile is one row, named ``<image>@<y>,<x>``, with its :class:`~weakseg.data.tiles.TileOrigin` in
``origins``. The tiles of an image reassemble it exactly (:meth:`PreparedSplit.assemble`), so a tiled split also
serves scoring at native resolution by sliding windows, without native masks of its own.
"""

from __future__ import annotations

import os
import shutil
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from weakseg.data.base import SegmentationDataset
from weakseg.data.sample import Sample
from weakseg.data.store import (
    NativeMasks,
    RowFile,
    Rows,
    RowSource,
    SplitWriter,
    StackedRows,
    TemporaryFolder,
    as_rows,
)
from weakseg.data.tiles import TileOrigin, assemble, check_tiling, tile_sample
from weakseg.data.transforms import Geometry, apply_flips, check_size, draw_flips, fit_sample
from weakseg.errors import ConfigError
from weakseg.identity import digest
from weakseg.io import atomic_folder, remove_temporaries, temporary_folder
from weakseg.progress import progress_bar

CACHE_VERSION = 4  # 2: keyed by the files' fingerprint; splits carry it. 3: checked loaders; skipped items listed
# 4: clicks, and masks of some images only (``labelled``). Stored by rows in a folder since issue 14; an entry of
# the same key in the older single-file format (``<entry>.pt``) is converted on first use.

T = TypeVar("T")


def cache_dir() -> Path:
    """Where prepared splits are cached: ``$WEAKSEG_CACHE`` or ``~/.cache/weakseg``."""
    return Path(os.environ.get("WEAKSEG_CACHE", Path.home() / ".cache" / "weakseg"))


class PreparedSplit:
    """Images (N, 3, S, S) uint8, masks (N, S, S) uint8 with ``IGNORE_INDEX``, and per-image metadata.

    The pixels are :class:`~weakseg.data.store.Rows`, ``image_rows`` and ``mask_rows``: on disk for a prepared
    split (read a batch at a time, as :func:`iterate_batches` does), in RAM for one built from tensors.
    ``images`` and ``masks`` give them as whole tensors, for code that wants all images at once (mapped from the
    file for a whole split, gathered once for a subset).

    ``masks`` is None when no image has a mask; ``labelled`` says which images have one (the others' masks are
    all ``IGNORE_INDEX``). ``points``: each image's clicks (K, 3) x, y, class at model size. ``native_masks``
    keeps the ground truth at native resolution (for honest evaluation), if asked and every image has a mask.
    ``fingerprint``: :meth:`SegmentationDataset.fingerprint` of the files the split was prepared from.
    ``skipped``: items left out because their files are bad (``on_error='skip'``): ``{split, name, file,
    reason}``, in the dataset's order; not carried by :meth:`subset`.

    ``origins``: for a tiled split (rows are tiles of larger images, see the module notes), each row's
    :class:`~weakseg.data.tiles.TileOrigin`; None when each row is a whole image. Then ``geometry`` maps a row to
    its own part inside the image (the padding cut off, no resizing) and ``labels`` are the image's tags.
    """

    def __init__(
        self,
        names: list[str],
        images: torch.Tensor | Rows,
        masks: torch.Tensor | RowSource | None,
        labels: list[list[int]],
        boxes: list[np.ndarray],
        geometry: list[Geometry],
        native_masks: Sequence[np.ndarray] | None = None,
        mask_classes: list[str] | None = None,
        tag_classes: list[str] | None = None,
        fingerprint: str = "",
        skipped: list[dict[str, str]] | None = None,
        labelled: list[bool] | None = None,
        points: list[np.ndarray] | None = None,
        origins: list[TileOrigin] | None = None,
    ):
        self.names = names
        self.image_rows: Rows = as_rows(images)
        self.mask_rows: RowSource | None = None if masks is None else _rows(masks)
        self.labels = labels
        self.boxes = boxes
        self.geometry = geometry
        self.native_masks = native_masks
        self.mask_classes = list(mask_classes) if mask_classes is not None else ["background", "foreground"]
        self.tag_classes = list(tag_classes) if tag_classes is not None else []
        self.fingerprint = fingerprint
        self.skipped = list(skipped) if skipped else []
        self.labelled = list(labelled) if labelled else [masks is not None] * len(names)
        self.points = list(points) if points else [np.zeros((0, 3), np.float32) for _ in names]
        self.origins = list(origins) if origins is not None else None
        if self.origins is not None and len(self.origins) != len(names):
            raise ValueError(f"{len(self.origins)} tile origins for {len(names)} rows")

    @property
    def images(self) -> torch.Tensor:
        """All images (N, 3, S, S) uint8 as one tensor (see the class); batches read ``image_rows`` instead."""
        return self.image_rows.tensor()

    @images.setter
    def images(self, value: torch.Tensor | Rows) -> None:
        self.image_rows = as_rows(value)

    @property
    def masks(self) -> torch.Tensor | None:
        """All masks (N, S, S) uint8 as one tensor, or None (see the class); batches read ``mask_rows``."""
        return None if self.mask_rows is None else self.mask_rows.tensor()

    @masks.setter
    def masks(self, value: torch.Tensor | RowSource | None) -> None:
        self.mask_rows = None if value is None else _rows(value)

    @property
    def tiled(self) -> bool:
        """Whether the rows are tiles of larger images (``origins``) rather than whole images."""
        return self.origins is not None

    @property
    def image_of(self) -> list[str]:
        """Per row, the name of the image it shows: its tile's image, or its own name for a whole image."""
        return list(self.names) if self.origins is None else [o.image for o in self.origins]

    def rows_by_image(self) -> dict[str, list[int]]:
        """The rows of each image, images in the order of their first row (one row each when not tiled)."""
        out: dict[str, list[int]] = {}
        for row, image in enumerate(self.image_of):
            out.setdefault(image, []).append(row)
        return out

    def assemble(self, rows: Sequence[int]) -> tuple[np.ndarray, np.ndarray | None]:
        """The whole image (H, W, 3) uint8 at native resolution and its mask (H, W) from the tile ``rows`` of one
        image of a tiled split (:meth:`rows_by_image`); the mask is None when the split has none. Reads just those
        rows: memory is one image, whatever the split's size."""
        if self.origins is None:
            raise ValueError("assemble needs a tiled split (rows that are tiles of larger images)")
        index = list(rows)
        images = self.image_rows.take(index).numpy()
        masks = None if self.mask_rows is None else self.mask_rows.take(index).numpy()
        return assemble([self.origins[i] for i in index], images, masks)

    @property
    def labelled_names(self) -> list[str]:
        """The images that have a mask."""
        return [n for n, has in zip(self.names, self.labelled, strict=True) if has]

    def __len__(self) -> int:
        return len(self.names)

    @property
    def size(self) -> int:
        return int(self.image_rows.shape[-1])

    @property
    def on_disk(self) -> bool:
        """Whether the images are read from files (a prepared split) rather than held in RAM."""
        return self.image_rows.on_disk

    def __repr__(self) -> str:
        return f"PreparedSplit({len(self)} images of {self.size} px, {self.image_rows!r})"

    def __setstate__(self, state: dict[str, Any]) -> None:
        if "image_rows" not in state:  # pickled as the dataclass of tensors it once was (an older cache file)
            self.__init__(**state)
        else:
            self.__dict__.update({"origins": None} | state)  # pickled before tiles existed: whole images

    def subset(self, indices: Iterable[int]) -> PreparedSplit:
        """A view on some of the images (their rows are read when needed, not copied)."""
        idx = [int(i) for i in indices]
        index = torch.as_tensor(idx, dtype=torch.long)
        native = self.native_masks
        if native is not None:
            native = native.subset(idx) if isinstance(native, NativeMasks) else [native[i] for i in idx]
        return PreparedSplit(
            names=[self.names[i] for i in idx],
            images=self.image_rows.subset(index),
            masks=None if self.mask_rows is None else self.mask_rows.subset(index),
            labels=[self.labels[i] for i in idx],
            boxes=[self.boxes[i] for i in idx],
            geometry=[self.geometry[i] for i in idx],
            native_masks=native,
            mask_classes=self.mask_classes,
            tag_classes=self.tag_classes,
            fingerprint=self.fingerprint,
            labelled=[self.labelled[i] for i in idx],
            points=[self.points[i] for i in idx],
            origins=None if self.origins is None else [self.origins[i] for i in idx],
        )

    def with_masks(self, masks: torch.Tensor | Rows) -> PreparedSplit:
        """The same images with other training masks (pseudo-labels, budgets): a tensor or rows (N, S, S)."""
        if tuple(masks.shape) != (len(self), self.size, self.size):
            raise ValueError(f"masks of shape {tuple(masks.shape)} do not fit {len(self)} images of {self.size}")
        return self.with_mask_rows(_rows(masks))

    def with_mask_rows(self, rows: RowSource) -> PreparedSplit:
        """The same images with ``rows`` as their masks, every image labelled; rows may have leading dimensions per
        image beyond the mask's ((N, K, S, S) for K training targets, read together)."""
        if len(rows) != len(self):
            raise ValueError(f"{len(rows)} rows of masks for {len(self)} images")
        out = PreparedSplit(
            names=list(self.names),
            images=self.image_rows,
            masks=rows,
            labels=list(self.labels),
            boxes=list(self.boxes),
            geometry=list(self.geometry),
            native_masks=self.native_masks,
            mask_classes=self.mask_classes,
            tag_classes=self.tag_classes,
            fingerprint=self.fingerprint,
            labelled=[True] * len(self),
            points=list(self.points),
            origins=self.origins,
        )
        return out


def _rows(masks: torch.Tensor | RowSource) -> RowSource:
    return masks if isinstance(masks, StackedRows) else as_rows(masks)


def _is_option(value: object) -> bool:
    """A dataset attribute that can change what is prepared: a plain value or a list of them (declared classes)."""
    plain = (str, int, float, bool)
    return isinstance(value, plain) or (isinstance(value, (list, tuple)) and all(isinstance(v, plain) for v in value))


def _cache_key(
    dataset: SegmentationDataset,
    size: int,
    fit: str,
    keep_native: bool,
    files: str,
    tile: int | None = None,
    tile_overlap: int = 0,
) -> str:
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
    if tile is not None:  # tiles at native resolution: no size to fit to, no native masks (the tiles are native)
        ident |= {"size": tile, "fit": None, "native": False, "tile": tile, "tile_overlap": tile_overlap}
    return digest(ident, 20)


# ------------------------------------------------------------------------------ cache entries

META = "meta.pt"
_META_FIELDS = ("names", "labels", "boxes", "geometry", "mask_classes", "tag_classes", "fingerprint", "skipped")
_META_FIELDS += ("labelled", "points", "origins")


def _write_meta(folder: Path, split_fields: dict[str, Any], size: int, masks: bool, native: bool) -> None:
    meta = {**split_fields, "count": len(split_fields["names"]), "size": size, "masks": masks, "native": native}
    torch.save(meta, folder / META)


def open_split(folder: str | Path, keep: object = None) -> PreparedSplit:
    """The prepared split stored in ``folder`` (a cache entry); its pixels stay on disk. ``keep``: held by the
    readers (the owner of a temporary folder). Raises if the entry is incomplete or inconsistent."""
    folder = Path(folder)
    meta = torch.load(folder / META, weights_only=False)
    count, size = meta["count"], meta["size"]
    images = Rows(RowFile(folder / "images.npy", count, keep))
    if images.shape != (count, 3, size, size):
        raise ValueError(f"{folder}: images of shape {images.shape}, not {(count, 3, size, size)}")
    masks = Rows(RowFile(folder / "masks.npy", count, keep)) if meta["masks"] else None
    if masks is not None and masks.shape != (count, size, size):
        raise ValueError(f"{folder}: masks of shape {masks.shape}, not {(count, size, size)}")
    native = NativeMasks.open(folder, count, keep) if meta["native"] else None
    fields = {k: meta.get(k) for k in _META_FIELDS}  # entries written before tiles have no origins
    if any(len(fields[k]) != count for k in ("names", "labels", "boxes", "geometry", "labelled", "points")):
        raise ValueError(f"{folder}: metadata of another number of images than {count}")
    return PreparedSplit(images=images, masks=masks, native_masks=native, **fields)


def write_split(split: PreparedSplit, folder: str | Path, chunk: int = 64) -> None:
    """Store ``split`` in ``folder`` as a cache entry (:func:`open_split` reads it back), ``chunk`` rows at a
    time: how an older cache file is converted, and how a split built in RAM becomes a disk-backed one."""
    folder = Path(folder)
    native = split.native_masks
    writer = SplitWriter(folder, split.size, native=native is not None)
    for start in range(0, len(split), chunk):
        index = list(range(start, min(start + chunk, len(split))))
        images = split.image_rows.take(index).numpy()
        masks = None if split.mask_rows is None else split.mask_rows.take(index).numpy()
        for k, i in enumerate(index):
            writer.add(images[k], None if masks is None else masks[k], None if native is None else native[i])
    writer.close()
    fields = {k: getattr(split, k) for k in _META_FIELDS}
    _write_meta(folder, fields, split.size, split.mask_rows is not None, native is not None)


def _open_cached(entry: Path, legacy: Path) -> PreparedSplit | None:
    """The cache entry, or one converted from the older single-file format; None when there is neither. A
    corrupt entry is removed (and rebuilt by the caller), never fatal."""
    if entry.is_dir():
        try:
            return open_split(entry)
        except Exception:
            shutil.rmtree(entry, ignore_errors=True)
    if legacy.is_file():
        try:
            old = torch.load(legacy, weights_only=False)
        except Exception:
            legacy.unlink(missing_ok=True)
            return None
        with atomic_folder(entry) as tmp:
            write_split(old, tmp)
        return open_split(entry)
    return None


def _in_order(pool: ThreadPoolExecutor, fn: Callable[[int], T], count: int, ahead: int) -> Iterator[T]:
    """``fn(0), fn(1), ...`` run in ``pool``, yielded in order, at most ``ahead`` at a time (so that finished
    results never pile up in memory)."""
    pending: deque[Future[T]] = deque()
    try:
        for i in range(count):
            pending.append(pool.submit(fn, i))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


Piece = tuple[Sample, Geometry, np.ndarray | None, TileOrigin | None]
"""One row as decoded: the sample fitted (or one tile of it), its geometry, its native mask, its tile's origin."""


def _decode_into(
    folder: Path,
    dataset: SegmentationDataset,
    size: int,
    fit: str,
    keep_native: bool,
    files: str,
    progress: bool,
    tile: int | None = None,
    tile_overlap: int = 0,
) -> None:
    """Decode and fit (or tile) every sample of ``dataset`` (in threads), writing each image's rows into
    ``folder`` as it comes, then the metadata."""

    def load(i: int) -> list[Piece] | None:
        sample = dataset.try_load(dataset.names[i])
        if sample is None:
            return None
        if tile is not None:
            pieces = tile_sample(sample, tile, tile_overlap)
            return [(t, Geometry(*o.content(tile), *o.content(tile)), None, o) for t, o in pieces]
        fitted, geometry = fit_sample(sample, size, fit)
        return [(fitted, geometry, (sample.mask if keep_native else None), None)]

    n = len(dataset)
    keep_native = keep_native and tile is None  # tiles are at native resolution already
    writer = SplitWriter(folder, size, native=keep_native)
    names, labels, boxes, geometry, labelled, points, origins = [], [], [], [], [], [], []
    already_skipped = len(dataset.skipped)
    workers = os.cpu_count() or 1
    with (
        ThreadPoolExecutor(max_workers=workers) as pool,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task(f"preparing {dataset.key or 'dataset'}/{dataset.split}", total=n)
        for source, loaded in enumerate(_in_order(pool, load, n, 4 * workers)):
            bar.advance(task)
            if loaded is None:  # skipped: its file and reason are in dataset.skipped
                continue
            for fitted, geo, native_mask, origin in loaded:
                names.append(fitted.name if origin is not None else dataset.names[source])
                writer.add(fitted.image.transpose(2, 0, 1), fitted.mask, native_mask)
                labelled.append(fitted.mask is not None)
                labels.append(fitted.labels)
                boxes.append(fitted.boxes)
                points.append(fitted.points)
                geometry.append(geo)
                origins.append(origin)
    order = {name: k for k, name in enumerate(dataset.names)}
    skipped = sorted(dataset.skipped[already_skipped:], key=lambda item: order.get(item["name"], n))
    native = keep_native and bool(labelled) and all(labelled)
    writer.close(keep_native=native)
    if not names:
        first = skipped[0]
        raise ConfigError(
            f"all {n} images of split '{dataset.split}' were skipped as unreadable, the first: {first['reason']}: "
            f"'{first['file']}'"
        )
    fields = {
        "names": names,
        "labels": labels,
        "boxes": boxes,
        "geometry": geometry,
        "mask_classes": list(dataset.mask_classes),
        "tag_classes": list(dataset.tag_classes),
        "fingerprint": files,
        "skipped": skipped,
        "labelled": labelled,
        "points": points,
        "origins": origins if tile is not None else None,
    }
    _write_meta(folder, fields, size, any(labelled), native)


def prepare(
    dataset: SegmentationDataset,
    size: int,
    fit: str = "resize",
    keep_native: bool = False,
    use_cache: bool = True,
    progress: bool = True,
    tile: int | None = None,
    tile_overlap: int = 0,
) -> PreparedSplit:
    """Decode and fit every sample of ``dataset`` (in threads) into a cache entry, or open the entry made before.
    Without ``use_cache`` the entry is a temporary folder, removed once the split is no longer used.

    With ``tile`` the images are not fitted to ``size`` (nor is ``fit`` used): each is cut at native resolution
    into ``tile x tile`` rows overlapping by ``tile_overlap`` (see the module notes); ``keep_native`` is not
    needed then (the tiles reassemble the native image and mask).

    An item whose files are bad stops with a :class:`~weakseg.errors.DataFileError`, or, with the dataset's
    ``on_error='skip'``, is left out and listed in the split's ``skipped``. A split without images is an error."""
    if tile is not None:
        check_tiling(tile, tile_overlap)
        size = tile
    check_size(size)
    if not len(dataset):
        raise ConfigError(f"split '{dataset.split}' of '{dataset.root}' holds no images")
    files = dataset.fingerprint()  # an edited image or mask on disk is a cache miss
    key = _cache_key(dataset, size, fit, keep_native, files, tile, tile_overlap)
    stem = f"{dataset.key or type(dataset).__name__}-{key}"
    entry = cache_dir() / "prepared" / stem
    if use_cache and (cached := _open_cached(entry, entry.parent / f"{stem}.pt")) is not None:
        return cached
    remove_temporaries(entry.parent, recursive=False)  # entries whose writer was killed
    if use_cache:
        with atomic_folder(entry) as folder:
            _decode_into(folder, dataset, size, fit, keep_native, files, progress, tile, tile_overlap)
        return open_split(entry)
    folder = temporary_folder(entry)
    owner = TemporaryFolder(folder)
    try:
        _decode_into(folder, dataset, size, fit, keep_native, files, progress, tile, tile_overlap)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return open_split(folder, keep=owner)


# ------------------------------------------------------------------------------ batches


def draw(pool: torch.Tensor, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``count`` entries of ``pool`` in shuffled passes (repeated and cut when ``count`` exceeds its size)."""
    if not len(pool):
        return pool[:0]
    passes = [pool[torch.randperm(len(pool), generator=generator)] for _ in range(-(-count // len(pool)))]
    return torch.cat(passes)[:count]


Flips = list[tuple[int, torch.Tensor]]


def plan_batches(
    count: int,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: Sequence[str] = (),
    drop_singleton: bool = False,
    order: torch.Tensor | None = None,
) -> Iterator[tuple[torch.Tensor, Flips]]:
    """Each batch's image indices and flips, drawn from ``generator`` in the order the batches come (so that
    reading them in this process or in loader workers gives the same batches); see :func:`iterate_batches`."""
    if order is None:
        order = torch.randperm(count, generator=generator) if shuffle else torch.arange(count)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        if drop_singleton and len(index) == 1 and len(order) > 1:
            break
        flips = draw_flips(len(index), list(augment), generator or torch.default_generator) if augment else []
        yield index, flips


class BatchReader(Dataset):
    """Reads a planned batch: its image and mask rows, flipped as planned (uint8). A map-style dataset whose
    items are the plans, so that a :class:`~torch.utils.data.DataLoader`'s workers can read ahead."""

    def __init__(self, images: Rows, masks: RowSource | None):
        self.images = images
        self.masks = masks

    def __getitem__(self, plan: tuple[torch.Tensor, Flips]) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        index, flips = plan
        images = self.images.take(index)
        masks = None if self.masks is None else self.masks.take(index)
        images, masks = apply_flips(images, masks, flips)
        return images, masks, index


def _as_is(item: T) -> T:
    return item


def iterate_batches(
    split: PreparedSplit,
    batch_size: int,
    device: torch.device,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    augment: list[str] | tuple[str, ...] = (),
    drop_singleton: bool = False,
    order: torch.Tensor | None = None,
    workers: int = 0,
) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, list[int]]]:
    """Yield (images float [0, 1] on device, masks long on device or None, indices) batches, over ``order`` (the
    image indices to draw, repeats allowed) when given. Masks may carry extra leading dimensions per image
    ((N, K, S, S) for K targets): flips apply to all of them. Only a batch's rows are read from the split.

    ``workers`` > 0 reads and flips the batches in that many processes (a torch DataLoader) while the caller
    computes; the batches are the same, drawn here from ``generator`` in the same order."""
    plan = plan_batches(len(split), batch_size, shuffle, generator, augment, drop_singleton, order)
    reader = BatchReader(split.image_rows, split.mask_rows)
    if workers > 0:
        batches: Iterable[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]] = DataLoader(
            reader,
            batch_size=None,
            sampler=plan,
            num_workers=workers,
            collate_fn=_as_is,
            pin_memory=device.type == "cuda",
        )
    else:
        batches = map(reader.__getitem__, plan)
    for images, masks, index in batches:
        images = images.to(device, non_blocking=True).float().div_(255)
        images = images.contiguous(memory_format=torch.channels_last)  # faster convolutions, CPU and GPU
        if masks is not None:
            masks = masks.to(device, non_blocking=True).long()
        yield images, masks, index.tolist()
