"""Refinement steps: small, named, parameterised operations on a :class:`RefineState`.

Each op is a frozen dataclass registered by name (``@register_op("otsu")``); its fields are its parameters, all
with defaults. ``op(state)`` returns a new state and never modifies the input arrays. Every op that produces a
mask produces a uint8 0/1 array of the soft map's shape.

Light on purpose: numpy, OpenCV, scikit-image, SciPy (pydensecrf only inside the ``crf`` op), never torch, so
worker processes start fast.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, ClassVar, TypeVar

import cv2
import numpy as np

from weakseg.errors import ConfigError
from weakseg.registry import Registry

__all__ = [
    "OPS",
    "RefineOp",
    "RefineState",
    "class_probabilities",
    "crf_foreground_prob",
    "get_op",
    "list_ops",
    "make_op",
    "register_op",
]

# OpenCV's GrabCut fits 5-component GMMs with k-means, which needs at least 5 samples per side.
_GMM_COMPONENTS = 5
_MORPH_OPS = {"open": cv2.MORPH_OPEN, "close": cv2.MORPH_CLOSE, "dilate": cv2.MORPH_DILATE, "erode": cv2.MORPH_ERODE}


@dataclass
class RefineState:
    """What a step works on.

    ``image``: RGB uint8 (H, W, 3), or None when no step needs it. ``soft``: float32 (H, W) in [0, 1], the
    foreground evidence. ``mask``: uint8 (H, W) 0/1, None until a binarising step ran. ``threshold``: the last
    binarisation threshold (``otsu`` records the value it found; the ``crf`` unary is centred on it).
    """

    image: np.ndarray | None
    soft: np.ndarray
    mask: np.ndarray | None = None
    threshold: float = 0.5


@dataclass(frozen=True)
class RefineOp:
    """Base of all steps. Subclasses are frozen dataclasses whose fields (all defaulted) are the parameters."""

    name: ClassVar[str] = ""
    binarises: ClassVar[bool] = False  # produces a mask without needing one
    needs_mask: ClassVar[bool] = False  # works on state.mask (a binarising step must come first)
    needs_image: ClassVar[bool] = False  # reads state.image
    cpu_heavy: ClassVar[bool] = False  # worth running in worker processes

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Validate parameter values; raise ConfigError."""

    def __call__(self, state: RefineState) -> RefineState:
        raise NotImplementedError

    @classmethod
    def param_names(cls) -> list[str]:
        return [f.name for f in fields(cls)]

    @classmethod
    def from_args(cls, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> RefineOp:
        """Build from positional values (in parameter order) and keyword values; strings are parsed per type."""
        kwargs = dict(kwargs or {})
        specs = {f.name: f for f in fields(cls)}
        names = list(specs)
        if len(args) > len(names):
            raise ConfigError(
                f"step '{cls.name}' takes at most {len(names)} positional value(s) ({', '.join(names) or 'none'}), "
                f"got {len(args)}"
            )
        values: dict[str, Any] = {}
        for name, value in zip(names, args, strict=False):
            values[name] = value
        for key, value in kwargs.items():
            key = str(key).strip()
            if key not in specs:
                raise ConfigError(
                    f"step '{cls.name}' has no parameter '{key}'; its parameters: {', '.join(names) or '(none)'}"
                )
            if key in values:
                raise ConfigError(f"step '{cls.name}': parameter '{key}' given twice")
            values[key] = value
        coerced = {k: _coerce(v, type(specs[k].default), cls.name, k) for k, v in values.items()}
        return cls(**coerced)

    def __str__(self) -> str:
        params = ",".join(f"{f.name}={_format(getattr(self, f.name))}" for f in fields(self))
        return f"{self.name}:{params}" if params else self.name

    def _fail(self, problem: str) -> ConfigError:
        return ConfigError(f"step '{self.name}': {problem} (got '{self}')")

    def _require_mask(self, state: RefineState) -> np.ndarray:
        if state.mask is None:
            raise ConfigError(f"step '{self.name}' needs a mask: put threshold or otsu before it")
        return state.mask


OPS: Registry[type[RefineOp]] = Registry("refinement step", normalize=lambda name: str(name).strip().lower())
T = TypeVar("T", bound=type[RefineOp])


def register_op(name: str) -> Callable[[T], T]:
    """Class decorator: make an op available to pipelines under ``name`` (and set its ``name``)."""

    def decorate(cls: T) -> T:
        OPS.add(name, cls)
        cls.name = name
        return cls

    return decorate


def list_ops(pattern: str = "*") -> list[str]:
    """Names of the registered ops matching a shell-style pattern, sorted."""
    return OPS.names(pattern)


def get_op(name: str) -> type[RefineOp]:
    """The op class registered under ``name`` (case and surrounding spaces ignored); ConfigError listing the known
    names otherwise."""
    if str(name) not in OPS:
        raise ConfigError(f"unknown refinement step '{name}'; known steps: {', '.join(list_ops())}")
    return OPS.get(str(name))


def make_op(name: str, *args: Any, **kwargs: Any) -> RefineOp:
    """``make_op("grabcut", iters=3)``: build a validated op by name."""
    return get_op(name).from_args(args, kwargs)


# ---------------------------------------------------------------- parameter values


def _coerce(value: Any, kind: type, op: str, param: str) -> Any:
    """Convert ``value`` (a string from the spec, or a YAML scalar) to the parameter's type."""
    where = f"step '{op}': parameter '{param}'"
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} expects a string, got {value!r}")
        return value.strip()
    if isinstance(value, str):
        text = value.strip()
        if kind is bool:
            lowered = text.lower()
            if lowered in ("true", "yes", "on", "1"):
                return True
            if lowered in ("false", "no", "off", "0"):
                return False
            raise ConfigError(f"{where} expects true or false, got {value!r}")
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ConfigError(f"{where} expects a number, got {value!r}") from None
    if kind is bool:
        if isinstance(value, bool | np.bool_) or value in (0, 1):
            return bool(value)
        raise ConfigError(f"{where} expects true or false, got {value!r}")
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.integer | np.floating):
        raise ConfigError(f"{where} expects a number, got {value!r}")
    if not math.isfinite(float(value)):
        raise ConfigError(f"{where} must be finite, got {value!r}")
    if kind is int:
        if float(value) != int(value):
            raise ConfigError(f"{where} expects an integer, got {value!r}")
        return int(value)
    return float(value)


def _format(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return str(value)


# ---------------------------------------------------------------- binarisation


@register_op("threshold")
@dataclass(frozen=True)
class Threshold(RefineOp):
    """mask = soft >= t; records t as the threshold. ``threshold:0.4`` is ``threshold:t=0.4``."""

    t: float = 0.5
    binarises: ClassVar[bool] = True

    def check(self) -> None:
        if not 0.0 <= self.t <= 1.0:
            raise self._fail("t must be in [0, 1]")

    def __call__(self, state: RefineState) -> RefineState:
        return replace(state, mask=(state.soft >= self.t).astype(np.uint8), threshold=self.t)


@register_op("otsu")
@dataclass(frozen=True)
class Otsu(RefineOp):
    """mask = soft >= Otsu's threshold of the soft map (skimage, 256 bins); records the threshold.

    A constant map has no contrast to split: it is binarised at 0.5 (all foreground if its value is >= 0.5, all
    background otherwise) and 0.5 is recorded.
    """

    binarises: ClassVar[bool] = True

    def __call__(self, state: RefineState) -> RefineState:
        from skimage.filters import threshold_otsu

        soft = state.soft
        t = 0.5 if float(soft.min()) == float(soft.max()) else float(threshold_otsu(soft))
        return replace(state, mask=(soft >= t).astype(np.uint8), threshold=t)


# ---------------------------------------------------------------- soft-map filtering


@register_op("smooth")
@dataclass(frozen=True)
class Smooth(RefineOp):
    """Gaussian blur of the soft map (kernel 2*ceil(3*sigma)+1), then min-max renormalised to [0, 1].

    An existing mask is left alone: put ``smooth`` before the binarising step. A constant map stays as it is.
    Note the renormalisation stretches a weak map (max 0.2) to full range.
    """

    sigma: float = 2.0

    def check(self) -> None:
        if self.sigma <= 0:
            raise self._fail("sigma must be > 0")

    def __call__(self, state: RefineState) -> RefineState:
        k = 2 * math.ceil(3 * self.sigma) + 1
        out = cv2.GaussianBlur(state.soft, (k, k), sigmaX=self.sigma, sigmaY=self.sigma)
        lo, hi = float(out.min()), float(out.max())
        if hi - lo > 1e-6:
            out = (out - lo) / (hi - lo)
        return replace(state, soft=np.clip(out, 0.0, 1.0).astype(np.float32, copy=False))


# ---------------------------------------------------------------- morphology


def _morph(mask: np.ndarray, op: str, k: int, iters: int) -> np.ndarray:
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    return cv2.morphologyEx(mask, _MORPH_OPS[op], kernel, iterations=iters)


@dataclass(frozen=True)
class _FixedMorph(RefineOp):
    """Morphology with an elliptical k×k kernel, applied ``iters`` times, on the current mask."""

    k: int = 5
    iters: int = 1
    needs_mask: ClassVar[bool] = True

    def check(self) -> None:
        if self.k < 1 or self.iters < 1:
            raise self._fail("k and iters must be >= 1")

    def __call__(self, state: RefineState) -> RefineState:
        return replace(state, mask=_morph(self._require_mask(state), self.name, self.k, self.iters))


@register_op("open")
@dataclass(frozen=True)
class Open(_FixedMorph):
    """Opening (erode then dilate): removes specks and thin bridges; never grows the mask."""


@register_op("close")
@dataclass(frozen=True)
class Close(_FixedMorph):
    """Closing (dilate then erode): fills small gaps and notches; never shrinks the mask."""


@register_op("dilate")
@dataclass(frozen=True)
class Dilate(_FixedMorph):
    """Dilation: grows the mask by about k/2 pixels per iteration."""


@register_op("erode")
@dataclass(frozen=True)
class Erode(_FixedMorph):
    """Erosion: shrinks the mask by about k/2 pixels per iteration."""


@register_op("morph")
@dataclass(frozen=True)
class Morph(RefineOp):
    """Generic form: ``morph:op=open,k=5,iters=1`` with op one of open, close, dilate, erode."""

    op: str = "open"
    k: int = 5
    iters: int = 1
    needs_mask: ClassVar[bool] = True

    def check(self) -> None:
        if self.op not in _MORPH_OPS:
            raise self._fail(f"op must be one of {', '.join(_MORPH_OPS)}")
        if self.k < 1 or self.iters < 1:
            raise self._fail("k and iters must be >= 1")

    def __call__(self, state: RefineState) -> RefineState:
        return replace(state, mask=_morph(self._require_mask(state), self.op, self.k, self.iters))


@register_op("fill")
@dataclass(frozen=True)
class Fill(RefineOp):
    """Fill holes (background regions not connected to the image border), scipy.ndimage.binary_fill_holes."""

    needs_mask: ClassVar[bool] = True

    def __call__(self, state: RefineState) -> RefineState:
        from scipy.ndimage import binary_fill_holes

        return replace(state, mask=binary_fill_holes(self._require_mask(state)).astype(np.uint8))


@register_op("lcc")
@dataclass(frozen=True)
class LargestComponent(RefineOp):
    """Keep the largest 8-connected foreground component (ties: the first in raster order); empty stays empty."""

    needs_mask: ClassVar[bool] = True

    def __call__(self, state: RefineState) -> RefineState:
        mask = self._require_mask(state)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        if n <= 2:
            return state
        keep = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        return replace(state, mask=(labels == keep).astype(np.uint8))


# ---------------------------------------------------------------- image-driven refinement


def grabcut_init_mask(soft: np.ndarray, current: np.ndarray, fg: float, bg: float) -> np.ndarray:
    """GrabCut labels: soft >= fg inside ``current`` definite fg, soft <= bg definite bg, else probable per mask."""
    inside = current.astype(bool)
    gc = np.where(inside, cv2.GC_PR_FGD, cv2.GC_PR_BGD).astype(np.uint8)
    gc[inside & (soft >= fg)] = cv2.GC_FGD
    gc[soft <= bg] = cv2.GC_BGD
    return gc


@register_op("grabcut")
@dataclass(frozen=True)
class GrabCut(RefineOp):
    """OpenCV GrabCut initialised from the mask (or soft >= threshold when there is none yet).

    Pixels with soft >= fg inside the mask are definite foreground, soft <= bg definite background, the rest
    probable foreground/background per the mask. With fewer than 5 foreground or background pixels GrabCut
    cannot fit its colour models; the initial mask is returned unchanged. GrabCut's k-means draws from OpenCV's
    thread RNG, so the op calls ``cv2.setRNGSeed(seed)`` first (results do not depend on what ran before, and
    the caller's OpenCV RNG state is reset).
    """

    iters: int = 5
    fg: float = 0.8
    bg: float = 0.05
    seed: int = 0
    binarises: ClassVar[bool] = True
    needs_image: ClassVar[bool] = True
    cpu_heavy: ClassVar[bool] = True

    def check(self) -> None:
        if self.iters < 1:
            raise self._fail("iters must be >= 1")
        if not 0.0 <= self.bg < self.fg <= 1.0:
            raise self._fail("need 0 <= bg < fg <= 1")
        if self.seed < 0:
            raise self._fail("seed must be >= 0")

    def __call__(self, state: RefineState) -> RefineState:
        current = state.mask if state.mask is not None else (state.soft >= state.threshold).astype(np.uint8)
        gc = grabcut_init_mask(state.soft, current, self.fg, self.bg)
        is_fg = (gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)
        n_fg = int(is_fg.sum())
        if n_fg < _GMM_COMPONENTS or is_fg.size - n_fg < _GMM_COMPONENTS:
            return replace(state, mask=current)
        image_bgr = cv2.cvtColor(state.image, cv2.COLOR_RGB2BGR)
        bgd_model = np.zeros((1, 65), np.float64)
        fgd_model = np.zeros((1, 65), np.float64)
        cv2.setRNGSeed(self.seed)
        cv2.grabCut(image_bgr, gc, None, bgd_model, fgd_model, self.iters, cv2.GC_INIT_WITH_MASK)
        return replace(state, mask=((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8))


def crf_foreground_prob(soft: np.ndarray, threshold: float, confidence: float = 1.0) -> np.ndarray:
    """Soft map → P(foreground) with ``threshold`` mapped to 0.5 (piecewise linear), clipped, then sharpened.

    p = 0.5*s/t below t, 0.5 + 0.5*(s-t)/(1-t) above; clipped to [1e-5, 1-1e-5]; p ← p^c / (p^c + (1-p)^c).
    """
    eps = 1e-5
    s = soft.astype(np.float64)
    t = float(threshold)
    below = 0.5 * s / max(t, 1e-12)
    above = 0.5 + 0.5 * (s - t) / max(1.0 - t, 1e-12)
    p = np.clip(np.where(s < t, below, above), eps, 1.0 - eps)
    if confidence != 1.0:
        pc, qc = p**confidence, (1.0 - p) ** confidence
        p = np.clip(pc / (pc + qc), eps, 1.0 - eps)
    return p


@register_op("crf")
@dataclass(frozen=True)
class DenseCRF(RefineOp):
    """Two-label dense CRF (pydensecrf2): unary from the soft map, Gaussian + bilateral pairwise kernels.

    The unary is ``-log`` of :func:`crf_foreground_prob` (the last threshold maps to 0.5, so ``threshold:0.5 |
    crf`` and ``otsu | crf`` differ). It reads the soft map and threshold, not the current mask: morphology
    before ``crf`` has no effect. Result: argmax of the mean-field marginals (ties → background). A kernel with
    compat 0 is skipped (it contributes nothing).
    """

    iters: int = 5
    sxy_gauss: float = 3.0
    compat_gauss: float = 3.0
    sxy_bilateral: float = 50.0
    srgb: float = 13.0
    compat_bilateral: float = 10.0
    confidence: float = 1.0
    binarises: ClassVar[bool] = True
    needs_image: ClassVar[bool] = True
    cpu_heavy: ClassVar[bool] = True

    def check(self) -> None:
        if self.iters < 1:
            raise self._fail("iters must be >= 1")
        if min(self.sxy_gauss, self.sxy_bilateral, self.srgb, self.confidence) <= 0:
            raise self._fail("sxy_gauss, sxy_bilateral, srgb and confidence must be > 0")
        if min(self.compat_gauss, self.compat_bilateral) < 0:
            raise self._fail("compat_gauss and compat_bilateral must be >= 0")

    def __call__(self, state: RefineState) -> RefineState:
        p = crf_foreground_prob(state.soft, state.threshold, self.confidence)
        return replace(state, mask=self.infer(state.image, np.stack([1.0 - p, p])).astype(np.uint8))

    def infer(self, image: np.ndarray, probs: np.ndarray) -> np.ndarray:
        """Labels (H, W) int64: the argmax (ties → the lower label) of the mean-field marginals of an L-label dense
        CRF whose unary is ``-log probs`` (L, H, W), with this step's kernels over the RGB ``image``."""
        import pydensecrf.densecrf as dcrf
        from pydensecrf.utils import unary_from_softmax

        labels, h, w = probs.shape
        crf = dcrf.DenseCRF2D(w, h, labels)
        crf.setUnaryEnergy(unary_from_softmax(np.asarray(probs, dtype=np.float32)))
        if self.compat_gauss > 0:
            crf.addPairwiseGaussian(sxy=self.sxy_gauss, compat=self.compat_gauss)
        if self.compat_bilateral > 0:
            rgb = np.ascontiguousarray(image, dtype=np.uint8)
            crf.addPairwiseBilateral(sxy=self.sxy_bilateral, srgb=self.srgb, rgbim=rgb, compat=self.compat_bilateral)
        q = np.asarray(crf.inference(self.iters), dtype=np.float32).reshape(labels, h, w)
        return q.argmax(0)


def class_probabilities(maps: np.ndarray, threshold: float, confidence: float = 1.0) -> np.ndarray:
    """(K, H, W) soft maps, one per tag of an image → (K + 1, H, W): P(background), P(tag 1), ... P(tag K).

    Each map gives P(its class) = p_k by :func:`crf_foreground_prob`; taken as independent evidence of which one
    label a pixel has, P(background) ∝ Π (1 − p_j) and P(k) ∝ p_k Π_{j≠k} (1 − p_j), i.e. the odds p_k / (1 − p_k)
    against a background of 1. With one map this is (1 − p, p), the two-label CRF's unary."""
    p = np.stack([crf_foreground_prob(m, threshold, confidence) for m in maps])
    odds = p / (1.0 - p)
    return np.concatenate([np.ones_like(p[:1]), odds]) / (1.0 + odds.sum(0, keepdims=True))
