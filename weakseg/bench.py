"""Benchmarks a user can rerun: ``weakseg bench train`` compares weakseg's training loop with a bare smp loop."""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from weakseg.config import TrainConfig
from weakseg.data.prepared import PreparedSplit
from weakseg.data.sample import IGNORE_INDEX
from weakseg.models import build_model
from weakseg.runtime import configure_threads, pick_device
from weakseg.train import fit


def bare_smp_loop(
    split: PreparedSplit, encoder: str, batch_size: int, epochs: int, device: torch.device, seed: int = 0
) -> float:
    """Images/s of the plainest loop: smp U-Net, tensors already in memory, Adam, CE, horizontal flips."""
    torch.manual_seed(seed)
    model = smp.Unet(f"tu-{encoder}", encoder_weights=None, classes=2).to(device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    images = ((split.images.float() / 255 - 0.5) / 0.5).to(device)
    masks = split.masks.long().to(device)
    seen, started = 0, time.perf_counter()
    for _ in range(epochs):
        order = torch.randperm(len(split))
        for start in range(0, len(split), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2:
                continue
            x, y = images[index], masks[index]
            if torch.rand(()) < 0.5:
                x, y = x.flip(-1), y.flip(-1)
            loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(index)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - started)


def weakseg_loop(
    split: PreparedSplit, encoder: str, batch_size: int, epochs: int, device: torch.device, seed: int = 0
) -> float:
    """Images/s of weakseg's ``fit`` (training phase of each epoch: batching, augmentation, logging)."""
    model = build_model("unet", encoder, 2, weights=None)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, loss="ce", augment=["hflip"], progress=True)
    with tempfile.TemporaryDirectory() as tmp:
        result = fit(model, split, None, config, Path(tmp), device, seed=seed, resume=False)
    seen = sum(r["images_per_s"] * r["seconds"] for r in result.history)
    return seen / sum(r["seconds"] for r in result.history)


def bench_train(
    split: PreparedSplit,
    encoder: str,
    batch_size: int = 16,
    epochs: int = 1,
    repeats: int = 2,
    device: str = "auto",
) -> dict[str, Any]:
    """Alternate the two loops ``repeats`` times on the same data, model and batch; report medians."""
    configure_threads()
    dev = pick_device(device)
    bare, ours = [], []
    for r in range(repeats):
        bare.append(bare_smp_loop(split, encoder, batch_size, epochs, dev, seed=r))
        ours.append(weakseg_loop(split, encoder, batch_size, epochs, dev, seed=r))
    b, w = statistics.median(bare), statistics.median(ours)
    return {
        "bench": "train",
        "device": str(dev),
        "images": len(split),
        "size": split.size,
        "batch_size": batch_size,
        "encoder": encoder,
        "bare_smp_img_s": round(b, 2),
        "weakseg_img_s": round(w, 2),
        "ratio": round(w / b, 3),
        "bare_runs": [round(v, 2) for v in bare],
        "weakseg_runs": [round(v, 2) for v in ours],
    }


GRADCAM_ORACLES = {
    "cam": "GradCAM",  # equal to CAM for a global-average-pool + linear head
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "hirescam": "HiResCAM",
    "xgradcam": "XGradCAM",
    "layercam": "LayerCAM",
    "fullgrad": "FullGrad",
}


def _timed(fn, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, list]:
    """Images/s of ``fn(batch)`` over all images, and its outputs."""
    outputs, started = [], time.perf_counter()
    for start in range(0, len(images), batch_size):
        outputs.append(fn(images[start : start + batch_size].to(device).float().div_(255), start))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - started), outputs


def bench_cam(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[int],
    method: str = "gradcam",
    batch_size: int = 32,
    repeats: int = 3,
    device: str = "auto",
) -> dict[str, Any]:
    """Throughput of weakseg's CAM, pytorch-grad-cam's same method and a plain forward pass, on the same model,
    images (uint8 N x 3 x S x S) and batches, alternated ``repeats`` times (medians); the largest difference
    between weakseg's and pytorch-grad-cam's maps."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from weakseg.cams import build_cam, default_target_layers

    configure_threads()
    dev = pick_device(device)
    model = model.to(dev).eval()
    layers = default_target_layers(model)
    oracle_cls = getattr(pytorch_grad_cam, GRADCAM_ORACLES[method])

    def forward(x: torch.Tensor, start: int) -> None:
        with torch.no_grad():
            model(x)

    def ours(x: torch.Tensor, start: int) -> torch.Tensor:
        return cam(x, targets[start : start + len(x)])

    def oracle(x: torch.Tensor, start: int):
        return reference(x, [ClassifierOutputTarget(t) for t in targets[start : start + len(x)]])

    speeds: dict[str, list[float]] = {"forward": [], "weakseg": [], "gradcam": []}
    diff = 0.0
    _timed(forward, images[:batch_size], batch_size, dev)  # warm-up (allocator, kernels)
    for _ in range(repeats):  # each method's hooks exist only while it is timed
        speeds["forward"].append(_timed(forward, images, batch_size, dev)[0])
        with build_cam(method, model, layers) as cam:
            speed, maps = _timed(ours, images, batch_size, dev)
        speeds["weakseg"].append(speed)
        with oracle_cls(model=model, target_layers=layers) as reference:
            speed, reference_maps = _timed(oracle, images, batch_size, dev)
        speeds["gradcam"].append(speed)
        for a, b in zip(maps, reference_maps, strict=True):
            diff = max(diff, float((a.cpu() - torch.from_numpy(b)).abs().max()))
    median = {k: statistics.median(v) for k, v in speeds.items()}
    return {
        "method": method,
        "weakseg_img_s": round(median["weakseg"], 2),
        "gradcam_img_s": round(median["gradcam"], 2),
        "forward_img_s": round(median["forward"], 2),
        "max_abs_diff": diff,
        "vs_gradcam": round(median["weakseg"] / median["gradcam"], 3),
        "vs_forward": round(median["weakseg"] / median["forward"], 3),
        "device": str(dev),
        "images": len(images),
        "size": int(images.shape[-1]),
        "batch_size": batch_size,
        "runs": {k: [round(s, 2) for s in v] for k, v in speeds.items()},
    }


def pseudo_cam(image: np.ndarray) -> np.ndarray:
    """Deterministic coarse stand-in for a CAM (timing only): centred Gaussian x saturation, 1/16 resolution."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    blob = np.exp(-(((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2) / 2)
    saturation = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)[:, :, 1].astype(np.float32) / 255
    cam = blob * (0.4 + 0.6 * saturation)
    coarse = cv2.resize(cam, (max(1, w // 16), max(1, h // 16)), interpolation=cv2.INTER_AREA)
    cam = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
    return ((cam - cam.min()) / max(float(cam.max() - cam.min()), 1e-6)).astype(np.float32)
