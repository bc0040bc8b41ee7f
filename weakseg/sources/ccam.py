"""C-CAM: class-agnostic activation maps learned by contrasting foreground and background features.

Xie et al., "C-CAM: Contrastive learning of Class-agnostic Activation Map for Weakly Supervised Object
Localization and Semantic Segmentation", CVPR 2022 (code: github.com/CVI-SZU/CCAM). No label is needed: a
*disentangler* (3x3 conv -> BatchNorm -> sigmoid) turns the encoder's features F (its last two stages, the deeper
one upsampled to the stride-16 one, concatenated) into an activation map P; ``v_fg`` = mean over pixels of P * F,
``v_bg`` = mean of (1 - P) * F. Over all pairs of a batch, foreground vectors are pulled together, background
vectors are pulled together, and every foreground is pushed from every background (cosine similarity; the pull
terms rank-weighted). The losses are symmetric in P and 1 - P, so which side ends up "foreground" is chance: after
the first epoch a map that is high on the image border on average is flipped, once, and the flip is recorded.

    model = build_ccam()                                  # bundled ImageNet EfficientNet-Lite0 encoder
    result = train_ccam(model, split, CCAMOptions(), "ccam.pt", torch.device("cpu"))
    maps = ccam_maps(model, split.images, scales=[1.0, 2.0])   # (N, S, S) in [0, 1]

Variants (``method.options`` of the ``ccam`` method, :class:`CCAMOptions`): the encoder starts from ImageNet or
from a classifier trained on the tags (then frozen by default), and an optional classification loss on ``v_fg``
uses the tags as well.
"""

from __future__ import annotations

import csv
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from weakseg.cams.base import scale_maps, upsample
from weakseg.classify import augment, classification_loss, tag_targets
from weakseg.config import ClassifierConfig
from weakseg.data.prepared import PreparedSplit
from weakseg.errors import ConfigError, TrainingDivergedError
from weakseg.identity import digest
from weakseg.io import atomic_path
from weakseg.models.encoders import (
    OFFLINE_ENCODER,
    build_with_weights,
    normalization,
)
from weakseg.models.segmenter import Normalized
from weakseg.progress import progress_bar
from weakseg.runtime import seed_everything

CCAM_VERSION = 1
"""Version of the C-CAM code in the idents of its stored models and maps; bump it when their output changes."""

SIM_MIN, SIM_MAX = 0.0005, 0.9995  # the authors' clamp of the cosine similarity (keeps both logs finite)


class CCAMOptions(BaseModel):
    """Settings of C-CAM (``method.options`` of the ``ccam`` method). Defaults follow the authors' VOC setting
    where it carries over (alpha, learning rates, 10 epochs, scales 0.5-2 with flip)."""

    model_config = ConfigDict(extra="forbid")

    init: Literal["imagenet", "tags"] = Field(
        "imagenet",
        description="encoder start: 'imagenet' (classifier.encoder with classifier.weights; needs no label) or "
        "'tags' (the tag classifier of the CAM methods, trained with the classifier settings)",
    )
    freeze: bool | None = Field(None, description="keep the encoder fixed; None: frozen for init 'tags' only")
    class_weight: float = Field(0.0, ge=0, description="weight of a tag classification loss on v_fg (0: none)")
    alpha: float = Field(0.25, ge=0, description="rank weighting of the pull terms: exp(-alpha * (rank - 1))")
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(16, ge=2, description="images per step (every pair of the batch is contrasted)")
    optimizer: Literal["sgd", "adam"] = Field("sgd", description="sgd: the authors' poly-decayed SGD")
    lr: float = Field(1e-3, gt=0, description="encoder learning rate (poly decay, power 0.9, over all steps)")
    head_lr: float = Field(10.0, gt=0, description="the disentangler's (and classifier's) learning-rate factor")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    weight_decay: float = Field(1e-4, ge=0)
    augment: list[str] = Field(default_factory=lambda: ["crop", "hflip"], description="crop, hflip, vflip")
    crop_scale: tuple[float, float] = Field((0.5, 1.0), description="area range of the random-resized crop")
    polarity: Literal["auto", "off"] = Field("auto", description="auto: flip a border-heavy map after epoch 1")
    border: float = Field(0.15, gt=0, le=0.5, description="width of the border strips, fraction of the side")
    readout: Literal["relu", "sigmoid"] = Field(
        "relu", description="inference map per scale: relu of the logit (authors) or the sigmoid probability"
    )
    scales: list[float] = Field(default_factory=lambda: [0.5, 1.0, 1.5, 2.0], description="inference scales")
    flip: bool = Field(True, description="also average the horizontally flipped image's map at inference")
    eval_batch_size: int = Field(32, ge=1)

    @property
    def frozen(self) -> bool:
        """Whether the encoder stays fixed (``freeze``, or by default: with the tag-trained init)."""
        return self.init == "tags" if self.freeze is None else self.freeze

    @property
    def uses_tags(self) -> bool:
        """Whether this variant reads the image tags."""
        return self.init == "tags" or self.class_weight > 0

    def training(self) -> dict[str, Any]:
        """The settings that change the trained model (not the inference ones)."""
        return self.model_dump(exclude={"readout", "scales", "flip", "eval_batch_size"}) | {"frozen": self.frozen}

    def inference(self) -> dict[str, Any]:
        """The settings of the maps computed from the trained model."""
        return self.model_dump(include={"readout", "scales", "flip"})


def parse_options(options: dict[str, Any]) -> CCAMOptions:
    """``method.options`` as :class:`CCAMOptions`; one-line ConfigError naming the bad key."""
    try:
        return CCAMOptions.model_validate(options)
    except ValidationError as err:
        problems = "; ".join(f"method.options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid C-CAM options: {problems}") from err


# ---------------------------------------------------------------------------------------------------- model


class CCAM(Normalized):
    """Encoder (last two stages, stride 16) + disentangler; takes RGB in [0, 1].

    ``forward`` returns (v_fg, v_bg, P) with P = sigmoid(polarity * BN(conv3x3(F))), shape (N, 1, h, w).
    ``polarity`` (a buffer, +1 or -1) is the recorded flip; ``classifier`` (with ``classes``) maps v_fg to tags.
    """

    def __init__(
        self, encoder: nn.Module, mean: tuple[float, ...], std: tuple[float, ...], spec: dict[str, Any]
    ) -> None:
        super().__init__(mean, std)
        self.encoder = encoder
        self.spec = dict(spec)
        channels = sum(encoder.feature_info.channels())
        self.head = nn.Conv2d(channels, 1, kernel_size=3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(1)
        classes = int(spec.get("classes", 0))
        self.classifier = nn.Linear(channels, classes) if classes else None
        self.register_buffer("polarity", torch.ones(()))

    @property
    def flipped(self) -> bool:
        """Whether the map was flipped (P is 1 - sigmoid of the disentangler's output)."""
        return bool(self.polarity < 0)

    def flip_polarity(self) -> None:
        """P becomes 1 - P from now on (sigmoid(-z) = 1 - sigmoid(z)): the foreground is the other side."""
        self.polarity.neg_()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """F: the last two stages at the resolution of the first of them, deeper stage first (N, C, h, w)."""
        shallow, deep = self.encoder(self.normalize(images))[-2:]
        deep = F.interpolate(deep, size=shallow.shape[-2:], mode="bilinear", align_corners=False)
        return torch.cat([deep, shallow], dim=1)

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        """The map before the sigmoid, polarity applied (N, 1, h, w)."""
        return self.polarity * self.bn(self.head(features))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.features(images)
        maps = torch.sigmoid(self.logits(features))
        v_fg, v_bg = pooled_features(features, maps)
        return v_fg, v_bg, maps


def pooled_features(features: torch.Tensor, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(v_fg, v_bg), each (N, C): the mean over the h * w pixels of P * F and of (1 - P) * F (divided by the
    number of pixels, as the authors do, not by the mass of P)."""
    n, c = features.shape[:2]
    flat = features.reshape(n, c, -1)
    weights = maps.reshape(n, 1, -1)
    return (flat * weights).mean(-1), (flat * (1 - weights)).mean(-1)


def build_ccam(
    encoder: str = OFFLINE_ENCODER,
    weights: str | None = "imagenet",
    classes: int = 0,
    init_from: nn.Module | None = None,
) -> CCAM:
    """A C-CAM model on a timm encoder's last two feature stages. ``weights``: ``imagenet`` (bundled offline for
    EfficientNet-Lite0..2, the hub otherwise), ``none``, or a backbone state-dict path; ``init_from``: a timm
    model (e.g. a tag classifier's ``net``) whose weights the encoder takes instead, matched by name."""
    import timm

    weights = None if weights in (None, "none", "None", "") or init_from is not None else weights

    def make(pretrained: bool) -> nn.Module:
        return timm.create_model(encoder, pretrained=pretrained, features_only=True, out_indices=(-2, -1))

    net = build_with_weights(make, encoder, weights)
    if init_from is not None:
        source = init_from.state_dict()
        missing = [k for k in net.state_dict() if k not in source]
        if missing:
            raise ConfigError(f"the initial model lacks encoder weights {missing[:3]} of '{encoder}'")
        net.load_state_dict({k: source[k] for k in net.state_dict()})
    mean, std = normalization(encoder)
    return CCAM(net, mean, std, {"encoder": encoder, "classes": classes})


# ---------------------------------------------------------------------------------------------------- losses


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, M) cosine similarities of the rows of ``a`` and ``b``, clamped to [0.0005, 0.9995] (authors'
    ``cos_simi``): negative similarities count as 0.0005, and the clamped pairs get no gradient."""
    sim = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    return sim.clamp(SIM_MIN, SIM_MAX)


def rank_weights(sim: torch.Tensor, alpha: float) -> torch.Tensor:
    """exp(-alpha * (rank - 1)) per entry, rank = 0-based position of the entry in its row sorted by decreasing
    similarity (authors' ``SimMaxLoss``). In a self-similarity matrix the image itself ranks 0 (weight
    exp(alpha)) and its most similar other image ranks 1 (weight 1). Ties are ranked in column order here (a
    stable sort); the authors' sort leaves their order unspecified."""
    order = sim.sort(dim=1, descending=True, stable=True).indices
    rank = order.argsort(dim=1, stable=True)
    return torch.exp(-(rank.float() - 1) * alpha)


def sim_max_loss(embedded: torch.Tensor, alpha: float = 0.25) -> torch.Tensor:
    """Pull term (authors' ``SimMaxLoss``): mean over all N x N pairs, the image with itself included, of
    -log(sim) * rank weight."""
    sim = cosine_similarity(embedded, embedded)
    return (-torch.log(sim) * rank_weights(sim, alpha)).mean()


def sim_min_loss(embedded_bg: torch.Tensor, embedded_fg: torch.Tensor) -> torch.Tensor:
    """Push term (authors' ``SimMinLoss``): mean over all N x N (background, foreground) pairs, the same image's
    included, of -log(1 - sim)."""
    return -torch.log(1 - cosine_similarity(embedded_bg, embedded_fg)).mean()


def ccam_losses(v_fg: torch.Tensor, v_bg: torch.Tensor, alpha: float = 0.25) -> dict[str, torch.Tensor]:
    """The three terms the authors add with weight 1: foregrounds together, backgrounds apart from
    foregrounds, backgrounds together."""
    return {
        "pull_fg": sim_max_loss(v_fg, alpha),
        "push": sim_min_loss(v_bg, v_fg),
        "pull_bg": sim_max_loss(v_bg, alpha),
    }


def border_activation(maps: torch.Tensor, border: float = 0.15) -> float:
    """Mean activation on the image border: the mean of the top, left, bottom and right strips' means (authors'
    ``check_positive``, whose strips are 4 pixels of a 28-pixel map; here ``border`` of the side, at least 1)."""
    h, w = maps.shape[-2:]
    bh, bw = max(1, round(border * h)), max(1, round(border * w))
    maps = maps.reshape(-1, h, w)
    strips = (maps[:, :bh, :], maps[:, :, :bw], maps[:, -bh:, :], maps[:, :, -bw:])
    return float(sum(s.mean() for s in strips) / 4)


# ---------------------------------------------------------------------------------------------------- training


@dataclass
class CCAMResult:
    flipped: bool  # the map was flipped after the first epoch
    border: float  # its mean border activation then (before the flip); nan with polarity 'off'
    history: list[dict[str, float]] = field(default_factory=list)
    images_per_s: float = 0.0


def _optimizer(model: CCAM, options: CCAMOptions) -> torch.optim.Optimizer:
    head = [*model.head.parameters(), *model.bn.parameters()]
    head += list(model.classifier.parameters()) if model.classifier is not None else []
    groups = [{"params": head, "lr": options.lr * options.head_lr}]
    if not options.frozen:
        groups.insert(0, {"params": list(model.encoder.parameters()), "lr": options.lr})
    if options.optimizer == "adam":
        return torch.optim.Adam(groups, lr=options.lr, weight_decay=options.weight_decay)
    return torch.optim.SGD(groups, lr=options.lr, momentum=options.momentum, weight_decay=options.weight_decay)


def _train_mode(model: CCAM, frozen: bool) -> None:
    model.train()
    if frozen:  # a frozen encoder keeps its BatchNorm statistics too
        model.encoder.eval()


def train_ccam(
    model: CCAM,
    split: PreparedSplit,
    options: CCAMOptions,
    out_path: str | Path,
    device: torch.device,
    seed: int = 0,
    progress: bool = True,
    multilabel: bool | None = None,
) -> CCAMResult:
    """Train ``model`` on the images of ``split`` (their tags too when ``options.class_weight`` > 0: one-hot
    cross-entropy, or with ``multilabel`` (None: when some image has several tags) a multi-label loss) for
    ``options.epochs`` epochs, saving ``out_path`` after every epoch; a rerun with the same setup resumes (or
    returns at once). After the first epoch (``polarity: auto``) a map that is high on the border is flipped."""
    out_path = Path(out_path)
    classes = int(model.spec.get("classes", 0))
    if options.class_weight > 0 and (model.classifier is None or not split.tag_classes):
        raise ConfigError("C-CAM class_weight > 0 needs image tags and a model built with their classes")
    multilabel = any(len(t) > 1 for t in split.labels) if multilabel is None else multilabel
    frozen = options.frozen
    model.encoder.requires_grad_(not frozen)
    ident = {"options": options.training(), "seed": seed, "spec": model.spec, "names": split.names}
    run_digest = digest(ident | ({"multilabel": multilabel} if options.class_weight > 0 else {}))
    generator = seed_everything(seed)
    model.to(device)
    optimizer = _optimizer(model, options)
    batches = len(split) // options.batch_size + (len(split) % options.batch_size > 1)
    total = max(options.epochs * batches, 1)
    poly = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: max(1 - step / total, 0.0) ** 0.9)
    crops = ClassifierConfig(crop_scale=options.crop_scale)
    start, history, border = 0, [], math.nan
    state = torch.load(out_path, map_location=device, weights_only=False) if out_path.is_file() else {}
    if state.get("digest") == run_digest:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        poly.load_state_dict(state["scheduler"])
        generator.set_state(state["generator"])
        start, history, border = state["epoch"], state["history"], state["border"]

    def save(epoch: int) -> None:
        state = {"ccam_spec": model.spec, "model": model.state_dict(), "digest": run_digest, "epoch": epoch}
        state |= {"optimizer": optimizer.state_dict(), "scheduler": poly.state_dict(), "history": history}
        state |= {"generator": generator.get_state(), "border": border, "flipped": model.flipped}
        with atomic_path(out_path) as tmp:
            torch.save(state, tmp)

    with progress_bar(progress) as bar:
        for epoch in range(start, options.epochs):
            _train_mode(model, frozen)
            order = torch.randperm(len(split), generator=generator).tolist()
            task = bar.add_task(f"C-CAM epoch {epoch + 1}/{options.epochs}", total=len(order))
            started, seen, sums, edge = time.perf_counter(), 0, dict.fromkeys(["loss"], 0.0), 0.0
            for begin in range(0, len(order), options.batch_size):
                index = order[begin : begin + options.batch_size]
                if len(index) == 1:
                    break  # one image has no pair to contrast, and BatchNorm cannot train on it
                images = augment(split.images[index].float().div_(255), options.augment, crops, generator)
                v_fg, v_bg, maps = model(images.to(device))
                terms = ccam_losses(v_fg.float(), v_bg.float(), options.alpha)
                if options.class_weight > 0:
                    target = tag_targets(split, index, classes, multilabel).to(device)
                    if multilabel or bool((target >= 0).any()):
                        logits = model.classifier(v_fg.float())
                        terms["class"] = options.class_weight * classification_loss(logits, target, multilabel, 0.0)
                loss = sum(terms.values())
                if not math.isfinite(loss.item()):
                    raise TrainingDivergedError(
                        f"the C-CAM loss became {loss.item()} in epoch {epoch + 1}: stopped before updating the "
                        "weights; the checkpoint keeps the last finished epoch (try a lower lr)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                poly.step()
                seen += len(index)
                for name, value in {"loss": loss, **terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.item() * len(index)
                edge += border_activation(maps.detach(), options.border) * len(index)
                bar.advance(task, len(index))
            bar.remove_task(task)
            seconds = time.perf_counter() - started
            row = {"epoch": epoch + 1, **{k: v / max(seen, 1) for k, v in sums.items()}}
            row |= {"border": edge / max(seen, 1), "seconds": round(seconds, 3)}
            row["images_per_s"] = seen / seconds if seconds else 0.0
            if epoch == 0 and options.polarity == "auto":
                # authors: the last batch of the first epoch decides; here the mean over the whole epoch
                border = row["border"]
                if border > 0.5:
                    model.flip_polarity()
            history.append(row)
            save(epoch + 1)
    _write_log(out_path.with_suffix(".csv"), history)
    model.eval()
    speeds = [r["images_per_s"] for r in history if r.get("images_per_s")]
    return CCAMResult(model.flipped, border, history, sum(speeds) / len(speeds) if speeds else 0.0)


def _write_log(path: Path, history: list[dict[str, float]]) -> None:
    if history:
        fields = list(dict.fromkeys(k for row in history for k in row))
        with open(path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fields)
            writer.writeheader()
            writer.writerows(history)


# ---------------------------------------------------------------------------------------------------- inference


@torch.no_grad()
def ccam_maps(
    model: CCAM,
    images: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    readout: str = "relu",
    device: torch.device | None = None,
    batch_size: int = 32,
    progress: bool = False,
) -> torch.Tensor:
    """Soft maps (N, S, S) float in [0, 1] on the CPU for uint8 images (N, 3, S, S): per scale (and flipped
    image) the map at the input size, summed, min-max normalised per image.

    ``readout`` ``relu``: relu of the polarity-corrected logit, as the authors (who sum relu(BN output), or
    relu(1 - BN output) for a flipped model, and divide by the maximum); ``sigmoid``: the probability P."""
    if readout not in ("relu", "sigmoid"):
        raise ConfigError(f"unknown C-CAM readout '{readout}' (relu, sigmoid)")
    device = device or next(model.parameters()).device
    model.eval()
    size = tuple(images.shape[-2:])
    out = torch.empty((len(images), *size), dtype=torch.float32)

    def read(x: torch.Tensor) -> torch.Tensor:
        z = model.logits(model.features(x))[:, 0]
        return upsample(z.relu() if readout == "relu" else torch.sigmoid(z), size)

    with progress_bar(progress) as bar:
        task = bar.add_task("C-CAM maps", total=len(images))
        for start in range(0, len(images), batch_size):
            x = images[start : start + batch_size].to(device).float().div_(255)
            total = torch.zeros((len(x), *size), device=device)
            for scale in scales:
                xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                total += read(xs)
                if flip:
                    total += read(xs.flip(-1)).flip(-1)
            out[start : start + len(x)] = scale_maps(total).cpu()
            bar.advance(task, len(x))
    return out
