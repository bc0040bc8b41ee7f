"""Learning from full masks: all training images (``full``) or the budget's fraction of them (``masks``)."""

from __future__ import annotations

from weakseg.data.prepared import PreparedSplit
from weakseg.evaluate import evaluate_model
from weakseg.models import build_model
from weakseg.pipeline import RunContext, StageResult, register_method
from weakseg.runtime import seed_everything
from weakseg.train import fit


def train_and_test(
    ctx: RunContext, train_split: PreparedSplit, run_key: dict, val_split: PreparedSplit | None = None
) -> StageResult:
    """Build the configured model, fit it on ``train_split`` (validating on ``val_split``, by default the
    run's validation split) and score it on the test split."""
    m, t = ctx.config.model, ctx.config.train
    seed_everything(ctx.config.seed)  # the decoder's random initialisation depends on the seed too
    model = build_model(m.arch, m.encoder, len(ctx.train.mask_classes), m.weights, m.mode, **m.options)
    meta = {
        "size": ctx.config.dataset.size,
        "fit": ctx.config.dataset.fit,
        "mask_classes": ctx.train.mask_classes,
    }
    val = ctx.val if val_split is None else val_split
    result = fit(model, train_split, val, t, ctx.out_dir, ctx.device, ctx.config.seed, run_key=run_key, meta=meta)
    metrics = evaluate_model(
        model, ctx.test, ctx.device, t.eval_batch_size, tta=t.tta, amp=t.amp, progress=ctx.progress
    )
    metrics["best_epoch"] = result.best_epoch
    metrics["train_images_per_s"] = result.images_per_s
    return StageResult("final", metrics)


@register_method("full")
@register_method("masks")
def supervised(ctx: RunContext) -> list[StageResult]:
    """Train on the full masks of the images the budget keeps (all of them at coverage 100)."""
    keep = set(ctx.selection.masks)
    train = ctx.train.subset([i for i, n in enumerate(ctx.train.names) if n in keep])
    return [train_and_test(ctx, train, {"masks": sorted(keep)})]
