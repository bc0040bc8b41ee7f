"""Device choice, seeding and thread settings."""

from __future__ import annotations

import os
import random

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` takes CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for batch order and augmentation."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def configure_threads() -> None:
    """Use every core for torch ops unless the user set OMP_NUM_THREADS."""
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)


def autocast(device: torch.device, enabled: bool, cpu: bool = False) -> torch.autocast:
    """Mixed precision on GPU (bfloat16 where supported); on CPU bfloat16 only when ``cpu`` is set too (about
    twice as fast on processors with AVX-512 BF16 or AMX, slower on those without), else a no-op context."""
    if device.type == "cuda" and enabled:
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.autocast("cuda", dtype=dtype)
    if device.type == "cpu" and enabled and cpu:
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return torch.autocast(device.type, enabled=False)
