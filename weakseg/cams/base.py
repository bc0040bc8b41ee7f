"""Shared machinery of the class activation map methods: hooks, target resolution, the fast head-only
gradient path, multi-layer fusion, normalisation and upsampling (batched tensor ops on the model's device).

Two ways to get the target-layer activations ``A`` and gradients ``dY_c/dA``:

* fast path (timm classifiers whose target layers output exactly what ``model.forward_features`` returns):
  the backbone runs once under ``torch.no_grad``; the gradient comes from re-running only
  ``model.forward_head`` on ``A`` (global pool + classifier) and ``torch.autograd.grad``. No backward pass
  through the backbone; the maps are the same as with a full backward.
* general path (any model, any target layers): one forward with autograd, forward hooks record each target
  layer's output (a snapshot of the activation and its autograd gradient edge), and ``torch.autograd.grad``
  asks for the gradients at those edges only (no parameter gradients, ``.grad`` fields untouched).

Gradient edges give the gradient with respect to the layer's output as the layer returned it, even when a
later in-place op (``ReLU(inplace=True)``) modifies that tensor: what ``tensor.register_hook`` gives too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.graph import GradientEdge, get_gradient_edge

from weakseg.cams.layers import default_target_layers

Targets = Sequence[int] | torch.Tensor | int | None

EPS = 1e-7  # the epsilon of pytorch-grad-cam's scale_cam_image


def scale_maps(maps: torch.Tensor) -> torch.Tensor:
    """Min-max normalise each map over its last two dims to [0, 1] (``x - min`` over ``1e-7 + max``)."""
    maps = maps - maps.amin(dim=(-2, -1), keepdim=True)
    return maps / (EPS + maps.amax(dim=(-2, -1), keepdim=True))


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of (N, h, w) or (N, C, h, w) maps to ``size`` (half-pixel centres, like cv2.resize)."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    squeeze = maps.ndim == 3
    out = F.interpolate(maps[:, None] if squeeze else maps, size=size, mode="bilinear", align_corners=False)
    return out[:, 0] if squeeze else out


def resolve_targets(targets: Targets, logits: torch.Tensor) -> torch.Tensor:
    """Class ids as a (N,) long tensor on the logits' device; ``None`` takes each image's argmax class."""
    n = logits.shape[0]
    if targets is None:
        return logits.detach().argmax(dim=1)
    ids = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if ids.numel() == 1 and n > 1:
        ids = ids.expand(n)
    if ids.numel() != n:
        raise ValueError(f"got {ids.numel()} targets for {n} images")
    if bool(((ids < 0) | (ids >= logits.shape[1])).any()):
        raise ValueError(f"target class ids must lie in [0, {logits.shape[1]})")
    return ids


def has_timm_head(model: nn.Module) -> bool:
    """Whether the model splits into ``forward_features`` + ``forward_head`` (timm classifiers)."""
    return callable(getattr(model, "forward_features", None)) and callable(getattr(model, "forward_head", None))


@dataclass
class _Capture:
    output: torch.Tensor  # the object the layer returned (identity test for the fast path)
    version: int  # its version counter then (an in-place op afterwards changes it)
    activation: torch.Tensor | None = None
    edge: GradientEdge | None = None


class BaseCAM:
    """Base of all methods: ``with Method(model, target_layers) as cam: maps = cam(images, targets)``.

    ``maps`` is a (N, H, W) float tensor on the model's device, each map min-max normalised to [0, 1] and
    bilinearly upsampled to the input size. Several target layers are fused like pytorch-grad-cam does:
    per-layer ReLU, normalise, upsample, then the mean, normalised again. The model's train/eval mode is left
    alone: call ``model.eval()`` first. Set ``fast=False`` to always use the general full-backward path.
    After a call, ``logits`` and ``targets`` hold the model's outputs and the class ids explained.
    """

    supports_fast_path = True  # the map needs only A and dY/dA at the target layers
    needs_activations = True  # general path: keep a snapshot of the target-layer outputs
    requires_target_layers = True

    def __init__(self, model: nn.Module, target_layers: Sequence[nn.Module] | None = None, *, fast: bool = True):
        self.model = model
        self.target_layers = default_target_layers(model) if target_layers is None else list(target_layers)
        if not self.target_layers and self.requires_target_layers:
            raise ValueError("no target layers given")
        self.fast = fast
        self.device = next(model.parameters()).device
        self.logits: torch.Tensor | None = None
        self.targets: torch.Tensor | None = None
        self._fast_ok: bool | None = None  # learnt on the first call: do the target layers output the features?
        self._mode: str | None = None  # None: hooks idle; "probe": identity only; "grad": activation + edge
        self._captures: list[_Capture | None] = []
        self._released = False
        self._handles = [layer.register_forward_hook(self._make_hook(i)) for i, layer in enumerate(self.target_layers)]

    # -- hooks ---------------------------------------------------------------------------------------------
    def _make_hook(self, index: int):
        def hook(module: nn.Module, inputs: Any, output: Any) -> None:
            if self._mode is None:
                return
            if not isinstance(output, torch.Tensor):
                raise TypeError(f"target layer {type(module).__name__} returned {type(output).__name__}")
            capture = _Capture(output, output._version)
            if self._mode == "grad":
                if output.requires_grad:
                    capture.edge = get_gradient_edge(output)
                if self.needs_activations:
                    capture.activation = output.detach().clone()
            self._captures[index] = capture

        return hook

    def _record(self, mode: str) -> None:
        self._mode = mode
        self._captures = [None] * len(self.target_layers)

    def _stop(self) -> list[_Capture | None]:
        self._mode = None
        captures, self._captures = self._captures, []
        return captures

    def release(self) -> None:
        """Remove the hooks from the model (done on leaving the ``with`` block)."""
        for handle in getattr(self, "_handles", []):
            handle.remove()
        self._handles = []
        self._released = True

    def __enter__(self) -> BaseCAM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()

    # -- entry point ---------------------------------------------------------------------------------------
    def __call__(self, images: torch.Tensor, targets: Targets = None) -> torch.Tensor:
        """Maps (N, H, W) in [0, 1] for ``images`` (N, 3, H, W); ``targets``: class ids, or None for argmax."""
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
        if self._released:
            raise RuntimeError("this CAM was released; create a new one")
        x = images.to(self.device)
        with torch.no_grad():
            return self._forward(x, targets).detach()

    def _forward(self, x: torch.Tensor, targets: Targets) -> torch.Tensor:
        if self.fast and self.supports_fast_path and self._fast_ok is not False and has_timm_head(self.model):
            maps = self._forward_fast(x, targets)
            if maps is not None:
                return maps
        activations, gradients, _ = self._forward_backward(x, targets)
        return self._compose(activations, gradients, tuple(x.shape[-2:]))

    # -- fast path -----------------------------------------------------------------------------------------
    def _final_features(self, x: torch.Tensor) -> torch.Tensor | None:
        """``model.forward_features(x)`` without autograd, or None when a target layer's output isn't it."""
        self._record("probe")
        try:
            with torch.no_grad():
                feats = self.model.forward_features(x)
        finally:
            captures = self._stop()
        ok = (
            isinstance(feats, torch.Tensor)
            and feats.ndim == 4
            and all(c is not None and c.output is feats and c.version == feats._version for c in captures)
        )
        self._fast_ok = ok
        return feats if ok else None

    def _forward_fast(self, x: torch.Tensor, targets: Targets) -> torch.Tensor | None:
        feats = self._final_features(x)
        if feats is None:
            return None
        activations = feats.detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model.forward_head(activations)
            self._set_outputs(logits, targets)
            score = logits.gather(1, self.targets[:, None]).sum()
            (gradient,) = torch.autograd.grad(score, activations)
        n = len(self.target_layers)
        return self._compose([activations.detach()] * n, [gradient] * n, tuple(x.shape[-2:]))

    # -- general path --------------------------------------------------------------------------------------
    def _forward_backward(
        self, x: torch.Tensor, targets: Targets, input_gradient: bool = False
    ) -> tuple[list[torch.Tensor | None], list[torch.Tensor], torch.Tensor | None]:
        """One forward with autograd; gradients of the summed target logits at each target layer's output
        (and at the input when ``input_gradient``). Returns (activations, gradients, input gradient)."""
        x_in = x.detach().requires_grad_(True)  # so a graph exists even for a frozen model
        self._record("grad")
        try:
            with torch.enable_grad():
                logits = self.model(x_in)
        finally:
            captures = self._stop()
        if not isinstance(logits, torch.Tensor) or logits.ndim != 2:
            raise ValueError("the model must return (N, num_classes) logits")
        for layer, capture in zip(self.target_layers, captures, strict=True):
            if capture is None:
                raise RuntimeError(f"target layer {type(layer).__name__} did not run in the forward pass")
            if capture.edge is None:
                raise RuntimeError(f"the output of target layer {type(layer).__name__} does not require grad")
        self._set_outputs(logits, targets)
        inputs: list[Any] = [c.edge for c in captures] + ([x_in] if input_gradient else [])
        if not inputs:
            return [], [], None
        with torch.enable_grad():
            score = logits.gather(1, self.targets[:, None]).sum()
            grads = torch.autograd.grad(score, inputs, allow_unused=True)
        gradients = [
            g if g is not None else torch.zeros_like(c.output)
            for g, c in zip(grads[: len(captures)], captures, strict=True)
        ]
        input_grad = None
        if input_gradient:
            input_grad = grads[-1] if grads[-1] is not None else torch.zeros_like(x_in)
        return [c.activation for c in captures], gradients, input_grad

    def _set_outputs(self, logits: torch.Tensor, targets: Targets) -> None:
        self.logits = logits.detach()
        self.targets = resolve_targets(targets, self.logits)

    # -- maps ----------------------------------------------------------------------------------------------
    def cam_weights(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Per-channel weights (N, C) from activations and gradients (N, C, h, w)."""
        raise NotImplementedError

    def cam_image(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """Raw map (N, h, w) for one layer: channel-weighted sum of the activations."""
        weights = self.cam_weights(activations, gradients)
        return torch.einsum("nc,nchw->nhw", weights, activations)

    def _compose(
        self, activations: list[torch.Tensor], gradients: list[torch.Tensor], size: tuple[int, int]
    ) -> torch.Tensor:
        """Raw map per target layer, then :func:`fuse_maps`."""
        cams = []
        for a, g in zip(activations, gradients, strict=True):
            if a.ndim != 4:
                raise ValueError(f"target layers must output (N, C, h, w) maps, got shape {tuple(a.shape)}")
            cams.append(self.cam_image(a.float(), g.float()))
        return fuse_maps(cams, size)


def fuse_maps(cams: Sequence[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """pytorch-grad-cam's per-layer scaling and aggregation, batched: each raw (N, h, w) map is ReLU'd,
    normalised and upsampled to ``size``; the mean over layers is normalised again."""
    fused = None
    for cam in cams:
        cam = upsample(scale_maps(cam.clamp_min(0)), size)
        fused = cam if fused is None else fused + cam
    return scale_maps(fused / len(cams))
