"""Deployable models: a checkpoint exported to one ONNX file, and :class:`OnnxSegmenter` to predict with it.

The graph takes ``images``: float32 RGB in [0, 1], (N, 3, H, W), normalised inside as :class:`Segmenter` does, and
gives ``logits`` (N, C, H, W): the primary head of a multi-head model, the masks of a multi-task model. Batch,
height and width are dynamic: any size for U-Net, multiples of ``weakseg.input_multiple`` (the encoder's output
stride) for the architectures whose PyTorch model requires it too. The model's ``metadata_props`` hold what
prediction needs besides the graph (JSON values):

- ``weakseg.meta``: the checkpoint meta (``size``, ``fit``, ``mask_classes``), as :func:`checkpoint_meta` gives it;
- ``weakseg.model_spec``: the model spec (``arch``, ``encoder``, ``classes``, ``mode``, heads, ...);
- ``weakseg.probabilities``: ``sigmoid`` (binary: one foreground logit) or ``softmax`` (one logit per class);
- ``weakseg.input_multiple``: what height and width must be a multiple of (1: any size).
"""

from __future__ import annotations

import inspect
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from weakseg.errors import ConfigError, WeaksegError, WeightsUnavailableError
from weakseg.io import atomic_path
from weakseg.models.registry import checkpoint_meta, load_model
from weakseg.models.segmenter import Segmenter

OPSET = 18
INPUT, OUTPUT = "images", "logits"
TOLERANCE = 1e-3  # largest |ONNX - PyTorch| logit difference the check after export accepts, per unit of logit


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = OPSET) -> Path:
    """Export a training checkpoint (``best.pt``) to one ONNX file (weights inside, meta in ``metadata_props``),
    check it with ONNX Runtime against PyTorch on an image of the checkpoint's size, and return its path."""
    import onnx

    model = load_model(checkpoint).eval()
    meta = checkpoint_meta(checkpoint)
    multiple = input_multiple(model)
    size = int(meta.get("size", 160))
    size = max(multiple, size // multiple * multiple)
    example = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    axes = {0: "batch", 2: "height", 3: "width"}
    # The TorchScript exporter: dynamic height and width, seconds on a CPU (the torch.export one takes minutes).
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    out = Path(out)
    with atomic_path(out) as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(
            model,
            (example,),
            str(tmp),
            input_names=[INPUT],
            output_names=[OUTPUT],
            dynamic_axes={INPUT: axes, OUTPUT: axes},
            opset_version=opset,
            **legacy,
        )
        proto = onnx.load(str(tmp))
        props = {
            "weakseg.meta": json.dumps(meta),
            "weakseg.model_spec": json.dumps(model.spec),
            "weakseg.probabilities": "sigmoid" if model.binary else "softmax",
            "weakseg.input_multiple": str(multiple),
        }
        onnx.helper.set_model_props(proto, props)
        proto.doc_string = (
            f"weakseg {model.spec.get('arch')} ({model.spec.get('encoder')}) from {Path(checkpoint).name}"
        )
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
        with torch.no_grad():
            expected = model(example)
        difference = (OnnxSegmenter(tmp)(example) - expected).abs().max().item()
        if not difference <= TOLERANCE * max(1.0, expected.abs().max().item()):
            raise WeaksegError(f"the exported model's logits differ from PyTorch's by up to {difference:.2g}")
    return out


def input_multiple(model: Segmenter) -> int:
    """What the model's input height and width must be a multiple of (its encoder's output stride), or 1."""
    net = model.net
    if not getattr(net, "requires_divisible_input_shape", True):
        return 1
    return int(getattr(getattr(net, "encoder", None), "output_stride", 1))


class _Session(nn.Module):
    """An ONNX Runtime session as a module: tensors in, logits out on the input's device. Its one (empty)
    parameter tells callers that look for ``next(model.parameters()).device`` where to put the inputs."""

    def __init__(self, session: Any):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = np.ascontiguousarray(images.detach().float().cpu().numpy())
        logits = self.session.run(None, {self.input_name: array})[0]
        return torch.from_numpy(logits).to(images.device)


class OnnxSegmenter(Segmenter):
    """A model exported by :func:`export_onnx`, run by ONNX Runtime behind the :class:`Segmenter` interface
    (``model(images)`` gives logits, ``probabilities``, ``predict``, ``num_classes``, ``binary``, ``spec``), so
    :func:`weakseg.predict.predict_files`, :func:`weakseg.evaluate.predict_probabilities` and tiling take it as
    they take the PyTorch model. ``meta`` is the checkpoint meta (``size``, ``fit``, ``mask_classes``).

    providers: ONNX Runtime execution providers (default: CUDA when this onnxruntime has it, then CPU).
    """

    def __init__(self, path: str | Path, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise WeightsUnavailableError(f"ONNX model not found: '{path}'")
        if providers is None:
            available = ort.get_available_providers()
            providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            session = ort.InferenceSession(str(path), providers=list(providers))
        except Exception as err:
            raise WeightsUnavailableError(f"cannot read ONNX model '{path}': {err}") from err
        props = session.get_modelmeta().custom_metadata_map
        if "weakseg.model_spec" not in props:
            raise WeightsUnavailableError(f"'{path}' was not exported by weakseg export (no weakseg metadata)")
        # The graph normalises its input itself: identity statistics here.
        super().__init__(_Session(session), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), json.loads(props["weakseg.model_spec"]))
        self.meta: dict[str, Any] = json.loads(props.get("weakseg.meta", "{}"))
        self.input_multiple = int(props.get("weakseg.input_multiple", "1"))
        self.path = path

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        height, width = images.shape[-2:]
        if height % self.input_multiple or width % self.input_multiple:
            raise ConfigError(
                f"input of {height} x {width} pixels: '{self.path.name}' needs height and width that are "
                f"multiples of {self.input_multiple}"
            )
        return self.net(images)


def load_for_inference(path: str | Path, device: torch.device) -> tuple[Segmenter, dict[str, Any]]:
    """(model, meta) from a training checkpoint (``best.pt``, put on ``device``) or an exported ``.onnx`` file
    (run by ONNX Runtime): what ``weakseg predict`` and ``weakseg evaluate`` score with."""
    if Path(path).suffix.lower() == ".onnx":
        model = OnnxSegmenter(path)
        return model, model.meta
    return load_model(path).to(device), checkpoint_meta(path)
