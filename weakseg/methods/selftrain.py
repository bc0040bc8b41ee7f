"""Multi-task self-training from image tags (``method: selftrain``).

One model: a timm encoder shared by a segmentation decoder and a tag classification branch. Round 0: the branch
learns the tags (the ``classifier`` settings: epochs, crops, learning rate), its CAMs (``method.cam_method``)
are refined into pseudo-labels (``method.refine``, e.g. ``otsu | crf``), and the whole model trains on them,
segmentation loss plus ``method.tag_weight`` times the tag loss. Each later round (``method.rounds``) makes the
pseudo-labels again from the updated model (``method.regenerate``: its CAMs, its segmentation output, or their
mean) and trains again, continuing from the current weights or, with ``method.restart``, from the weights the
model was built with.

More than one foreground class (``oxford_pet`` with ``dataset.options: {tags: species, masks: tags}``: background
/ cat / dog): each image's tags get a map each, the strongest is refined into the foreground, and each foreground
pixel takes the class of the tag whose map is highest there. With one tag per image (the pets) that is the
two-label refinement (CRF included) of that class against the background; an image with several tags gets a
(1 + tags)-label dense CRF when the pipeline has a ``crf`` step (:meth:`weakseg.refine.RefinePipeline.label_map`).

Stages, each with the row setting ``round``: ``pseudo`` (the round's pseudo-labels against the whole training
split's ground truth, a diagnostic that chooses nothing), with ``method.dev`` also ``dev`` (the same on the
budget's masked images, counted as tuning labels) and ``rest`` (on the other training images), and ``final``
(the round's segmenter on the test split, validated on pseudo-labels of held-out images). Interrupted runs
resume: each round keeps its checkpoints in ``round<r>/``.
"""

from __future__ import annotations

import copy
import hashlib

import numpy as np
import torch

from weakseg.classify import is_multilabel, train_classifier
from weakseg.data.prepared import PreparedSplit
from weakseg.data.sample import NEGATIVE_TAG, negative_images, negative_tag
from weakseg.errors import ConfigError
from weakseg.evaluate import predict_probabilities
from weakseg.methods.base import RunContext, StageResult, register_method
from weakseg.methods.segmenter import fit_and_test
from weakseg.methods.tags import dev_stages, quality, refine_split
from weakseg.models import build_model
from weakseg.models.multitask import MultiTaskSegmenter
from weakseg.refine import RefinePipeline, parse_pipeline
from weakseg.runtime import seed_everything
from weakseg.sources.cam import cam_maps, to_uint8
from weakseg.sources.target import Target
from weakseg.visualize import save_label_examples


@torch.no_grad()
def class_probabilities(model: MultiTaskSegmenter, split: PreparedSplit, ctx: RunContext) -> torch.Tensor:
    """The segmenter's class probabilities (N, C, S, S) on the CPU for every image of ``split``."""
    model.eval()
    out, batch = [], ctx.config.train.eval_batch_size
    for start in range(0, len(split), batch):
        images = split.images[start : start + batch].to(ctx.device).float().div_(255)
        out.append(predict_probabilities(model, images, ctx.config.train.tta, ctx.config.train.amp).cpu())
    return torch.cat(out)


def with_labels(part: PreparedSplit, masks: torch.Tensor, index: dict[str, int]) -> PreparedSplit:
    """``part`` of the training split with its rows of ``masks`` (pseudo-labels of the whole split)."""
    return part.with_masks(masks[[index[n] for n in part.names]])


def tag_maps(model: MultiTaskSegmenter, ctx: RunContext, source: str) -> torch.Tensor:
    """(N, K, S, S) maps in [0, 1], one per tag of each image (K: the most tags an image has; missing positions
    stay 0): the classification branch's CAM for the tag (``cam``), the segmenter's probability of the tag's
    class, or of the foreground in a two-class task (``seg``), or their mean (``fusion``). A negative (tagged
    ``none``) gets zero maps."""
    split, cfg = ctx.train_full, ctx.config
    width = max(len(t) for t in split.labels)
    out = torch.zeros(len(split), width, split.size, split.size)
    probs = class_probabilities(model, split, ctx) if source in ("seg", "fusion") else None
    for k in range(width):
        rows = [i for i, t in enumerate(split.labels) if len(t) > k]
        tags = [split.labels[i][k] for i in rows]
        maps = []
        if source in ("cam", "fusion"):
            branch, images = model.tag_classifier(), split.images[rows]
            maps.append(cam_maps(branch, images, [[t] for t in tags], cfg.method.cam_method, cfg.cam, ctx.device))
        if probs is not None:
            classes = [1] * len(rows) if probs.shape[1] == 2 else [1 + t for t in tags]
            maps.append(probs[rows, classes])
        out[rows, k] = torch.stack(maps).mean(0)
    out[torch.tensor(negative_images(split.labels, split.tag_classes), dtype=torch.bool)] = 0  # no foreground
    return out


def pseudo_labels(ctx: RunContext, maps: torch.Tensor, pipeline: RefinePipeline) -> tuple[torch.Tensor, torch.Tensor]:
    """(soft foreground uint8 (N, S, S), pseudo-labels uint8 (N, S, S)) from per-tag maps: the foreground is the
    most confident tag's map, refined by the pipeline; in a multi-class task each foreground pixel of an image with
    one tag takes its class (1 + the tag index), and an image with several tags is labelled by
    :meth:`~weakseg.refine.RefinePipeline.label_map` at the model size (a multi-label dense CRF when the pipeline
    has a ``crf`` step, else the class of the strongest map on the refined foreground)."""
    split = ctx.train_full
    strength, position = maps.max(1)
    soft = to_uint8(strength)
    foreground = refine_split(ctx, split, soft, pipeline)
    if len(split.mask_classes) == 2:
        return soft, foreground
    width = maps.shape[1]
    tags = torch.tensor([t + [t[0]] * (width - len(t)) for t in split.labels])  # (N, K), padded
    classes = 1 + tags.gather(1, position.flatten(1)).view_as(position)
    labels = torch.where(foreground.bool(), classes, 0).to(torch.uint8)
    for i in (i for i, t in enumerate(split.labels) if len(t) > 1):  # several classes: one multi-label refinement
        image = split.images[i].permute(1, 2, 0).contiguous().numpy()
        k = torch.from_numpy(pipeline.label_map(image, maps[i, : len(split.labels[i])].numpy()).astype(np.int64))
        labels[i] = torch.where(k > 0, 1 + tags[i].gather(0, (k - 1).clamp(min=0).flatten()).view_as(k), 0)
    return soft, labels


def self_training(ctx: RunContext) -> list[StageResult]:
    cfg, split = ctx.config, ctx.train_full
    if not split.tag_classes or not all(split.labels):
        raise ConfigError(f"selftrain needs a tag on every training image of '{cfg.dataset.name}'")
    classes = len(split.mask_classes)
    if classes > 2 and negative_tag(split.tag_classes) is not None:
        raise ConfigError(f"a multi-class task has one mask class per tag: the tag '{NEGATIVE_TAG}' is not a class")
    if classes > 2 and split.mask_classes[1:] != split.tag_classes:
        raise ConfigError(
            f"a multi-class task needs one mask class per tag after the background: mask classes "
            f"{split.mask_classes}, tags {split.tag_classes} (oxford_pet: dataset.options.masks: tags)"
        )
    m = cfg.model
    seed_everything(cfg.seed)
    model = build_model(
        m.arch, m.encoder, classes, m.weights, m.mode, tags=len(split.tag_classes),
        multilabel=is_multilabel(split, cfg.classifier), **m.options,
    )  # fmt: skip
    built = copy.deepcopy(model.state_dict())
    pipeline = parse_pipeline(cfg.method.refine)

    # Round 0 starts from a classification branch that knows the tags.
    ctx.ledger.record("train", "tags", {n: len(t) for n, t in zip(split.names, split.labels, strict=True)})
    classifier_path = ctx.out_dir / "round0" / "classifier.pt"
    accuracy = train_classifier(
        model.tag_classifier(), split, cfg.classifier, classifier_path, ctx.device, cfg.seed, ctx.test, ctx.progress
    ).accuracy
    if ctx.val is not None:  # the held-out images validate on pseudo-labels made from their tags
        val_tags = {n: len(t) for n, t in zip(ctx.val.names, ctx.val.labels, strict=True)}
        ctx.ledger.record("validation", "tags", val_tags)

    index = {n: i for i, n in enumerate(split.names)}
    results = []
    for r in range(cfg.method.rounds + 1):
        soft, masks = pseudo_labels(ctx, tag_maps(model, ctx, "cam" if r == 0 else cfg.method.regenerate), pipeline)
        if r == 0:
            save_label_examples(
                ctx.out_dir / "pseudo_examples.png", split, [Target("cam", soft, soft=True), Target("pseudo", masks)]
            )
        setting = {"round": r}
        if split.masks is not None:
            results.append(StageResult("pseudo", quality(masks, split.masks, classes), setting))
            if cfg.method.dev:
                results += dev_stages(ctx, masks, setting)
        if not cfg.method.segmenter:
            break
        if cfg.method.restart and r > 0:
            model.load_state_dict(built)
        val = with_labels(ctx.val, masks, index) if ctx.val is not None else None
        # BLAKE2b, not identity.bytes_digest (SHA-1): another hash would change the digests of existing checkpoints
        key = {"round": r, "pseudo": hashlib.blake2b(masks.numpy().tobytes(), digest_size=8).hexdigest()}
        final = fit_and_test(
            ctx, model, with_labels(ctx.train, masks, index), key, val, out_dir=ctx.out_dir / f"round{r}",
            tag_weight=cfg.method.tag_weight,
        )  # fmt: skip
        final.metrics["classifier_accuracy"] = accuracy
        final.setting = setting
        results.append(final)
    return results


register_method("selftrain", primary=lambda config: "tags")(self_training)
