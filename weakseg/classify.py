"""Training a tag classifier (the model CAMs explain): random-resized-crop and flip augmentation, cross-entropy
(multi-label soft margin for multi-label tags), accuracy on held-out images. Resumes per epoch."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align

from weakseg.config import ClassifierConfig
from weakseg.data.prepared import PreparedSplit
from weakseg.data.sample import NEGATIVE_TAG
from weakseg.data.transforms import flip_batch
from weakseg.errors import ConfigError
from weakseg.identity import digest
from weakseg.io import atomic_path, write_csv
from weakseg.models.classifier import Classifier
from weakseg.progress import progress_bar
from weakseg.runtime import seed_everything

CLASSIFIER_AUGMENTATIONS = ("crop", "hflip", "vflip")


@dataclass
class ClassifierResult:
    accuracy: float  # on the evaluation split given to train_classifier (nan without one)
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_s: float = 0.0


def is_multilabel(split: PreparedSplit, config: ClassifierConfig) -> bool:
    """Multi-label when configured so, or (unset) when some image carries several tags or the tags include the
    negative ``none`` class.

    With negatives, one sigmoid per tag class: a ``none`` image's target has no foreground class, so each
    foreground logit alone scores that class against the negatives, and that logit is what a CAM explains. (In a
    softmax, a foreground logit only matters relative to the ``none`` logit, so its own gradient is a weaker
    account of the foreground evidence.)"""
    if config.multilabel is not None:
        return config.multilabel
    return NEGATIVE_TAG in split.tag_classes or any(len(labels) > 1 for labels in split.labels)


def tag_targets(split: PreparedSplit, indices: list[int], num_classes: int, multilabel: bool) -> torch.Tensor:
    """Multi-hot (N, C) float targets, or (N,) class ids (-100 for an image without a tag)."""
    if multilabel:
        target = torch.zeros(len(indices), num_classes)
        for row, i in enumerate(indices):
            target[row, split.labels[i]] = 1.0
        return target
    return torch.tensor([split.labels[i][0] if split.labels[i] else -100 for i in indices], dtype=torch.long)


def random_resized_crop(
    images: torch.Tensor,
    generator: torch.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> torch.Tensor:
    """Batched random-resized crop of float (N, C, S, S) images back to S x S (one ``roi_align`` call)."""
    n, _, h, w = images.shape
    area = torch.empty(n).uniform_(scale[0], scale[1], generator=generator) * h * w
    log_ratio = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = torch.exp(log_ratio)
    crop_w = torch.sqrt(area * aspect).clamp(8, w)
    crop_h = torch.sqrt(area / aspect).clamp(8, h)
    x0 = torch.rand(n, generator=generator) * (w - crop_w)
    y0 = torch.rand(n, generator=generator) * (h - crop_h)
    boxes = torch.stack([torch.arange(n, dtype=torch.float32), x0, y0, x0 + crop_w, y0 + crop_h], dim=1)
    return roi_align(images, boxes.to(images), output_size=(h, w), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def augment(images: torch.Tensor, names: list[str], config: ClassifierConfig, generator: torch.Generator):
    """Apply the configured augmentations (``crop``, ``hflip``, ``vflip``) to float images."""
    for name in names:
        if name == "crop":
            images = random_resized_crop(images, generator, tuple(config.crop_scale))
        elif name in ("hflip", "vflip"):
            images, _ = flip_batch(images, None, generator, -1 if name == "hflip" else -2)
        else:
            raise ConfigError(f"unknown classifier augmentation '{name}'; known: {', '.join(CLASSIFIER_AUGMENTATIONS)}")
    return images


def classification_loss(logits: torch.Tensor, target: torch.Tensor, multilabel: bool, smoothing: float):
    if multilabel:
        return F.multilabel_soft_margin_loss(logits, target)
    return F.cross_entropy(logits, target, ignore_index=-100, label_smoothing=smoothing)


@torch.no_grad()
def evaluate_classifier(model: Classifier, split: PreparedSplit, device: torch.device, batch_size: int = 64) -> float:
    """Accuracy: top-1 for single-label tags, per-label accuracy at 0.5 for multi-label tags."""
    model.eval()
    correct, total = 0.0, 0
    for start in range(0, len(split), batch_size):
        index = list(range(start, min(start + batch_size, len(split))))
        logits = model(split.images[index].to(device).float().div_(255)).float().cpu()
        if model.multilabel:
            target = tag_targets(split, index, model.num_classes, True)
            correct += float(((logits > 0).float() == target).float().mean(1).sum())
            total += len(index)
        else:
            target = tag_targets(split, index, model.num_classes, False)
            valid = target >= 0
            correct += float((logits.argmax(1)[valid] == target[valid]).sum())
            total += int(valid.sum())
    return correct / total if total else math.nan


def _digest(config: ClassifierConfig, extra: dict[str, Any]) -> str:
    return digest(config.model_dump() | extra)  # epochs included: the cosine schedule depends on them


def train_classifier(
    model: Classifier,
    train: PreparedSplit,
    config: ClassifierConfig,
    out_path: str | Path,
    device: torch.device,
    seed: int = 0,
    evaluation: PreparedSplit | None = None,
    progress: bool = True,
) -> ClassifierResult:
    """Fine-tune ``model`` on the tags of ``train`` for ``config.epochs`` epochs (Adam, cosine schedule),
    saving ``out_path`` after every epoch; a rerun with the same setup resumes (or returns at once)."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    multilabel = model.multilabel
    usable = [i for i, labels in enumerate(train.labels) if labels]
    if not usable:
        raise ConfigError("no training image has a tag: a classifier cannot be trained")
    digest = _digest(config, {"seed": seed, "spec": model.spec, "names": train.names})
    generator = seed_everything(seed)
    model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(config.epochs, 1))
    start, history = 0, []
    state = torch.load(out_path, map_location=device, weights_only=False) if out_path.is_file() else {}
    if state.get("digest") == digest:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start, history = state["epoch"], state["history"]

    def save(epoch: int) -> None:
        state = {"classifier_spec": model.spec, "model": model.state_dict(), "tag_classes": train.tag_classes}
        state |= {"digest": digest, "epoch": epoch, "optimizer": optimizer.state_dict(), "history": history}
        state |= {"scheduler": scheduler.state_dict(), "generator": generator.get_state()}
        with atomic_path(out_path) as tmp:
            torch.save(state, tmp)

    with progress_bar(progress) as bar:
        for epoch in range(start, config.epochs):
            model.train()
            order = torch.tensor(usable)[torch.randperm(len(usable), generator=generator)].tolist()
            task = bar.add_task(f"classifier epoch {epoch + 1}/{config.epochs}", total=len(order))
            started, seen, total_loss = time.perf_counter(), 0, 0.0
            for begin in range(0, len(order), config.batch_size):
                index = order[begin : begin + config.batch_size]
                if len(index) == 1 and len(order) > 1:
                    break  # BatchNorm cannot train on one image
                images = augment(train.images[index].float().div_(255), config.augment, config, generator)
                target = tag_targets(train, index, model.num_classes, multilabel).to(device)
                logits = model(images.to(device).contiguous(memory_format=torch.channels_last))
                loss = classification_loss(logits.float(), target, multilabel, config.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                seen += len(index)
                total_loss += loss.item() * len(index)
                bar.advance(task, len(index))
            scheduler.step()
            seconds = time.perf_counter() - started
            bar.remove_task(task)
            row = {"epoch": epoch + 1, "loss": total_loss / max(seen, 1), "seconds": round(seconds, 3)}
            row["images_per_s"] = seen / seconds if seconds else 0.0
            if evaluation is not None and len(evaluation):
                row["accuracy"] = evaluate_classifier(model, evaluation, device)
            history.append(row)
            save(epoch + 1)
    if not out_path.is_file():  # zero epochs: the untrained model is still a usable checkpoint
        save(0)
    write_log(out_path.with_suffix(".csv"), history)
    model.eval()
    accuracy = (
        evaluate_classifier(model, evaluation, device) if evaluation is not None and len(evaluation) else math.nan
    )
    speeds = [r["images_per_s"] for r in history if r.get("images_per_s")]
    return ClassifierResult(accuracy, history, sum(speeds) / len(speeds) if speeds else 0.0)


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """The per-epoch log as CSV."""
    if not history:
        return
    write_csv(path, history, list(dict.fromkeys(k for row in history for k in row)))
