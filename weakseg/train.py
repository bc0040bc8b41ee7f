"""The training loop: Adam, halving the learning rate on a validation plateau, best-checkpoint keeping,
optional early stopping, resume from the last checkpoint (exactly where an uninterrupted run would be), a
progress bar and a per-epoch CSV log. ``fit`` reads top to bottom: setup, resume, then per epoch
``train_one_epoch``, ``validate`` and the checkpoints.

One loop for one or many supervision sources: each :class:`Target` is learned by the model head of its name,
with its own loss (hard labels: ``train.loss`` over known pixels; soft maps: soft cross-entropy) and weight, over
the images it labels; an epoch draws from every labelled image alike, or in equal shares per head
(``train.sampling: balanced``). In the last ``train.strong_only`` fraction of epochs only the primary head learns,
on the images the primary target labels, at ``train.strong_lr`` times the learning rate. A plain model with the
split's masks is the single-target case. A multi-task model (``build_model(..., tags=K)``) also learns the
split's image tags with its classification branch, the tag loss weighted by ``tag_weight``.

Under ``torchrun`` (:mod:`weakseg.distributed`) the same loop trains with DistributedDataParallel: every process
draws the same epoch order and global batches (``train.batch_size``), runs the forward pass on its share of each
batch, and the logits are gathered so that every process computes the loss of the whole batch, exactly as one
process would (any loss, uneven shares, heads that label some images only); BatchNorm is synchronised on GPUs.
Validation is split by batches and pooled; only rank 0 writes checkpoints and logs.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import Progress
from torch.nn.parallel import DistributedDataParallel

from weakseg import distributed, identity
from weakseg.classify import classification_loss, tag_targets
from weakseg.config import TrainConfig
from weakseg.data.prepared import PreparedSplit, draw, iterate_batches
from weakseg.data.store import StackedRows, as_rows
from weakseg.errors import ConfigError, TrainingDivergedError
from weakseg.io import atomic_path, write_csv
from weakseg.losses import SoftCrossEntropy, build_loss
from weakseg.metrics import ConfusionMatrix
from weakseg.models.multihead import MultiHeadSegmenter
from weakseg.models.multitask import MultiTaskSegmenter
from weakseg.models.segmenter import Segmenter
from weakseg.progress import progress_bar
from weakseg.runtime import autocast, seed_everything
from weakseg.sources.target import Target

LOG_FIELDS = ["epoch", "heads", "train_loss", "val_loss", "val_iou", "val_dice", "lr", "seconds", "images_per_s"]


@dataclass
class TrainResult:
    best_epoch: int
    best_score: float
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_s: float = 0.0
    stopped_epoch: int | None = None  # the epoch after which early stopping ended training; None: it did not


def config_digest(config: TrainConfig, extra: dict[str, Any] | None = None) -> str:
    """Identifies a training setup, so a resume never continues a different run. ``epochs`` and ``early_stop``
    only say when to stop, not how to train: a run may be extended, or its stopping rule changed."""
    exclude = {"epochs", "early_stop", "progress", "device", "eval_batch_size", "eval_overlap", "tta", "workers"}
    ident = config.model_dump(exclude=exclude) | (extra or {})
    return identity.digest(ident)


def save_checkpoint(path: Path, model: Segmenter, **state: Any) -> None:
    with atomic_path(path) as tmp:
        torch.save({"model_spec": model.spec, "model": model.state_dict(), **state}, tmp)


class _TensorBoard:
    """Writes scalars to TensorBoard when it is installed (and ``enabled``: rank 0 only); silent otherwise."""

    def __init__(self, log_dir: Path, enabled: bool = True):
        self.writer = None
        if not enabled:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(log_dir))
        except Exception:
            self.writer = None

    def log(self, row: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and isinstance(value, float) and math.isfinite(value):
                    self.writer.add_scalar(key, value, step)
            self.writer.flush()


def head_names(model: Segmenter, targets: list[Target]) -> tuple[list[str], str]:
    """The heads that learn the targets and the primary one; checks that every target has its head."""
    if isinstance(model, MultiHeadSegmenter):
        missing = [t.name for t in targets if t.name not in model.heads]
        if missing:
            raise ConfigError(f"the model has no head for source(s) {missing}; heads: {list(model.heads)}")
        names = [t.name for t in targets]
        if model.primary not in names:
            raise ConfigError(f"the primary head '{model.primary}' has no target among {names}")
        return names, model.primary
    if len(targets) != 1:
        raise ConfigError(f"{len(targets)} sources need a multi-head model (build_model(..., heads=[...]))")
    return [targets[0].name], targets[0].name


def head_logits(model: Segmenter, images: torch.Tensor, names: list[str]) -> dict[str, torch.Tensor]:
    """Logits of the named heads from one forward pass (a plain model has one head)."""
    if isinstance(model, MultiHeadSegmenter):
        return model.forward_heads(images, names)
    return {names[0]: model(images)}


class _TrainForward(torch.nn.Module):
    """The training forward pass as one module call, so that DistributedDataParallel sees it: the logits of the
    named heads, and with ``tags`` the multi-task model's tag logits too (else None)."""

    def __init__(self, model: Segmenter):
        super().__init__()
        self.model = model

    def forward(
        self, images: torch.Tensor, names: list[str], tags: bool
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        if tags:
            mask_logits, tag_logits = self.model.forward_both(images)
            return {names[0]: mask_logits}, tag_logits
        return head_logits(self.model, images, names), None


def _whole_batch(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """The logits of the whole batch from every process's share (float32, differentiable); one process: as is."""
    return local if len(sizes) == 1 else distributed.gather_parts(local.float(), sizes)


def epoch_order(
    labelled: torch.Tensor, active: list[int], count: int | None, balanced: bool, generator: torch.Generator
) -> torch.Tensor:
    """The image indices drawn in one epoch: ``count`` (default: each image once) from the images that the
    ``active`` targets label; ``balanced`` gives each active target an equal share of the draws from its own
    images, so a head with few labelled images (2.5 % of full masks) still sees one in most batches."""
    union = labelled[:, active].any(1).nonzero().squeeze(1)
    count = count or len(union)
    if not balanced or len(active) == 1:
        return draw(union, count, generator)
    share = -(-count // len(active))
    order = torch.cat([draw(labelled[:, k].nonzero().squeeze(1), share, generator) for k in active])
    return order[torch.randperm(len(order), generator=generator)][:count]


def start_strong_phase(model: Segmenter, optimizer: torch.optim.Optimizer, primary: str, config: TrainConfig) -> None:
    """Enter the strong-only epochs: scale the learning rate by ``strong_lr`` and, with ``strong_init``, start
    the primary head from the weights of that weak head (which has learned from many more images)."""
    for group in optimizer.param_groups:
        group["lr"] *= config.strong_lr
    if config.strong_init and config.strong_init != primary:
        model.heads[primary].load_state_dict(model.heads[config.strong_init].state_dict())


@torch.no_grad()
def validate(
    model: Segmenter,
    split: PreparedSplit,
    loss_fn: torch.nn.Module,
    device: torch.device,
    batch_size: int,
    amp: bool,
) -> dict[str, float]:
    """Loss and metrics on the validation split at model resolution, in one forward pass per batch. Under
    torchrun each process scores every ``world``-th batch (the batches one process would score) and the processes
    pool their confusion matrices and losses: every process gets the scores of the whole split."""
    model.eval()
    cm = ConfusionMatrix(len(split.mask_classes))
    total, count = 0.0, 0
    order = None
    if distributed.world() > 1:
        starts = distributed.shard(range(0, len(split), batch_size))
        order = torch.tensor([i for s in starts for i in range(s, min(s + batch_size, len(split)))], dtype=torch.long)
    for images, masks, index in iterate_batches(split, batch_size, device, order=order):
        with autocast(device, amp):
            logits = model(images).float()
        total += float(loss_fn(logits, masks)) * len(index)
        cm.update(model.probabilities(logits).argmax(1), masks)
        count += len(index)
    if distributed.world() > 1:
        pooled = distributed.gather_objects((cm.per_image, total, count))
        cm = ConfusionMatrix(len(split.mask_classes))
        for per_image, _, _ in pooled:
            cm.add_images(per_image)
        total, count = sum(p[1] for p in pooled), sum(p[2] for p in pooled)
    return {"loss": total / max(count, 1), **cm.compute()}


@dataclass
class Supervision:
    """The targets as the loop consumes them: head names, one loss per target, which images each labels, and
    the training split with every target's labels as its masks, read together per batch (so that flips apply to
    all alike; nothing is stacked in memory beyond a batch)."""

    targets: list[Target]
    names: list[str]
    primary_k: int
    losses: list[torch.nn.Module]
    labelled: torch.Tensor  # (N, K) bool
    stacked: PreparedSplit  # mask rows (N, K, S, S)
    tags: torch.Tensor | None = None  # the images' tags for a multi-task model: multi-hot (N, T) or ids (N,)
    tag_weight: float = 0.0
    multilabel: bool = False


def supervision(
    model: Segmenter,
    train: PreparedSplit,
    targets: list[Target] | None,
    config: TrainConfig,
    tag_weight: float = 0.0,
) -> Supervision:
    """Check ``targets`` (default: the split's masks for the one head) against the model and the split; with
    ``tag_weight``, the split's tags for the classification branch of a multi-task model."""
    if targets is None:
        if train.mask_rows is None:
            raise ConfigError("the training split has no masks and no targets were given")
        name = model.primary if isinstance(model, MultiHeadSegmenter) else "masks"
        targets = [Target(name, train.mask_rows)]
    if any(len(t) != len(train) for t in targets):
        raise ConfigError(f"every target needs labels for the {len(train)} training images")
    names, primary = head_names(model, targets)
    if config.strong_init and config.strong_init not in names:
        raise ConfigError(f"train.strong_init: no head '{config.strong_init}' among the targets' heads {names}")
    mode = model.spec.get("mode", "multiclass")
    tags, multilabel = None, False
    if tag_weight > 0:
        if not isinstance(model, MultiTaskSegmenter) or not train.tag_classes:
            raise ConfigError("a tag loss needs a multi-task model (tags=K) and a training split with image tags")
        multilabel = model.multilabel
        tags = tag_targets(train, list(range(len(train))), model.num_tags, multilabel)
    return Supervision(
        targets=targets,
        names=names,
        primary_k=names.index(primary),
        losses=[SoftCrossEntropy(mode) if t.soft else build_loss(config.loss, mode) for t in targets],
        labelled=torch.stack([t.labelled for t in targets], 1),
        stacked=train.with_mask_rows(StackedRows([as_rows(t.labels) for t in targets])),
        tags=tags,
        tag_weight=tag_weight,
        multilabel=multilabel,
    )


def train_one_epoch(
    model: Segmenter,
    sup: Supervision,
    active: list[int],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    generator: torch.Generator,
    config: TrainConfig,
    device: torch.device,
    bar: Progress,
    description: str,
    forward: torch.nn.Module | None = None,
) -> tuple[float, int, float]:
    """One pass over the images that the ``active`` targets label; returns (mean loss, images, seconds).
    ``forward``: the :class:`_TrainForward` of ``model`` that runs the forward pass (wrapped in
    DistributedDataParallel under torchrun, where this process computes the logits of its share of each batch)."""
    model.train()
    forward = forward or _TrainForward(model)
    world, rank = distributed.world(), distributed.rank()
    order = epoch_order(sup.labelled, active, config.epoch_images, config.sampling == "balanced", generator)
    task = bar.add_task(description, total=math.ceil(len(order) / config.batch_size), info="")
    started, seen, total_loss = time.perf_counter(), 0, 0.0
    batches = iterate_batches(
        sup.stacked,
        config.batch_size,
        device,
        generator=generator,
        augment=config.augment,
        drop_singleton=True,
        order=order,
        workers=config.workers,
    )
    for images, masks, index in batches:
        if len(index) < world:  # too few images to give every process one (only ever the last batch): left out
            break
        # Every process draws the same whole batch (order and flips from the shared generator) and runs the
        # forward pass on its share; the gathered logits give every process the loss of the whole batch. The
        # gather's backward sums the world's equal gradients for each share, and DistributedDataParallel's average
        # divides them back: the step is the one-process step on the whole batch. (torch's DistributedSampler is
        # not used: it shards a dataset, whereas the batches here come from the seeded epoch order.)
        sizes = distributed.parts(len(index))
        first = sum(sizes[:rank])
        heads = [sup.names[k] for k in active if sup.labelled[index, k].any()]  # heads with something to learn
        if sup.tags is not None:  # a multi-task model: its one mask head and the tag branch
            heads = sup.names[:1]
        with autocast(device, config.amp, config.cpu_amp):
            local, local_tags = forward(images[first : first + sizes[rank]], heads, sup.tags is not None)
        logits = {name: _whole_batch(value, sizes) for name, value in local.items()}
        tag_logits = _whole_batch(local_tags, sizes) if local_tags is not None else None
        loss = images.new_zeros((), dtype=torch.float32)
        if sup.tags is not None:  # the classification branch learns the images' tags
            tags = sup.tags[index].to(device)
            loss = loss + sup.tag_weight * classification_loss(tag_logits.float(), tags, sup.multilabel, 0.0)
        for k in active:  # losses in float32 whatever precision the forward pass ran in
            rows = sup.labelled[index, k].to(device)
            if rows.any():
                target = masks[:, k].float().div(255) if sup.targets[k].soft else masks[:, k]
                term = sup.losses[k](logits[sup.names[k]][rows].float(), target[rows])
                loss = loss + sup.targets[k].weight * term
        value = loss.item()
        if not math.isfinite(value):  # stop before the step: the checkpoints hold the last good weights
            raise TrainingDivergedError(
                f"the training loss became {value} in {description}, batch {seen // config.batch_size + 1}: stopped "
                "without updating the weights; best.pt and last.pt keep the last good epoch (try a lower train.lr, "
                "or check the labels)"
            )
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        seen += len(index)
        total_loss += value * len(index)
        bar.update(task, advance=1, info=f"loss {total_loss / seen:.4f}")
    bar.remove_task(task)
    return total_loss / max(seen, 1), seen, time.perf_counter() - started


def rng_state() -> dict[str, Any]:
    """The global random states (Python, NumPy, torch CPU and CUDA) that a resume must continue from."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class RunState:
    """Where a run stands after its finished epochs; carried over an interruption by ``last.pt``."""

    epochs_done: int = 0
    best_score: float = -math.inf
    best_epoch: int = -1
    history: list[dict[str, float]] = field(default_factory=list)
    stopped_epoch: int | None = None

    def plateaued(self, config: TrainConfig) -> bool:
        """True when early stopping is on and the monitored score has not improved for ``early_stop`` epochs."""
        return config.early_stop is not None and self.epochs_done - max(self.best_epoch, 0) >= config.early_stop


def fit(
    model: Segmenter,
    train: PreparedSplit,
    val: PreparedSplit | None,
    config: TrainConfig,
    out_dir: str | Path,
    device: torch.device,
    seed: int = 0,
    resume: bool = True,
    run_key: dict[str, Any] | None = None,
    meta: dict[str, Any] | None = None,
    targets: list[Target] | None = None,
    tag_weight: float = 0.0,
) -> TrainResult:
    """Train ``model`` on ``targets`` (default: ``train.masks`` for the one head); keep ``best.pt`` by validation
    ``config.monitor`` on the primary head (or the last epoch without validation) and ``last.pt`` for resuming.
    With ``config.early_stop``, training ends once that score has not improved for so many epochs. Returns with
    ``model`` holding the best weights. ``meta`` (input size, fit, class names) is stored in the checkpoints for
    prediction. ``tag_weight`` > 0 adds the tag loss of a multi-task model's classification branch.

    Launched by torchrun, every process calls ``fit`` alike; ``config.batch_size`` is the global batch."""
    # Setup: the supervision, the optimiser and its schedule, the random streams, the processes.
    distributed.setup()
    world, main = distributed.world(), distributed.is_main()
    if config.batch_size % world:
        raise ConfigError(
            f"train.batch_size {config.batch_size} is the global batch, split over {world} processes: it must be a "
            f"multiple of {world}"
        )
    out_dir = Path(out_dir)
    sup = supervision(model, train, targets, config, tag_weight)
    validating = val is not None and len(val) > 0
    if config.early_stop is not None and not validating:
        raise ConfigError("train.early_stop needs a validation split whose score it monitors; none was given")
    all_heads, primary = list(range(len(sup.targets))), sup.names[sup.primary_k]
    strong_from = config.epochs - round(config.epochs * config.strong_only) if len(all_heads) > 1 else config.epochs
    val_loss = sup.losses[sup.primary_k]  # validation scores hard masks, also when the primary target is soft
    if sup.targets[sup.primary_k].soft:
        val_loss = build_loss(config.loss, model.spec.get("mode", "multiclass"))
    ident = {"seed": seed, "model": model.spec, "n": len(train), "targets": [t.ident() for t in sup.targets]}
    if tag_weight > 0:
        ident["tag_weight"] = tag_weight
    digest = config_digest(config, (run_key or {}) | ident)
    generator = seed_everything(seed)
    if world > 1 and device.type == "cuda":  # BatchNorm statistics over the whole batch (in place; CUDA only)
        from timm.layers import convert_sync_batchnorm

        convert_sync_batchnorm(model)
    model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.lr_factor, patience=config.patience
    )
    scaler = torch.amp.GradScaler(
        "cuda", enabled=device.type == "cuda" and config.amp and not torch.cuda.is_bf16_supported()
    )

    # Resume from the last checkpoint of the same setup: weights, optimiser, schedule, every random stream.
    out_dir.mkdir(parents=True, exist_ok=True)
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    state = torch.load(last_path, map_location="cpu", weights_only=False) if last_path.is_file() else {}
    run = RunState()
    if not (resume and state.get("digest") == digest):
        if main:
            best_path.unlink(missing_ok=True)  # a stale best checkpoint from another setup must not be picked up
    else:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        if "rng" in state:
            set_rng_state(state["rng"])
        run = RunState(state["epoch"] + 1, state["best_score"], state["best_epoch"], state["history"])
        if run.plateaued(config):  # a run whose early stop triggered is finished
            run.stopped_epoch = run.epochs_done

    forward: torch.nn.Module = _TrainForward(model)
    if world > 1:  # some heads (or the tag branch) sit out some batches: their parameters get no gradient
        optional = isinstance(model, MultiHeadSegmenter | MultiTaskSegmenter)
        ids = [torch.cuda.current_device()] if device.type == "cuda" else None
        forward = DistributedDataParallel(forward, ids, find_unused_parameters=optional)

    log_path = out_dir / "log.csv"
    if main:  # rewritten whole from the history, atomically: a resume leaves no duplicates, a kill no half log
        write_csv(log_path, run.history, LOG_FIELDS)
    board = _TensorBoard(out_dir / "tensorboard", enabled=main)

    with progress_bar(config.progress and main, info=True) as bar:
        for epoch in range(run.epochs_done, config.epochs):
            if run.stopped_epoch is not None:  # early stopping ended the run, in this call or an earlier one
                break
            # Train: every head on the images it labels, only the primary one in the strong-only epochs.
            if epoch == strong_from:
                start_strong_phase(model, optimizer, primary, config)
            active = [sup.primary_k] if epoch >= strong_from else all_heads
            description = f"epoch {epoch + 1}/{config.epochs}"
            loss, seen, seconds = train_one_epoch(
                model, sup, active, optimizer, scaler, generator, config, device, bar, description, forward
            )
            distributed.average_buffers(model)  # BatchNorm statistics (per process on CPU) become one model's
            row = {
                "epoch": epoch + 1,
                "heads": "+".join(sup.names[k] for k in active),
                "train_loss": loss,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(seconds, 3),
                "images_per_s": seen / seconds if seconds else 0.0,
                "val_loss": math.nan,
                "val_iou": math.nan,
                "val_dice": math.nan,
            }

            # Validate and adapt the learning rate (without validation the last epoch counts as the best).
            if validating:
                metrics = validate(model, val, val_loss, device, config.eval_batch_size, config.amp)
                row.update(val_loss=metrics["loss"], val_iou=metrics["iou"], val_dice=metrics["dice"])
                score = float(metrics[config.monitor])
                scheduler.step(score if math.isfinite(score) else -math.inf)
            else:
                score = float(epoch)
            run.history.append(row)
            run.epochs_done = epoch + 1
            if main:
                write_csv(log_path, run.history, LOG_FIELDS)
            board.log(row, epoch + 1)

            # Checkpoint (rank 0): the best weights, then everything a resume needs; stop early on a plateau. The
            # score is the same on every process (pooled validation), so all take the same decisions.
            if score > run.best_score:
                run.best_score, run.best_epoch = score, epoch + 1
                if main:
                    save_checkpoint(best_path, model, epoch=epoch, score=score, digest=digest, meta=meta or {})
            if run.plateaued(config):
                run.stopped_epoch = epoch + 1
            if main:
                save_checkpoint(
                    last_path,
                    model,
                    epoch=epoch,
                    digest=digest,
                    meta=meta or {},
                    optimizer=optimizer.state_dict(),
                    scheduler=scheduler.state_dict(),
                    scaler=scaler.state_dict(),
                    generator=generator.get_state(),
                    rng=rng_state(),
                    best_score=run.best_score,
                    best_epoch=run.best_epoch,
                    history=run.history,
                    stopped_epoch=run.stopped_epoch,
                )

    distributed.barrier()  # rank 0's checkpoints are written
    if best_path.is_file():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=False)["model"])
    speeds = [r["images_per_s"] for r in run.history if r["images_per_s"]]
    images_per_s = sum(speeds) / len(speeds) if speeds else 0.0
    return TrainResult(run.best_epoch, run.best_score, run.history, images_per_s, run.stopped_epoch)
