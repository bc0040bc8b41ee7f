"""The ``cam`` supervision source: class activation maps of a tag classifier, for the images' own tags,
optionally averaged over input scales and a horizontal flip (batched on the model's device)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from weakseg.cams import build_cam, scale_maps, upsample
from weakseg.config import CamConfig
from weakseg.errors import ConfigError
from weakseg.progress import progress_bar


def resolve_layers(model: nn.Module, names: Sequence[str] | None) -> list[nn.Module] | None:
    """Target layers by module name (``net.blocks.5``), or None for the method's default (the last block)."""
    if not names:
        return None
    modules = dict(model.named_modules())
    missing = [n for n in names if n not in modules]
    if missing:
        near = [n for n in modules if n and n.count(".") <= 2][-8:]
        raise ConfigError(f"no layer named {missing} in the classifier; for example: {', '.join(near)}")
    return [modules[n] for n in names]


def _tag_targets(model: nn.Module, x: torch.Tensor, labels: Sequence[Sequence[int]]) -> list[list[int]]:
    """The tags to explain per image; an image without tags gets the classifier's top class."""
    if all(labels):
        return [list(t) for t in labels]
    with torch.no_grad():
        predicted = model(x).argmax(1).tolist()
    return [list(t) if t else [p] for t, p in zip(labels, predicted, strict=True)]


def _maps_for_tags(cam, x: torch.Tensor, tags: list[list[int]]) -> torch.Tensor:
    """Per image, the maximum over its tags' maps (one batched CAM call per tag position)."""
    out = None
    for k in range(max(len(t) for t in tags)):
        maps = cam(x, [t[k] if k < len(t) else t[0] for t in tags])
        out = maps if out is None else torch.maximum(out, maps)
    return out


def cam_maps(
    model: nn.Module,
    images: torch.Tensor,
    labels: Sequence[Sequence[int]],
    method: str = "gradcam",
    config: CamConfig | None = None,
    device: torch.device | None = None,
    progress: bool = False,
    negative: int | None = None,
) -> torch.Tensor:
    """Soft maps (N, S, S) float in [0, 1] on the CPU for uint8 images (N, 3, S, S) and their tags.

    Each configured scale (and the flipped image, with ``flip``) gives a map at the input size; their mean,
    min-max normalised per image, is the result. An image whose only tag (or, untagged, predicted class) is the
    ``negative`` class id (the ``none`` tag: no foreground) gets an all-zero map.
    """
    config = config or CamConfig()
    device = device or next(model.parameters()).device
    model.eval()
    size = tuple(images.shape[-2:])
    out = torch.empty((len(images), *size), dtype=torch.float32)
    with (
        build_cam(method, model, resolve_layers(model, config.layers)) as cam,
        progress_bar(progress) as bar,
    ):
        task = bar.add_task(f"{method} maps", total=len(images))
        for start in range(0, len(images), config.batch_size):
            stop = min(start + config.batch_size, len(images))
            x = images[start:stop].to(device).float().div_(255)
            tags = _tag_targets(model, x, labels[start:stop])
            keep = [i for i, t in enumerate(tags) if negative is None or t != [negative]]
            if len(keep) < len(tags):  # negatives: no map to compute
                x, tags = x[keep], [tags[i] for i in keep]
            total = torch.zeros((len(keep), *size), device=device)
            for scale in config.scales if keep else []:
                xs = x if scale == 1 else F.interpolate(x, scale_factor=scale, mode="bilinear", align_corners=False)
                total += upsample(_maps_for_tags(cam, xs, tags), size)
                if config.flip:
                    total += upsample(_maps_for_tags(cam, xs.flip(-1), tags).flip(-1), size)
            out[start:stop] = 0.0
            if keep:
                out[[start + i for i in keep]] = scale_maps(total).cpu()
            bar.advance(task, stop - start)
    return out


def to_uint8(maps: torch.Tensor) -> torch.Tensor:
    """[0, 1] maps as uint8 (what the label store keeps)."""
    return (maps.clamp(0, 1) * 255).round().to(torch.uint8)
