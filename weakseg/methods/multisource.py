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

The validation split is labelled by the primary source (its full masks, points, boxes or SAM masks), so model
selection uses no more supervision than the method has. Stage ``pseudo`` scores a single weak source's labels
against the training ground truth; ``final`` scores the segmenter on the test split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from weakseg.budget import point_masks
from weakseg.data.prepared import PreparedSplit
from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError
from weakseg.methods.segmenter import train_and_test
from weakseg.methods.tags import pseudo_labels, soft_maps
from weakseg.metrics import ConfusionMatrix
from weakseg.pipeline import RunContext, StageResult, load_dataset, register_method
from weakseg.sources.boxes import box_masks, boxes_from_mask
from weakseg.sources.prompted import prompted_masks
from weakseg.sources.sam import build_mask_generator
from weakseg.sources.store import digest
from weakseg.sources.target import Target
from weakseg.visualize import save_label_examples

SourceBuilder = Callable[[RunContext, PreparedSplit, bool], Target]
"""(context, split, everyone) -> the source's target for the split's images; ``everyone`` labels every image
(the validation split) instead of the budget's choice."""

_SOURCES: dict[str, SourceBuilder] = {}


def register_source(name: str) -> Callable[[SourceBuilder], SourceBuilder]:
    """Decorator: make a supervision source available in ``method.sources``."""

    def wrap(fn: SourceBuilder) -> SourceBuilder:
        _SOURCES[name] = fn
        return fn

    return wrap


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def _keep(split: PreparedSplit, labels: torch.Tensor, chosen: list[str] | None) -> torch.Tensor:
    """``labels`` with the images not in ``chosen`` (None: all are kept) set to ignore."""
    if chosen is None:
        return labels
    keep = set(chosen)
    drop = torch.tensor([n not in keep for n in split.names], dtype=torch.bool)
    out = labels.clone()
    out[drop] = IGNORE_INDEX
    return out


def _ground_truth(split: PreparedSplit, source: str) -> torch.Tensor:
    if split.masks is None:
        raise ConfigError(f"source '{source}' samples from the ground-truth masks, and this dataset has none")
    return split.masks


def _need_boxes(ctx: RunContext, everyone: bool, source: str) -> list[str] | None:
    if everyone:
        return None
    if not ctx.selection.boxes:
        raise ConfigError(f"source '{source}' needs boxes: set budget.boxes to the % of images that keep them")
    return ctx.selection.boxes


@register_source("masks")
def masks_source(ctx: RunContext, split: PreparedSplit, everyone: bool) -> Target:
    """Full masks (boundary ignored) of the budget's ``coverage`` % of the images."""
    return Target("masks", _keep(split, _ground_truth(split, "masks"), None if everyone else ctx.selection.masks))


@register_source("points")
def points_source(ctx: RunContext, split: PreparedSplit, everyone: bool) -> Target:
    """Point labels: ``budget.clicks`` per object, or ``budget.density`` % of each image's labelled pixels (seeded
    per image name)."""
    if ctx.selection.budget.density is None and ctx.selection.budget.clicks is None:
        raise ConfigError("source 'points' needs budget.density (% of pixels labelled) or budget.clicks")
    return Target("points", point_masks(_ground_truth(split, "points"), split.names, ctx.selection.budget))


def _split_boxes(ctx: RunContext, split: PreparedSplit) -> list[np.ndarray]:
    """The boxes of each image at model size: the dataset's, or (``method.boxes_from: masks``) its objects'."""
    if ctx.config.method.boxes_from == "masks":
        return [boxes_from_mask(m.numpy()) for m in _ground_truth(split, "boxes")]
    return split.boxes


@register_source("boxes")
def boxes_source(ctx: RunContext, split: PreparedSplit, everyone: bool) -> Target:
    """Filled boxes of the budget's ``boxes`` % of the images; images without a box are unlabelled."""
    chosen = _need_boxes(ctx, everyone, "boxes")
    boxes = _split_boxes(ctx, split)
    labels = box_masks(boxes, split.size)
    labels[torch.tensor([len(b) == 0 for b in boxes], dtype=torch.bool)] = IGNORE_INDEX
    return Target("boxes", _keep(split, labels, chosen))


@register_source("sam")
def sam_source(ctx: RunContext, split: PreparedSplit, everyone: bool) -> Target:
    """``method.generator`` masks prompted with the boxes of the budget's ``boxes`` % of the images, generated at
    native resolution and cached in ``shared/masks`` (so every row and seed reuses them)."""
    chosen = _need_boxes(ctx, everyone, "sam")
    ds = ctx.config.dataset
    names = split.names if chosen is None else sorted(set(chosen) & set(split.names))
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


@register_source("cam")
def cam_source(ctx: RunContext, split: PreparedSplit, everyone: bool) -> Target:
    """``method.cam_method`` maps of the tag classifier for every image: soft, or refined into hard pseudo-masks
    by ``method.refine`` when one is set."""
    method = ctx.config.method
    if method.refine:
        maps, soft = pseudo_labels(ctx, method.cam_method)[1], False
    else:
        maps, soft = soft_maps(ctx, method.cam_method)[0], True
    index = {n: i for i, n in enumerate(ctx.train_full.names)}
    labels = maps[[index[n] for n in split.names]]
    if everyone and soft:  # validation needs hard labels
        labels, soft = (labels >= 128).to(torch.uint8), False
    return Target("cam", labels, soft=soft)


SINGLE_SOURCE = {"full": "masks", "masks": "masks", "points": "points", "boxes": "boxes", "sam": "sam"}


def method_sources(ctx: RunContext) -> list[str]:
    """The sources a run trains from, primary first (``masks`` when it is one of them)."""
    method = ctx.config.method
    sources = [SINGLE_SOURCE[method.name]] if method.name in SINGLE_SOURCE else list(method.sources)
    unknown = [s for s in sources if s not in _SOURCES]
    if unknown or not sources or len(set(sources)) != len(sources):
        raise ConfigError(f"method.sources must be distinct names from {list_sources()}, got {sources}")
    extra = [s for s in method.weights if s not in sources]
    if extra:
        raise ConfigError(f"method.weights names source(s) {extra} that the method does not use ({sources})")
    return sorted(sources, key=lambda s: s != "masks")


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


def train_from_sources(ctx: RunContext) -> list[StageResult]:
    """Build every source's target, score a single weak source as pseudo-labels, then train and test."""
    sources = method_sources(ctx)
    weights = ctx.config.method.weights
    targets = []
    for name in sources:
        target = _SOURCES[name](ctx, ctx.train, False)
        target.weight = float(weights.get(name, 1.0))
        targets.append(target)
    if not targets[0].labelled.any():
        raise ConfigError(f"the budget leaves no training image with a '{sources[0]}' label")
    save_label_examples(ctx.out_dir / "source_examples.png", ctx.train, targets)
    results = []
    weak = [t for t in targets if t.name not in ("masks", "points")]
    if len(weak) == 1 and ctx.train.masks is not None:
        results.append(StageResult("pseudo", pseudo_quality(weak[0], ctx.train)))
    if not ctx.config.method.segmenter:
        return results
    val = None
    if ctx.val is not None:
        labels = _SOURCES[sources[0]](ctx, ctx.val, True).labels
        val = ctx.val.with_masks(labels)
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
    register_method(_name)(train_from_sources)
