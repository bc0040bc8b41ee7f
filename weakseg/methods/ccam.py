"""Method ``ccam``: C-CAM maps -> refinement -> pseudo-labels -> segmenter (:mod:`weakseg.sources.ccam`).

C-CAM learns a class-agnostic foreground map on the training images by contrasting foreground and background
features, with no label (``init: imagenet``, the default: the encoder starts from ``classifier.encoder`` with
``classifier.weights``). Two variants read the image tags, which every training image's and the held-out
validation images' then count as consumed: ``init: tags`` starts from the tag classifier the CAM methods explain
(trained with the ``classifier`` settings, shared with them) and keeps it frozen unless ``freeze: false``;
``class_weight`` > 0 adds a tag classification loss on the foreground feature. A dataset whose tags cannot tell
images apart (Kvasir: ``polyp`` on every image) is refused for those variants.

The maps are refined by ``method.refine`` (:func:`weakseg.methods.tags.refine_split`), and the stages are those of
the tags methods (:func:`weakseg.methods.tags.pseudo_stages`): ``pseudo`` (with the C-CAM facts: whether the map
was flipped, its border activation), ``dev``/``rest`` with ``method.dev``, ``final``. The trained model, the maps
and the pseudo-labels are stored in the run's shared directory under a key of what produced them, so rows that
differ only in refinement reuse the model and the maps. Settings: ``method.options``
(:class:`~weakseg.sources.ccam.CCAMOptions`).
"""

from __future__ import annotations

import torch

from weakseg.classify import is_multilabel
from weakseg.data.prepared import PreparedSplit
from weakseg.errors import ConfigError
from weakseg.identity import digest
from weakseg.methods.base import RunContext, StageResult, register_method
from weakseg.methods.tags import (
    classifier_ident,
    pseudo_stages,
    require_foreground_background,
    stored_pseudo_masks,
    tag_classifier,
)
from weakseg.refine import parse_pipeline
from weakseg.runtime import seed_everything
from weakseg.sources.cam import to_uint8
from weakseg.sources.ccam import CCAM, CCAM_VERSION, CCAMOptions, build_ccam, ccam_maps, parse_options, train_ccam
from weakseg.sources.store import ArtifactStore

DESCRIPTION = (
    "C-CAM (Xie et al. 2022): contrastive class-agnostic maps -> refine -> pseudo-labels -> segmenter; no labels "
    "with the ImageNet init (method.options: init, class_weight, freeze, epochs, ...)"
)
INFO = ("ccam_flipped", "ccam_border", "ccam_images_per_s", "classifier_accuracy")


def require_tags(ctx: RunContext, options: CCAMOptions) -> None:
    """ConfigError when a variant that reads tags meets a dataset whose tags cannot tell images apart."""
    split = ctx.train_full
    if not options.uses_tags:
        return
    if len(split.tag_classes) < 2 or not any(split.labels):
        variant = "init: tags" if options.init == "tags" else "class_weight > 0"
        raise ConfigError(
            f"C-CAM with {variant} learns from image tags, and dataset '{ctx.config.dataset.name}' has "
            f"{split.tag_classes or 'no tag classes'}: at least 2 tag classes are needed (use init: imagenet, "
            "class_weight: 0, which needs no label)"
        )


def ccam_ident(ctx: RunContext, options: CCAMOptions) -> dict:
    """What the trained C-CAM model depends on."""
    split, c = ctx.train_full, ctx.config.classifier
    encoder = {"classifier": classifier_ident(ctx)} if options.init == "tags" else {"encoder": c.encoder}
    if options.init == "imagenet":
        encoder["weights"] = c.weights
    ident = {
        "ccam": options.training(),
        "init": encoder,
        "seed": ctx.config.seed,
        "dataset": ctx.config.dataset.model_dump(exclude={"val_fraction"}),
        "names": digest(split.names),
        "files": split.fingerprint,
        "code": CCAM_VERSION,
    }
    if options.class_weight > 0:
        ident["multilabel"] = is_multilabel(split, c)
    return ident


def maps_ident(ctx: RunContext, options: CCAMOptions) -> dict:
    """What the training split's C-CAM maps depend on: the model and the inference settings."""
    return {"model": ccam_ident(ctx, options), "inference": options.inference()}


def trained_ccam(ctx: RunContext, options: CCAMOptions) -> tuple[CCAM, dict]:
    """The C-CAM model trained on the training split (resumed or reloaded from the shared directory), and what
    its training recorded (flip, border activation, speed, the tag classifier's accuracy with ``init: tags``)."""
    split, c = ctx.train_full, ctx.config.classifier
    classes = len(split.tag_classes) if options.class_weight > 0 else 0
    info: dict = {}
    if options.init == "tags":
        classifier, info["classifier_accuracy"] = tag_classifier(ctx)
        seed_everything(ctx.config.seed)  # the disentangler's initialisation depends on the seed
        model = build_ccam(c.encoder, None, classes, init_from=classifier.net)
    else:
        seed_everything(ctx.config.seed)
        model = build_ccam(c.encoder, c.weights, classes)
    path = ArtifactStore(ctx.shared_dir).path("ccam", ccam_ident(ctx, options))
    multilabel = is_multilabel(split, c) if options.class_weight > 0 else None
    result = train_ccam(model, split, options, path, ctx.device, ctx.config.seed, ctx.progress, multilabel)
    info |= {"ccam_flipped": int(result.flipped), "ccam_border": result.border}
    info["ccam_images_per_s"] = result.images_per_s
    return model, info


def ccam_pseudo_labels(ctx: RunContext, options: CCAMOptions) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """(soft maps uint8, pseudo-masks uint8 0/1, info) for every image of the training split; with a variant
    that reads tags, an image tagged ``none`` (a negative) is all background whatever the refinement."""
    store = ArtifactStore(ctx.shared_dir)
    split = ctx.train_full
    ident = maps_ident(ctx, options)
    notes: dict = {}

    def compute_maps() -> torch.Tensor:
        model, info = trained_ccam(ctx, options)
        notes.update(info)
        o = options
        maps = ccam_maps(model, split.images, o.scales, o.flip, o.readout, ctx.device, o.eval_batch_size, ctx.progress)
        return to_uint8(maps)

    soft = store.tensor("cams", ident, compute_maps, notes=notes)
    recorded = store.info("cams", ident)
    info = {k: recorded[k] for k in INFO if k in recorded}
    if options.uses_tags:
        ctx.ledger.record("train", "tags", {n: len(t) for n, t in zip(split.names, split.labels, strict=True)})
    masks, info["refine_images_per_s"] = stored_pseudo_masks(ctx, soft, ident, negatives=options.uses_tags)
    return soft, masks, info


@register_method("ccam", primary=lambda config: "tags", description=DESCRIPTION)
def ccam_to_segmenter(ctx: RunContext) -> list[StageResult]:
    """C-CAM -> refine -> pseudo-labels -> segmenter (the validation images come from every training image,
    ``primary`` tags being every image's; tags are read only by the variants that use them)."""
    require_foreground_background(ctx, "pseudo-labels from C-CAM")
    options = parse_options(ctx.config.method.options)
    require_tags(ctx, options)
    soft, masks, info = ccam_pseudo_labels(ctx, options)
    key = {
        "pseudo": digest(
            {
                "method": "ccam",
                "maps": maps_ident(ctx, options),
                "refine": str(parse_pipeline(ctx.config.method.refine)),
            }
        )
    }

    def record_validation_tags(val: PreparedSplit) -> None:  # their pseudo-labels came from tag-trained maps
        ctx.ledger.record("validation", "tags", {n: len(t) for n, t in zip(val.names, val.labels, strict=True)})

    final = ["ccam_flipped", *(["classifier_accuracy"] if options.init == "tags" else [])]
    on_validation = record_validation_tags if options.uses_tags else None
    return pseudo_stages(ctx, soft, masks, info, key, final, on_validation, soft_name="ccam")
