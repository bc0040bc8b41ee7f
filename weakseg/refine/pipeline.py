"""Parse and run a refinement pipeline: ``"smooth:sigma=2 | otsu | grabcut:iters=5 | lcc"``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from weakseg.errors import ConfigError
from weakseg.refine.ops import DenseCRF, RefineOp, RefineState, class_probabilities, get_op

__all__ = ["PipelineSpec", "RefinePipeline", "parse_pipeline", "parse_step"]

PipelineSpec = Any  # str | Sequence[str | Mapping | RefineOp] | RefinePipeline | None


@dataclass(frozen=True)
class RefinePipeline:
    """An ordered, validated sequence of steps. Equal pipelines compare (and hash) equal.

    ``str(p)`` is canonical (every parameter spelled out, ``none`` when empty) and parses back to an equal
    pipeline. Calling it runs the steps; if no step binarised, the mask is soft >= 0.5.
    """

    steps: tuple[RefineOp, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))
        has_mask = False
        for step in self.steps:
            if not isinstance(step, RefineOp):
                raise ConfigError(f"pipeline steps must be refinement ops, got {step!r}")
            if step.needs_mask and not has_mask:
                raise ConfigError(f"step '{step.name}' needs a mask: put threshold or otsu before it")
            has_mask = has_mask or step.binarises

    def __str__(self) -> str:
        return " | ".join(str(step) for step in self.steps) or "none"

    def __len__(self) -> int:
        return len(self.steps)

    @property
    def needs_image(self) -> bool:
        """Whether some step reads the RGB image (grabcut, crf)."""
        return any(step.needs_image for step in self.steps)

    @property
    def is_cpu_heavy(self) -> bool:
        """Whether some step is expensive enough to be worth worker processes (grabcut, crf)."""
        return any(step.cpu_heavy for step in self.steps)

    def run(self, image: np.ndarray | None, soft: np.ndarray) -> RefineState:
        """Validate the inputs and run every step; returns the final state (mask None if nothing binarised)."""
        soft = _check_soft(soft)
        state = RefineState(image=_check_image(image, soft.shape, self.needs_image), soft=soft)
        for step in self.steps:
            state = step(state)
        return state

    def __call__(self, image: np.ndarray | None, soft: np.ndarray) -> np.ndarray:
        """Refine one soft map into a uint8 0/1 mask of the same shape."""
        state = self.run(image, soft)
        if state.mask is None:
            return (state.soft >= 0.5).astype(np.uint8)
        return state.mask

    def label_map(self, image: np.ndarray | None, maps: np.ndarray) -> np.ndarray:
        """Labels uint8 (H, W) from several soft maps (K, H, W), one per tag of the image: 0 background, k the
        k-th map's class.

        Without a ``crf`` step the foreground is the pipeline run on the strongest map, and each foreground pixel
        takes the class of its strongest map. With one, the steps before it run on every map (the background
        threshold is the one they find on the strongest map), a (K + 1)-label dense CRF labels the pixels
        (:func:`~weakseg.refine.ops.class_probabilities`), the steps after it refine the CRF's foreground, and a
        pixel they add takes the class of its strongest map. With one map this equals calling the pipeline."""
        maps = np.stack([_check_soft(m) for m in maps]) if len(maps) else np.empty((0,))
        if maps.ndim != 3:
            raise ConfigError(f"label_map needs (K, H, W) maps with K >= 1, got shape {maps.shape}")
        strongest = maps.argmax(0) + 1
        at = next((i for i, step in enumerate(self.steps) if isinstance(step, DenseCRF)), None)
        if at is None:
            foreground = self(image, maps.max(0)).astype(bool)
            return np.where(foreground, strongest, 0).astype(np.uint8)
        image = _check_image(image, maps.shape[1:], required=True)
        before = RefinePipeline(self.steps[:at])
        state = before.run(image, maps.max(0))
        softs = np.stack([before.run(image, m).soft for m in maps])
        crf: DenseCRF = self.steps[at]  # type: ignore[assignment]
        labels = crf.infer(image, class_probabilities(softs, state.threshold, crf.confidence))
        state = RefineState(image, state.soft, (labels > 0).astype(np.uint8), state.threshold)
        for step in self.steps[at + 1 :]:
            state = step(state)
        foreground = state.mask.astype(bool)
        return np.where(foreground, np.where(labels > 0, labels, strongest), 0).astype(np.uint8)


def _check_soft(soft: Any) -> np.ndarray:
    """float32 (H, W), finite; values are clipped to [0, 1] (bicubic upsampling overshoots slightly)."""
    soft = np.asarray(soft)
    if soft.ndim != 2 or soft.size == 0:
        raise ConfigError(f"soft map must be a non-empty (H, W) array, got shape {soft.shape}")
    if not np.issubdtype(soft.dtype, np.number) or np.issubdtype(soft.dtype, np.complexfloating):
        raise ConfigError(f"soft map must be real-valued, got dtype {soft.dtype}")
    soft = soft.astype(np.float32, copy=False)
    if not np.isfinite(soft).all():
        raise ConfigError("soft map contains NaN or infinite values")
    return np.clip(soft, 0.0, 1.0)


def _check_image(image: Any, soft_shape: tuple[int, ...], required: bool) -> np.ndarray | None:
    """RGB uint8 (H, W, 3) matching the soft map; a grey (H, W) image is repeated to 3 channels."""
    if image is None:
        if required:
            raise ConfigError("this refinement pipeline needs the RGB image (grabcut/crf), got None")
        return None
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ConfigError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ConfigError(f"image must be (H, W, 3) RGB, got shape {image.shape}")
    if image.shape[:2] != tuple(soft_shape):
        raise ConfigError(f"image {image.shape[:2]} and soft map {tuple(soft_shape)} differ in size")
    return image


def parse_step(text: str) -> RefineOp:
    """``"name"`` or ``"name:value,key=value"`` (positional values first, in parameter order)."""
    name, _, rest = str(text).partition(":")
    name = name.strip()
    if not name:
        raise ConfigError(f"empty refinement step in {text!r}")
    cls = get_op(name)
    args: list[str] = []
    kwargs: dict[str, str] = {}
    for token in (t.strip() for t in rest.split(",")):
        if not token:
            continue
        if "=" in token:
            key, _, value = token.partition("=")
            key = key.strip()
            if key in kwargs:
                raise ConfigError(f"step '{cls.name}': parameter '{key}' given twice")
            kwargs[key] = value.strip()
        elif kwargs:
            raise ConfigError(f"step '{cls.name}': positional value {token!r} after key=value ones")
        else:
            args.append(token)
    return cls.from_args(args, kwargs)


def _step_from_item(item: Any) -> list[RefineOp]:
    if isinstance(item, RefineOp):
        return [item]
    if isinstance(item, str):
        return list(parse_pipeline(item).steps)
    if isinstance(item, Mapping):
        if len(item) != 1:
            raise ConfigError(f"a refinement step mapping has exactly one key (the op name), got {dict(item)!r}")
        ((name, params),) = item.items()
        cls = get_op(str(name))
        if params is None:
            return [cls.from_args()]
        if isinstance(params, Mapping):
            return [cls.from_args((), params)]
        if isinstance(params, list | tuple):
            return [cls.from_args(params)]
        return [cls.from_args((params,))]
    raise ConfigError(f"a refinement step is a string or a one-key mapping, got {item!r}")


def parse_pipeline(spec: PipelineSpec) -> RefinePipeline:
    """Build a validated pipeline.

    ``spec``: a string of ``|``-separated steps; a list (from YAML) of such strings or one-key mappings
    (``{grabcut: {iters: 5}}``, ``{threshold: 0.4}``, ``{lcc: null}``); a RefinePipeline (returned as is); or
    None / ``""`` / ``"none"`` for the empty pipeline. Raises ConfigError on unknown ops or parameters.
    """
    if spec is None or isinstance(spec, RefinePipeline):
        return spec if spec is not None else RefinePipeline()
    if isinstance(spec, str):
        text = spec.strip()
        if text.lower() in ("", "none"):
            return RefinePipeline()
        parts = [part.strip() for part in text.split("|")]
        if any(not part for part in parts):
            raise ConfigError(f"empty step in refinement pipeline {spec!r}")
        return RefinePipeline(tuple(parse_step(part) for part in parts))
    if isinstance(spec, Sequence | np.ndarray) and not isinstance(spec, bytes):
        return RefinePipeline(tuple(step for item in spec for step in _step_from_item(item)))
    if isinstance(spec, Mapping | RefineOp):
        return RefinePipeline(tuple(_step_from_item(spec)))
    raise ConfigError(f"a refinement pipeline is a string or a list of steps, got {type(spec).__name__}")
