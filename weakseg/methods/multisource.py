"""Training from supervision sources: full masks, points, boxes, box-prompted SAM masks, CAM maps, or any mix.

Each source turns the budget into a :class:`Target` for the training images (a label map per image, unknown
pixels ignored; CAM maps are soft), learned by its own head of one shared encoder-decoder. Methods:

- ``full`` / ``masks``: full masks of the budget's ``coverage`` % of images;
- ``points``: point labels at the budget's ``density`` % of pixels or ``clicks`` per object (partial CE);
- ``boxes``: filled boxes of the budget's ``boxes`` % of images (the dataset's boxes, or with
  ``method.boxes_from: masks`` the box of each object of the ground truth);
- ``sam``: masks from ``method.generator`` prompted with those boxes (generated once, cached in the shared folder);
- ``multi``: the heads of ``method.sources`` (e.g. ``[masks, cam, boxes, sam]``), ``masks`` predicting, weighted
  by ``method.weights``, and only the primary head learning in the last ``train.strong_only`` of the epochs.

The validation images are held out from the budget's images with the primary source's kind of label, and
labelled by that source (its full masks, points, boxes or SAM masks), so model selection uses no more
supervision than the budget gives; every label used is recorded in the run's ledger. Stages: ``pseudo`` scores
a single weak source's labels against the whole training ground truth (a diagnostic, used for no choice);
``dev`` (with ``method.dev``) scores them on the budget's masks only (a development subset, counted as tuning
use: what the experiment runner may choose settings on); ``final`` scores the segmenter on the test split.
"""

from __future__ import annotations

import numpy as np
import torch

from weakseg.budget import Budget, click_masks, point_masks
from weakseg.config import RunConfig
from weakseg.data.prepared import PreparedSplit, cache_dir
from weakseg.data.sample import IGNORE_INDEX
from weakseg.data.store import Rows, known_per_row, rows_on_disk
from weakseg.errors import ConfigError
from weakseg.identity import digest
from weakseg.methods.base import RunContext, StageResult, load_dataset, register_method
from weakseg.methods.segmenter import train_and_test
from weakseg.methods.tags import pseudo_labels, soft_maps
from weakseg.metrics import ConfusionMatrix
from weakseg.sources.boxes import box_masks, boxes_from_mask
from weakseg.sources.prompted import prompted_masks
from weakseg.sources.registry import SOURCES, list_sources, register_source, source_labels
from weakseg.sources.sam import build_mask_generator
from weakseg.sources.target import Target
from weakseg.visualize import save_label_examples


def _keep(split: PreparedSplit, labels: torch.Tensor | Rows, chosen: list[str]) -> torch.Tensor | Rows:
    """``labels`` with the images not in ``chosen`` set to ignore (rows of a prepared split: read so, not copied)."""
    keep = set(chosen)
    drop = torch.tensor([n not in keep for n in split.names], dtype=torch.bool)
    if isinstance(labels, Rows):
        return labels.blanked(drop)
    out = labels.clone()
    out[drop] = IGNORE_INDEX
    return out


def _ground_truth(split: PreparedSplit, source: str) -> torch.Tensor:
    return _ground_truth_rows(split, source).tensor()


def _ground_truth_rows(split: PreparedSplit, source: str) -> Rows:
    if not isinstance(split.mask_rows, Rows):
        raise ConfigError(f"source '{source}' samples from the ground-truth masks, and this dataset has none")
    return split.mask_rows


def _need_boxes(ctx: RunContext, split: PreparedSplit, source: str) -> list[str]:
    """The split's images that the budget gives boxes to."""
    if not ctx.selection.boxes:
        raise ConfigError(f"source '{source}' needs boxes: set budget.boxes to the % of images that keep them")
    return ctx.selection.images_with("boxes", split.names)


def _record_per_image(ctx: RunContext, use: str, kind: str, split: PreparedSplit, labels: torch.Tensor | Rows) -> None:
    """Record, per image of the split, the labelled pixels of ``labels`` (1 per image for masks)."""
    known = known_per_row(labels).tolist()
    counts = {n: (1 if kind == "masks" else c) if c else 0 for n, c in zip(split.names, known, strict=True)}
    ctx.ledger.record(use, kind, counts)


@register_source("masks", labels="masks")
def masks_source(ctx: RunContext, split: PreparedSplit, use: str) -> Target:
    """Full masks (boundary ignored) of the budget's ``coverage`` % of the images."""
    labels = _keep(split, _ground_truth_rows(split, "masks"), ctx.selection.images_with("masks", split.names))
    _record_per_image(ctx, use, "masks", split, labels)
    return Target("masks", labels)


@register_source("points", labels="points")
def points_source(ctx: RunContext, split: PreparedSplit, use: str) -> Target:
    """Point labels: ``budget.clicks`` per object, or ``budget.density`` % of each image's labelled pixels (seeded
    per image name); from files (``budget.source: files``), the clicks the files hold."""
    budget = ctx.selection.budget
    if budget.from_files:
        labels = click_masks(split)
    elif budget.density is None and budget.clicks is None:
        raise ConfigError("source 'points' needs budget.density (% of pixels labelled) or budget.clicks")
    else:
        labels = _point_labels(split, budget)
    _record_per_image(ctx, use, "points", split, labels)
    return Target("points", labels)


def _point_labels(split: PreparedSplit, budget: Budget, chunk: int = 256) -> torch.Tensor | Rows:
    """The budget's point labels of every image of ``split``; for a split on disk, made ``chunk`` images at a time
    and stored on disk as well (a tiled split's point labels are as many pixels as its images)."""
    truth = _ground_truth_rows(split, "points")
    if not split.on_disk:
        return point_masks(truth.tensor(), split.names, budget)
    parts = (
        point_masks(truth.take(slice(start, start + chunk)), split.names[start : start + chunk], budget)
        for start in range(0, len(split), chunk)
    )
    return rows_on_disk(parts, (split.size, split.size), cache_dir() / "labels" / "points")


def _split_boxes(ctx: RunContext, split: PreparedSplit) -> list[np.ndarray]:
    """The boxes of each image at model size: the dataset's, or (``method.boxes_from: masks``) its objects'."""
    if ctx.config.method.boxes_from == "masks":
        return [boxes_from_mask(m.numpy()) for m in _ground_truth(split, "boxes")]
    return split.boxes


def _record_boxes(ctx: RunContext, use: str, split: PreparedSplit, chosen: list[str]) -> None:
    boxes = dict(zip(split.names, _split_boxes(ctx, split), strict=True))
    ctx.ledger.record(use, "boxes", {n: len(boxes[n]) for n in chosen})


@register_source("boxes", labels="boxes")
def boxes_source(ctx: RunContext, split: PreparedSplit, use: str) -> Target:
    """Filled boxes of the budget's ``boxes`` % of the images; images without a box are unlabelled."""
    chosen = _need_boxes(ctx, split, "boxes")
    boxes = _split_boxes(ctx, split)
    labels = box_masks(boxes, split.size)
    labels[torch.tensor([len(b) == 0 for b in boxes], dtype=torch.bool)] = IGNORE_INDEX
    _record_boxes(ctx, use, split, chosen)
    return Target("boxes", _keep(split, labels, chosen))


@register_source("sam", labels="boxes")
def sam_source(ctx: RunContext, split: PreparedSplit, use: str) -> Target:
    """``method.generator`` masks prompted with the boxes of the budget's ``boxes`` % of the images, generated at
    native resolution and cached in ``shared/masks`` (so every row and seed reuses them)."""
    names = _need_boxes(ctx, split, "sam")
    ds = ctx.config.dataset
    _record_boxes(ctx, use, split, names)
    generated = prompted_masks(
        load_dataset(ctx.config, ctx.data_root, ds.train_split),
        names,
        build_mask_generator(ctx.config.method.generator, **ctx.config.method.generator_options),
        ctx.shared_dir / "masks",
        ds.size,
        ds.fit,
        ctx.progress,
        boxes_from_masks=ctx.config.method.boxes_from == "masks",
    )
    labels = torch.full_like(split.images[:, 0], IGNORE_INDEX)
    position = {n: i for i, n in enumerate(split.names)}
    if names:
        labels[[position[n] for n in names]] = generated
    return Target("sam", labels)


@register_source("cam", labels="tags")
def cam_source(ctx: RunContext, split: PreparedSplit, use: str) -> Target:
    """``method.cam_method`` maps of the tag classifier (trained on every training image's tags) for every image:
    soft, or refined into hard pseudo-masks by ``method.refine`` when one is set."""
    method = ctx.config.method
    if method.refine:
        maps, soft = pseudo_labels(ctx, method.cam_method)[1], False
    else:
        maps, soft = soft_maps(ctx, method.cam_method)[0], True
    index = {n: i for i, n in enumerate(ctx.train_full.names)}
    labels = maps[[index[n] for n in split.names]]
    ctx.ledger.record(use, "tags", {n: len(t) for n, t in zip(split.names, split.labels, strict=True)})
    return Target("cam", labels, soft=soft)


SINGLE_SOURCE = {"full": "masks", "masks": "masks", "points": "points", "boxes": "boxes", "sam": "sam"}
TILED_SOURCES = ("masks", "points", "boxes")
"""Sources that read nothing but the split's rows, and so train on tiles (``dataset.tile``) as on whole images. The
others make their labels from whole images at ``dataset.size`` (SAM masks, CAMs of a classifier trained on image
tags, which a tile may not show)."""


def method_sources(ctx: RunContext) -> list[str]:
    """The sources a run trains from, primary first (``masks`` when it is one of them)."""
    method = ctx.config.method
    sources = [SINGLE_SOURCE[method.name]] if method.name in SINGLE_SOURCE else list(method.sources)
    unknown = [s for s in sources if s not in SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        raise ConfigError(f"method.sources must be distinct names from {list_sources()}, got {sources}")
    extra = [s for s in method.weights if s not in sources]
    if extra:
        raise ConfigError(f"method.weights names source(s) {extra} that the method does not use ({sources})")
    whole = [s for s in sources if s not in TILED_SOURCES]
    if ctx.config.dataset.tile is not None and whole:
        raise ConfigError(f"source(s) {whole} do not train on tiles (dataset.tile); those that do: {TILED_SOURCES}")
    return sorted(sources, key=lambda s: s != "masks")


def primary_labels(config: RunConfig) -> str:
    """The kind of label the primary source (``masks`` when it is one, else the first) is made from."""
    method = config.method
    sources = [SINGLE_SOURCE[method.name]] if method.name in SINGLE_SOURCE else list(method.sources)
    primary = "masks" if "masks" in sources else sources[0] if sources else "masks"
    return source_labels(primary) if primary in SOURCES else "masks"


def pseudo_quality(target: Target, split: PreparedSplit) -> dict:
    """Metrics of a source's labels (soft maps at 0.5) against the ground truth, over the images it labels."""
    rows = target.labelled
    labels = target.labels[rows]
    if target.soft:
        labels = (labels >= 128).to(torch.uint8)
    cm = ConfusionMatrix(len(split.mask_classes))
    truth = split.masks[rows].clone()
    truth[labels == IGNORE_INDEX] = IGNORE_INDEX  # scored where the source says something
    cm.update(torch.where(labels == IGNORE_INDEX, 0, labels), truth)
    return {**cm.compute(), "labelled_images": int(rows.sum())}


def dev_quality(ctx: RunContext, sources: list[str]) -> StageResult | None:
    """The weak sources' labels scored on the budget's masked training images (the development subset, recorded
    as tuning use): metrics ``<source>.<metric>`` (and plain ``<metric>`` for a single source), or None when the
    budget has no masks."""
    split = ctx.train_full
    dev = ctx.selection.images_with("masks", split.names)
    if not dev or split.mask_rows is None or not sources:
        return None
    index = {n: i for i, n in enumerate(split.names)}
    subset = split.subset([index[n] for n in dev])
    ctx.ledger.record("tuning", "masks", dev)
    metrics: dict = {}
    for source in sources:
        quality = pseudo_quality(SOURCES.get(source)(ctx, subset, "tuning"), subset)
        metrics |= {f"{source}.{k}": v for k, v in quality.items()} | (quality if len(sources) == 1 else {})
    return StageResult("dev", metrics)


def hard(target: Target) -> torch.Tensor | Rows:
    """A target's labels as hard classes (soft maps cut at 0.5), as validation needs them."""
    return (target.labels >= 128).to(torch.uint8) if target.soft else target.labels


def train_from_sources(ctx: RunContext) -> list[StageResult]:
    """Build every source's target, score a single weak source as pseudo-labels, then train and test. With
    ``method.dev`` and no segmenter, only the development score is made (what a choice among settings needs)."""
    sources = method_sources(ctx)
    weights = ctx.config.method.weights
    if ctx.config.method.dev and not ctx.config.method.segmenter:
        dev = dev_quality(ctx, [s for s in sources if s not in ("masks", "points")])
        return [dev] if dev else []
    targets = []
    for name in sources:
        target = SOURCES.get(name)(ctx, ctx.train, "train")
        target.weight = float(weights.get(name, 1.0))
        targets.append(target)
    if not targets[0].labelled.any():
        raise ConfigError(f"the budget leaves no training image with a '{sources[0]}' label")
    save_label_examples(ctx.out_dir / "source_examples.png", ctx.train, targets)
    results = []
    weak = [t for t in targets if t.name not in ("masks", "points")]
    if len(weak) == 1 and ctx.train.mask_rows is not None:
        results.append(StageResult("pseudo", pseudo_quality(weak[0], ctx.train)))
    if ctx.config.method.dev and (dev := dev_quality(ctx, [t.name for t in weak])):
        results.append(dev)
    if not ctx.config.method.segmenter:
        return results
    val = None
    if ctx.val is not None:
        val = ctx.val.with_masks(hard(SOURCES.get(sources[0])(ctx, ctx.val, "validation")))
    b, method = ctx.selection, ctx.config.method
    key = {
        "sources": sources,
        "masks": digest(b.masks),
        "boxes": digest(b.boxes),
        "density": b.budget.density,
        "clicks": b.budget.clicks,
        "generator": method.generator,
        # only when set, so runs without options keep the checkpoint digests they had before options existed
        **({"generator_options": method.generator_options} if method.generator_options else {}),
        "boxes_from": method.boxes_from,
        "cam": [method.cam_method, str(method.refine)],
    }
    results.append(train_and_test(ctx, ctx.train, key, val, targets, primary=sources[0]))
    return results


for _name in [*SINGLE_SOURCE, "multi"]:
    register_method(_name, primary_labels, tiles=_name != "sam")(train_from_sources)
