"""From image tags to a segmenter: classifier -> CAM -> refinement -> pseudo-labels -> segmenter.

Registered once per CAM method (``method: gradcam``, ``method: cam``, ...). Every artefact is stored in the
run's shared directory under a key of what produced it, so rows that differ only in refinement reuse the
classifier and the maps, and rows that differ only in the segmenter reuse the pseudo-labels.

Stages: ``pseudo`` scores the pseudo-labels on the whole training split against its ground truth (a
diagnostic, used for no choice); ``dev`` (with ``method.dev``) scores them on the budget's masked images only (a
development subset, recorded as tuning use, that the experiment runner may choose settings on); ``final`` scores
the segmenter trained on them (validated on pseudo-labels too) on the test split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from weakseg.cams import list_cams
from weakseg.classify import is_multilabel, train_classifier
from weakseg.data.prepared import PreparedSplit, prepare
from weakseg.data.sample import NEGATIVE_TAG, negative_images, negative_tag
from weakseg.errors import ConfigError
from weakseg.identity import CODE_VERSIONS, digest
from weakseg.methods.base import RunContext, StageResult, load_dataset, register_method
from weakseg.methods.segmenter import train_and_test
from weakseg.metrics import ConfusionMatrix
from weakseg.models.classifier import Classifier, build_classifier
from weakseg.refine import RefinePipeline, Refiner, parse_pipeline
from weakseg.sources.cam import cam_maps, to_uint8
from weakseg.sources.store import ArtifactStore
from weakseg.sources.target import Target
from weakseg.visualize import save_label_examples


def classifier_ident(ctx: RunContext) -> dict:
    split = ctx.train_full
    ident = {
        "classifier": ctx.config.classifier.model_dump(),
        "dataset": ctx.config.dataset.model_dump(exclude={"val_fraction"}),
        "seed": ctx.config.seed,
        "names": digest(split.names),
        "files": split.fingerprint,
        "code": {k: CODE_VERSIONS[k] for k in ("train", "cams")},
    }
    if negative_tag(split.tag_classes) is not None:  # negatives: multi-label, zero maps (other artefacts)
        ident["negatives"] = NEGATIVE_TAG
    return ident


def tag_classifier(ctx: RunContext) -> tuple[Classifier, float]:
    """The classifier trained on every training image's tags (trained once per setup and seed); its
    accuracy on the test split's tags."""
    cfg, split = ctx.config.classifier, ctx.train_full
    if not split.tag_classes:
        raise ConfigError(f"dataset '{ctx.config.dataset.name}' has no image tags to train a classifier on")
    model = build_classifier(
        cfg.encoder, len(split.tag_classes), cfg.weights, is_multilabel(split, cfg), drop_rate=cfg.drop_rate
    )
    path = ArtifactStore(ctx.shared_dir).path("classifier", classifier_ident(ctx))
    result = train_classifier(
        model, split, cfg, path, ctx.device, ctx.config.seed, evaluation=ctx.test, progress=ctx.progress
    )
    return model.eval(), result.accuracy


def cam_ident(ctx: RunContext, method: str) -> dict:
    return {"classifier": classifier_ident(ctx), "method": method, "cam": ctx.config.cam.model_dump()}


def soft_maps(ctx: RunContext, method: str) -> tuple[torch.Tensor, dict]:
    """(CAM maps uint8 0..255, info) for every image of the training split, from the stored tag classifier."""
    store = ArtifactStore(ctx.shared_dir)
    split = ctx.train_full
    ident = cam_ident(ctx, method)
    info: dict = {}

    def compute_maps() -> torch.Tensor:
        model, info["classifier_accuracy"] = tag_classifier(ctx)
        negative = negative_tag(split.tag_classes)
        maps = cam_maps(model, split.images, split.labels, method, ctx.config.cam, ctx.device, ctx.progress, negative)
        return to_uint8(maps)

    soft = store.tensor("cams", ident, compute_maps, notes=info)
    ctx.ledger.record("train", "tags", {n: len(t) for n, t in zip(split.names, split.labels, strict=True)})
    return soft, {"classifier_accuracy": store.info("cams", ident).get("classifier_accuracy", float("nan"))}


def pseudo_labels(ctx: RunContext, method: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(soft maps uint8, pseudo-masks uint8 0/1, info) for every image of the training split; an image tagged
    ``none`` (a negative) is all background whatever the refinement."""
    soft, info = soft_maps(ctx, method)
    masks, info["refine_images_per_s"] = stored_pseudo_masks(ctx, soft, cam_ident(ctx, method), negatives=True)
    return soft, masks, info


def stored_pseudo_masks(
    ctx: RunContext, soft: torch.Tensor, maps_ident: dict, negatives: bool
) -> tuple[torch.Tensor, float]:
    """(pseudo-masks uint8 0/1, refinement images/s) for the training split, refined from its soft maps by
    ``method.refine`` and stored under the maps' identity; with ``negatives``, an image tagged ``none`` is all
    background whatever the refinement."""
    store = ArtifactStore(ctx.shared_dir)
    split = ctx.train_full
    pipeline = parse_pipeline(ctx.config.method.refine)
    ident = {
        "maps": maps_ident,
        "refine": str(pipeline),
        "size": ctx.config.method.refine_size,
        "code": CODE_VERSIONS["refine"],
    }

    def refine() -> torch.Tensor:
        masks = refine_split(ctx, split, soft, pipeline)
        if negatives:
            masks[torch.tensor(negative_images(split.labels, split.tag_classes), dtype=torch.bool)] = 0
        return masks

    masks = store.tensor("pseudo", ident, refine)
    seconds = store.info("pseudo", ident).get("seconds")
    return masks, len(split) / seconds if seconds else float("nan")


def refine_split(ctx: RunContext, split: PreparedSplit, soft: torch.Tensor, pipeline: RefinePipeline) -> torch.Tensor:
    """Pseudo-masks (N, S, S) uint8 from the soft maps, refined in a process pool; at ``method.refine_size``
    the images are prepared again at that size, the maps upsampled to it and the masks brought back to S."""
    size = ctx.config.method.refine_size or split.size
    maps = soft.float().div(255)
    if size != split.size:
        dataset = load_dataset(ctx.config, ctx.data_root, ctx.config.dataset.train_split)
        images = prepare(dataset, size, ctx.config.dataset.fit, progress=ctx.progress).images
        if len(images) != len(split):
            raise ConfigError("the training split changed on disk while pseudo-labelling it")
        maps = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    else:
        images = split.images
    with Refiner(pipeline) as refiner:
        masks = refiner.map(list(images.permute(0, 2, 3, 1).contiguous().numpy()), list(maps.numpy()))
    masks = torch.from_numpy(np.stack(masks)).float()
    if size != split.size:  # back to the model size, smoothly (bilinear, then >= 0.5)
        masks = F.interpolate(masks[:, None], size=(split.size, split.size), mode="bilinear", align_corners=False)[:, 0]
    return (masks >= 0.5).to(torch.uint8)


def require_foreground_background(ctx: RunContext, what: str) -> None:
    """ConfigError unless the dataset has exactly 2 mask classes (the pseudo-labels are foreground/background)."""
    if len(ctx.train_full.mask_classes) != 2:
        raise ConfigError(f"{what} are foreground/background: the dataset needs 2 mask classes")


def tags_to_segmenter(ctx: RunContext) -> list[StageResult]:
    method = ctx.config.method.name
    require_foreground_background(ctx, "pseudo-labels from tags")
    soft, masks, info = pseudo_labels(ctx, method)
    key = {"pseudo": digest({"method": method, "refine": str(parse_pipeline(ctx.config.method.refine))})}

    def record_validation_tags(val: PreparedSplit) -> None:  # pseudo-labels from the held-out images' tags
        ctx.ledger.record("validation", "tags", {n: len(t) for n, t in zip(val.names, val.labels, strict=True)})

    return pseudo_stages(ctx, soft, masks, info, key, ["classifier_accuracy"], record_validation_tags)


def pseudo_stages(
    ctx: RunContext,
    soft: torch.Tensor,
    masks: torch.Tensor,
    info: dict,
    run_key: dict,
    final_metrics: list[str] | None = None,
    on_validation: Callable[[PreparedSplit], None] | None = None,
    soft_name: str = "cam",
) -> list[StageResult]:
    """Stages ``pseudo`` (and ``dev``/``rest`` with ``method.dev``) scoring the training split's pseudo-masks, and
    ``final``: a segmenter trained and validated on them (``on_validation`` records the validation images' labels;
    ``final_metrics`` names ``info`` entries copied into the final stage)."""
    targets = [Target(soft_name, soft, soft=True), Target("pseudo", masks)]
    save_label_examples(ctx.out_dir / "pseudo_examples.png", ctx.train_full, targets)
    results = []
    index = {n: i for i, n in enumerate(ctx.train_full.names)}
    if ctx.train_full.masks is not None:
        results.append(StageResult("pseudo", {**quality(masks, ctx.train_full.masks), **info}))
        if ctx.config.method.dev:
            results += dev_stages(ctx, masks)
    if ctx.config.method.segmenter:

        def with_pseudo(split: PreparedSplit) -> PreparedSplit:
            return split.with_masks(masks[[index[n] for n in split.names]])

        val = with_pseudo(ctx.val) if ctx.val is not None else None
        if val is not None and on_validation is not None:
            on_validation(val)
        final = train_and_test(ctx, with_pseudo(ctx.train), run_key, val_split=val)
        final.metrics |= {k: info[k] for k in final_metrics or []}
        results.append(final)
    return results


def dev_stages(ctx: RunContext, masks: torch.Tensor, setting: dict | None = None) -> list[StageResult]:
    """Pseudo-labels of the whole training split scored on the budget's masked images (stage ``dev``, recorded as
    tuning use: what a choice among settings sees) and on the other training images (stage ``rest``, a
    diagnostic that confirms a choice on images it never saw)."""
    split = ctx.train_full
    dev = ctx.selection.images_with("masks", split.names)
    if not dev:
        return []
    ctx.ledger.record("tuning", "masks", dev)
    chosen = set(dev)
    rows = [i for i, n in enumerate(split.names) if n in chosen]
    rest = [i for i, n in enumerate(split.names) if n not in chosen]
    classes = len(split.mask_classes)
    metrics = {**quality(masks[rows], split.masks[rows], classes), "images": len(rows)}
    stages = [StageResult("dev", metrics, dict(setting or {}))]
    if rest:
        metrics = {**quality(masks[rest], split.masks[rest], classes), "images": len(rest)}
        stages.append(StageResult("rest", metrics, dict(setting or {})))
    return stages


def quality(masks: torch.Tensor, truth: torch.Tensor, classes: int = 2) -> dict:
    """Metrics of pseudo-masks against ground truth."""
    cm = ConfusionMatrix(classes)
    cm.update(masks, truth)
    return cm.compute()


for _name in list_cams():
    register_method(_name, primary=lambda config: "tags")(tags_to_segmenter)
