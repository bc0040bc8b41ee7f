"""Method ``vit``: self-attention of a self-supervised ViT -> refinement -> pseudo-labels -> segmenter. No labels.

A timm ViT (default DINO ViT-S/16, ``vit_small_patch16_224.dino``, built with ``dynamic_img_size``) looks at every
training image; :class:`~weakseg.cams.vit_attention.ViTAttention` turns its attention into a foreground map, the
``method.refine`` pipeline (the study's: ``"smooth:sigma=2 | otsu | open | lcc"``) into pseudo-masks, and the
stages are those of the tags methods (:func:`weakseg.methods.tags.pseudo_stages`): ``pseudo``, ``dev`` with
``method.dev``, ``final``. No label of any kind is consumed (the run's ``labels.json`` counts none; the
validation split's pseudo-masks come from the attention too), except the dev masks with ``method.dev``.

Settings in ``method.options`` (:class:`ViTOptions`): ``model``, ``weights`` (``pretrained``: timm's weights of
``model`` from the Hugging Face hub; a local file; or null: random, a smoke test only), ``blocks``, ``fusion``,
``batch_size``. No ViT weights can be installed offline, so this method's quality is unmeasured here.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from weakseg.cams.vit_attention import ViTAttention
from weakseg.config import MethodConfig
from weakseg.errors import ConfigError, WeightsUnavailableError
from weakseg.identity import CODE_VERSIONS, digest, file_digest
from weakseg.methods.base import RunContext, StageResult, register_method
from weakseg.methods.tags import pseudo_stages, require_foreground_background, stored_pseudo_masks
from weakseg.models.encoders import create_timm_pretrained, load_weights_file, normalization
from weakseg.models.segmenter import Normalized
from weakseg.progress import progress_bar
from weakseg.refine import parse_pipeline
from weakseg.sources.cam import to_uint8
from weakseg.sources.store import ArtifactStore

DESCRIPTION = (
    "ViT self-attention (DINO ViT-S/16) -> refine -> pseudo-labels -> segmenter; no labels; quality unmeasured "
    "offline (no ViT weights installable here)"
)
PRETRAINED = ("pretrained", "imagenet")
RANDOM = (None, "none", "None", "null", "")


class ViTOptions(BaseModel):
    """``method.options`` of method ``vit``."""

    model_config = ConfigDict(extra="forbid")

    model: str = Field("vit_small_patch16_224.dino", description="timm ViT name (with its pretrained tag)")
    weights: str | None = Field(
        "pretrained", description="'pretrained' (timm's, from the hub), a weights file, or null (random: smoke test)"
    )
    blocks: list[int] | None = Field(None, description="0-based blocks; None: 1, 3, ..., 11 (rollout: all)")
    fusion: Literal["max", "mean", "rollout"] = "max"
    batch_size: int = Field(32, ge=1)


def vit_options(config: MethodConfig) -> ViTOptions:
    """The ``vit`` settings from ``method.options``; ConfigError naming the bad key."""
    try:
        return ViTOptions.model_validate(config.options)
    except ValidationError as err:
        problems = "; ".join(f"method.options.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        raise ConfigError(f"invalid vit settings: {problems}") from err


class NormalizedViT(Normalized):
    """A timm ViT taking RGB in [0, 1] (normalised inside, with its pretrained weights' mean and std)."""

    def __init__(self, net: nn.Module, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__(mean, std)
        self.net = net

    def forward_features(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.forward_features(self.normalize(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(images))


def build_vit(name: str, weights: str | None, seed: int = 0) -> NormalizedViT:
    """The ViT ``name`` (no head, any input size) with ``weights``: ``pretrained`` (alias ``imagenet``): timm's
    from the hub (a one-line WeightsUnavailableError offline); a file path; None: random (seeded), with a warning."""
    import timm

    if not timm.is_model(name):
        raise ConfigError(f"unknown timm model '{name}' (method.options.model)")

    def make(pretrained: bool) -> nn.Module:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, dynamic_img_size=True)

    weights = None if weights in RANDOM else weights
    if weights in PRETRAINED:
        try:
            net = create_timm_pretrained(lambda: make(True), name)
        except WeightsUnavailableError as err:
            raise WeightsUnavailableError(
                f"pretrained weights of '{name}' come from the Hugging Face hub, which failed or is unreachable; "
                "set method.options.weights to a local weights file, or to null (random weights: a smoke test "
                "only)"
            ) from err
    else:
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            net = make(False)
        if weights is None:
            warnings.warn(
                f"RANDOM WEIGHTS: the ViT '{name}' is randomly initialised (method.options.weights: null); its "
                "attention maps and pseudo-labels say nothing about the method's quality (a smoke test only)",
                stacklevel=2,
            )
        else:
            load_weights_file(net, weights)
    mean, std = normalization(name)
    return NormalizedViT(net, mean, std)


def vit_maps(
    model: nn.Module,
    images: torch.Tensor,
    options: ViTOptions,
    device: torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Attention maps (N, S, S) float in [0, 1] on the CPU for uint8 images (N, 3, S, S)."""
    device = device or next(model.parameters()).device
    model.to(device).eval()
    out = torch.empty((len(images), *images.shape[-2:]), dtype=torch.float32)
    try:
        attention = ViTAttention(model, options.blocks, options.fusion)
    except ValueError as err:  # blocks out of range, attention it cannot read: the settings' fault
        raise ConfigError(f"method.options of vit: {err}") from err
    with (
        attention,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task("ViT attention maps", total=len(images))
        for start in range(0, len(images), options.batch_size):
            stop = min(start + options.batch_size, len(images))
            out[start:stop] = attention(images[start:stop].to(device).float().div_(255)).cpu()
            bar.advance(task, stop - start)
    return out


def maps_ident(ctx: RunContext, options: ViTOptions) -> dict:
    """What the training split's attention maps depend on."""
    split = ctx.train_full
    weights = options.weights
    if weights not in (*RANDOM, *PRETRAINED) and Path(weights).is_file():
        weights = {"file": file_digest(weights)}
    return {
        "vit": options.model_dump(exclude={"batch_size", "weights"}) | {"weights": weights},
        "seed": ctx.config.seed if weights in RANDOM else None,  # pretrained maps are the same for every seed
        "dataset": ctx.config.dataset.model_dump(exclude={"val_fraction"}),
        "names": digest(split.names),
        "files": split.fingerprint,
        "code": CODE_VERSIONS["cams"],
    }


@register_method("vit", primary=lambda config: "tags", description=DESCRIPTION)
def vit_to_segmenter(ctx: RunContext) -> list[StageResult]:
    """ViT attention -> refine -> pseudo-labels -> segmenter (the validation images come from every training
    image, ``primary`` tags being every image's; no tag is read)."""
    require_foreground_background(ctx, "pseudo-labels from ViT attention")
    options = vit_options(ctx.config.method)
    store = ArtifactStore(ctx.shared_dir)
    split = ctx.train_full
    ident = maps_ident(ctx, options)

    def compute_maps() -> torch.Tensor:
        model = build_vit(options.model, options.weights, ctx.config.seed)
        return to_uint8(vit_maps(model, split.images, options, ctx.device, ctx.progress))

    soft = store.tensor("vit", ident, compute_maps)
    masks, images_per_s = stored_pseudo_masks(ctx, soft, ident, negatives=False)
    info = {"refine_images_per_s": images_per_s, "vit_random_weights": int(options.weights in RANDOM)}
    key = {"pseudo": digest({"method": "vit", "maps": ident, "refine": str(parse_pipeline(ctx.config.method.refine))})}
    return pseudo_stages(ctx, soft, masks, info, key, ["vit_random_weights"], soft_name="attention")
