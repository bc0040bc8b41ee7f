"""The last step of every method: build the configured segmenter, fit it on the method's targets and test it."""

from __future__ import annotations

from pathlib import Path

from weakseg.data.prepared import PreparedSplit
from weakseg.evaluate import evaluate_model
from weakseg.methods.base import RunContext, StageResult
from weakseg.models import Segmenter, build_model
from weakseg.runtime import seed_everything
from weakseg.sources.target import Target
from weakseg.train import fit


def train_and_test(
    ctx: RunContext,
    train_split: PreparedSplit,
    run_key: dict,
    val_split: PreparedSplit | None = None,
    targets: list[Target] | None = None,
    primary: str | None = None,
) -> StageResult:
    """Build the configured model (one head per target when there are several, ``primary`` predicting), fit it
    on ``targets`` (default: ``train_split``'s masks), validating on ``val_split`` (default: the run's
    validation split), and score it on the test split."""
    m = ctx.config.model
    seed_everything(ctx.config.seed)  # the decoder's random initialisation depends on the seed too
    heads = {"heads": [x.name for x in targets], "primary": primary} if targets and len(targets) > 1 else {}
    model = build_model(m.arch, m.encoder, len(ctx.train.mask_classes), m.weights, m.mode, **heads, **m.options)
    return fit_and_test(ctx, model, train_split, run_key, val_split, targets)


def fit_and_test(
    ctx: RunContext,
    model: Segmenter,
    train_split: PreparedSplit,
    run_key: dict,
    val_split: PreparedSplit | None = None,
    targets: list[Target] | None = None,
    out_dir: Path | None = None,
    tag_weight: float = 0.0,
) -> StageResult:
    """Fit ``model`` (checkpoints in ``out_dir``, default the run's folder) and score it on the test split:
    the ``final`` stage, with the kept epoch and its validation scores."""
    t, ds = ctx.config.train, ctx.config.dataset
    meta = {"size": ds.size, "fit": ds.fit, "mask_classes": ctx.train.mask_classes}
    tiling = {}
    if ds.tile is not None:  # trained on native-resolution tiles: predicted and scored by sliding windows
        meta |= {"size": ds.tile, "tile": ds.tile, "overlap": t.eval_overlap}
        tiling = {"tile": ds.tile, "overlap": t.eval_overlap}
        run_key = run_key | {"tile": ds.tile, "tile_overlap": ds.tile_overlap}
    val = ctx.val if val_split is None else val_split
    result = fit(
        model,
        train_split,
        val,
        t,
        out_dir or ctx.out_dir,
        ctx.device,
        ctx.config.seed,
        run_key=run_key,
        meta=meta,
        targets=targets,
        tag_weight=tag_weight,
    )
    metrics = evaluate_model(
        model, ctx.test, ctx.device, t.eval_batch_size, tta=t.tta, amp=t.amp, progress=ctx.progress, **tiling
    )
    metrics["best_epoch"] = result.best_epoch
    metrics["epochs_trained"] = len(result.history)  # fewer than train.epochs when early stopping ended the run
    if val is not None and 0 < result.best_epoch <= len(result.history):  # what the checkpoint was chosen on
        best = result.history[result.best_epoch - 1]
        metrics |= {"val_iou": best["val_iou"], "val_dice": best["val_dice"], "val_images": len(val)}
    metrics["train_images_per_s"] = result.images_per_s
    return StageResult("final", metrics)
