"""Benchmarks a user can rerun: ``weakseg bench train`` compares weakseg's training loop with a bare smp loop."""

from __future__ import annotations

import contextlib
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from weakseg.config import TrainConfig
from weakseg.data.prepared import PreparedSplit
from weakseg.data.sample import IGNORE_INDEX
from weakseg.errors import ConfigError
from weakseg.models import build_model
from weakseg.runtime import autocast, configure_threads, pick_device
from weakseg.train import fit

if TYPE_CHECKING:
    from weakseg.labelling import LabelSettings

MEMORY_FORMAT = "channels_last"  # weakseg's fit puts the model and every batch in it; the bare loop does the same


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_smp_loop(
    split: PreparedSplit,
    encoder: str,
    batch_size: int,
    epochs: int,
    device: torch.device,
    out_dir: Path,
    seed: int = 0,
    amp: bool = True,
) -> int:
    """The plainest loop doing the work of weakseg's ``fit``; returns the number of images trained on.

    smp U-Net (``tu-<encoder>``, random init, 2 classes), model and batches in channels-last memory format, the
    whole split preloaded on the device and normalised once (its one shortcut: weakseg converts each uint8 batch
    and normalises inside the model), a random order per epoch, batches of ``batch_size`` (a last batch of one
    image skipped, as ``fit`` does), each image of a batch flipped horizontally with probability 0.5, CE over
    known pixels, Adam 1e-3, mixed precision on CUDA as ``fit`` (``amp``); the mean loss kept per epoch and a
    checkpoint (model + optimizer state, ``torch.save``) written to ``out_dir`` after every epoch."""
    torch.manual_seed(seed)
    model = smp.Unet(f"tu-{encoder}", encoder_weights=None, classes=2)
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and amp and not torch.cuda.is_bf16_supported())
    images = ((split.images.to(device).float() / 255 - 0.5) / 0.5).contiguous(memory_format=torch.channels_last)
    masks = split.masks.to(device).long()
    seen = 0
    for epoch in range(epochs):
        order, total, count = torch.randperm(len(split)), 0.0, 0
        for start in range(0, len(split), batch_size):
            index = order[start : start + batch_size]
            if len(index) < 2 and len(split) > 1:
                break
            x, y = images[index.to(device)], masks[index.to(device)]
            flip = (torch.rand(len(index)) < 0.5).to(device)
            x[flip], y[flip] = x[flip].flip(-1), y[flip].flip(-1)
            x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, amp):
                loss = F.cross_entropy(model(x), y, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            total, count = total + loss.item() * len(index), count + len(index)
        seen += count
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch}
        torch.save(state | {"loss": total / max(count, 1)}, out_dir / "last.pt")
    return seen


def weakseg_loop(
    split: PreparedSplit,
    encoder: str,
    batch_size: int,
    epochs: int,
    device: torch.device,
    out_dir: Path,
    seed: int = 0,
    amp: bool = True,
) -> int:
    """weakseg's whole ``fit`` call (setup, epochs, progress bar, log.csv, ``best.pt`` and ``last.pt`` written
    every epoch, the best weights loaded back at the end) on a fresh ``build_model('unet', encoder)``; returns
    the number of images the model trained on (counted by a forward pre-hook in training mode)."""
    torch.manual_seed(seed)
    model = build_model("unet", encoder, 2, weights=None)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, loss="ce", augment=["hflip"], amp=amp, progress=True)
    seen = [0]

    def count(module: torch.nn.Module, inputs: tuple) -> None:
        if module.training:
            seen[0] += len(inputs[0])

    handle = model.register_forward_pre_hook(count)
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the progress bar still runs; stdout keeps one JSON line
            fit(model, split, None, config, out_dir, device, seed=seed, resume=False)
    finally:
        handle.remove()
    return seen[0]


TRAIN_SIDES = {"bare": bare_smp_loop, "weakseg": weakseg_loop}


def _timed_side(side: str, split: PreparedSplit, encoder: str, batch_size: int, epochs: int, dev, seed: int):
    """(images trained on, wall seconds) of one whole call of a side, in a fresh temporary folder."""
    with tempfile.TemporaryDirectory() as tmp:
        _sync(dev)
        started = time.perf_counter()
        seen = TRAIN_SIDES[side](split, encoder, batch_size, epochs, dev, Path(tmp), seed=seed)
        _sync(dev)
        return seen, time.perf_counter() - started


def bench_train(
    split: PreparedSplit,
    encoder: str,
    batch_size: int = 16,
    epochs: int = 1,
    repeats: int = 3,
    device: str = "auto",
    warmup_batches: int = 2,
) -> dict[str, Any]:
    """weakseg's ``fit`` against the bare loop of :func:`bare_smp_loop`, doing the same work: same images,
    model (U-Net, ``encoder``, random init), batch size, CE loss, per-image horizontal flips, epochs and
    channels-last memory format (model and inputs, both sides), and a checkpoint written after every epoch.

    Each side is timed by the wall clock around its whole call, from building the model to the last
    checkpoint written (weakseg: ``build_model`` + the whole ``fit`` call, which writes ``best.pt`` and
    ``last.pt`` each epoch, a log.csv and a progress bar, and reloads ``best.pt``; bare: the model, the
    preloaded tensors, the loop and one ``last.pt`` per epoch). Throughput = images trained on / those seconds.
    Before timing, each side runs once untimed (one epoch on ``warmup_batches`` batches). Then ``repeats``
    pairs, the order alternating (bare, weakseg; weakseg, bare; ...) so a drift in machine load hits both
    sides alike; each pair has its own seed. ``ratio`` is the median of the per-pair ratios weakseg / bare."""
    configure_threads()
    dev = pick_device(device)
    warm = split.subset(range(min(len(split), warmup_batches * batch_size)))
    for side in TRAIN_SIDES:
        _timed_side(side, warm, encoder, batch_size, 1, dev, seed=0)
    runs: dict[str, list[tuple[int, float]]] = {"bare": [], "weakseg": []}
    orders = []
    for pair in range(repeats):
        order = ["bare", "weakseg"] if pair % 2 == 0 else ["weakseg", "bare"]
        orders.append(order)
        for side in order:
            runs[side].append(_timed_side(side, split, encoder, batch_size, epochs, dev, seed=pair))
    speed = {side: [seen / seconds for seen, seconds in values] for side, values in runs.items()}
    pair_ratios = [round(w / b, 3) for w, b in zip(speed["weakseg"], speed["bare"], strict=True)]
    return {
        "bench": "train",
        "device": str(dev),
        "images": len(split),
        "size": split.size,
        "batch_size": batch_size,
        "epochs": epochs,
        "encoder": encoder,
        "memory_format": f"{MEMORY_FORMAT} (model and inputs, both sides)",
        "timed": "wall clock of each whole call: model build, setup, epochs, per-epoch checkpoints",
        "warmup": {"images": len(warm), "epochs": 1, "timed": False},
        "pairs": repeats,
        "orders": [",".join(order) for order in orders],
        "ratio": round(statistics.median(pair_ratios), 3),
        "pair_ratios": pair_ratios,
        "bare_smp_img_s": round(statistics.median(speed["bare"]), 2),
        "weakseg_img_s": round(statistics.median(speed["weakseg"]), 2),
        "bare_runs": [round(v, 2) for v in speed["bare"]],
        "weakseg_runs": [round(v, 2) for v in speed["weakseg"]],
        "bare_seconds": [round(s, 2) for _, s in runs["bare"]],
        "weakseg_seconds": [round(s, 2) for _, s in runs["weakseg"]],
        "images_seen": {side: [seen for seen, _ in values] for side, values in runs.items()},
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


def _timed(run, images: torch.Tensor, batch_size: int, device: torch.device) -> tuple[float, list]:
    """Images/s of ``with run() as fn: fn(batch, start)`` over all images (setting up ``fn`` included), and
    its outputs."""
    started = time.perf_counter()
    with run() as fn:
        outputs = [
            fn(images[start : start + batch_size].to(device).float().div_(255), start)
            for start in range(0, len(images), batch_size)
        ]
        _sync(device)
    return len(images) / (time.perf_counter() - started), outputs


def _layer_names(model: torch.nn.Module, layers: list[torch.nn.Module]) -> list[str]:
    names = {id(module): name for name, module in model.named_modules()}
    return [names.get(id(layer), type(layer).__name__) for layer in layers]


def bench_cam(
    model: torch.nn.Module,
    images: torch.Tensor,
    targets: list[int],
    method: str = "gradcam",
    batch_size: int = 32,
    repeats: int = 3,
    device: str = "auto",
    layers: list[str] | None = None,
) -> dict[str, Any]:
    """Throughput of weakseg's CAM, pytorch-grad-cam's same method and a plain forward pass, on the same model,
    images (uint8 N x 3 x S x S), batches and target layers (``layers``: module names such as
    ``net.blocks.5``; None: the method's default, the last feature block), and the largest difference between
    weakseg's and pytorch-grad-cam's maps.

    Each method runs once on one batch untimed (warm-up: allocator, kernels, weakseg's first-call probe of the
    fast path), then ``repeats`` times over all images, the order alternating (forward, weakseg, grad-cam;
    grad-cam, weakseg, forward; ...). A timed run includes creating the method's object (hooks), which exist
    only while it runs, and weakseg's one probe on its first batch (as in ``weakseg.sources.cam``, one object
    per image set). Reported: medians, and the per-repeat ratios with their median.

    Several layers are combined alike on both sides (pytorch-grad-cam's ``aggregate_multi_layers``, weakseg's
    ``fuse_maps``): per layer ReLU, min-max normalise, upsample bilinearly to the input; then the mean over
    layers, normalised again. With several layers (or any layer whose output is not ``forward_features``)
    weakseg cannot take its head-only gradient path and back-propagates through the backbone to the layers."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from weakseg.cams import build_cam, default_target_layers
    from weakseg.sources.cam import resolve_layers

    configure_threads()
    dev = pick_device(device)
    model = model.to(dev).eval()
    modules = resolve_layers(model, layers) or default_target_layers(model)
    oracle_cls = getattr(pytorch_grad_cam, GRADCAM_ORACLES[method])

    def forward(x: torch.Tensor, start: int) -> None:
        with torch.no_grad():
            model(x)

    @contextlib.contextmanager
    def ours():
        with build_cam(method, model, modules) as cam:
            yield lambda x, start: cam(x, targets[start : start + len(x)])

    @contextlib.contextmanager
    def oracle():
        with oracle_cls(model=model, target_layers=modules) as reference:
            yield lambda x, start: reference(x, [ClassifierOutputTarget(t) for t in targets[start : start + len(x)]])

    runs = {"forward": lambda: contextlib.nullcontext(forward), "weakseg": ours, "gradcam": oracle}
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    for run in runs.values():  # warm-up of each method
        _timed(run, images[:batch_size], batch_size, dev)
    diff, orders = 0.0, []
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(runs)[::-1]
        orders.append(",".join(order))
        outputs = {}
        for name in order:
            speed, outputs[name] = _timed(runs[name], images, batch_size, dev)
            speeds[name].append(speed)
        for a, b in zip(outputs["weakseg"], outputs["gradcam"], strict=True):
            diff = max(diff, float((a.cpu() - torch.from_numpy(b)).abs().max()))
    vs_gradcam = [round(w / g, 3) for w, g in zip(speeds["weakseg"], speeds["gradcam"], strict=True)]
    vs_forward = [round(w / f, 3) for w, f in zip(speeds["weakseg"], speeds["forward"], strict=True)]
    median = {k: statistics.median(v) for k, v in speeds.items()}
    return {
        "method": method,
        "layers": _layer_names(model, modules),
        "weakseg_img_s": round(median["weakseg"], 2),
        "gradcam_img_s": round(median["gradcam"], 2),
        "forward_img_s": round(median["forward"], 2),
        "max_abs_diff": diff,
        "vs_gradcam": round(statistics.median(vs_gradcam), 3),
        "vs_forward": round(statistics.median(vs_forward), 3),
        "repeat_vs_gradcam": vs_gradcam,
        "repeat_vs_forward": vs_forward,
        "device": str(dev),
        "images": len(images),
        "size": int(images.shape[-1]),
        "batch_size": batch_size,
        "warmup": {"batches": 1, "timed": False},
        "orders": orders,
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


def machine_load() -> dict[str, Any]:
    """The 1-minute load average and the number of cores: other work on the machine skews every timing."""
    return {"loadavg_1m": round(os.getloadavg()[0], 2), "cores": os.cpu_count()}


def bench_sam(
    datasets: dict[str, tuple[list[np.ndarray], list[np.ndarray]]],
    generator: str = "litemedsam",
    baseline: dict[str, Any] | None = None,
    fast: dict[str, Any] | None = None,
    pairs: int = 3,
    warmup: int = 2,
    min_iou: float = 0.99,
) -> dict[str, Any]:
    """Box → mask throughput of one generator with two sets of options (default: LiteMedSAM in PyTorch float32,
    the masks of before, against its default, ONNX Runtime), on the same images, and how far the fast masks move.

    ``datasets``: name → (RGB uint8 images, (K, 4) boxes per image). Each side first segments ``warmup`` images
    untimed (model load, ONNX export or session, first-call allocations; its ``load_seconds`` reported).
    Then ``pairs`` pairs, the order alternating (baseline, fast; fast, baseline; ...), each side timed by the
    wall clock over every image of every dataset; ``ratio`` is the median of the per-pair ratios baseline
    seconds / fast seconds. IoU: per image, the fast mask against the baseline mask of the first pair (both
    empty: 1), min (and the index of that image in its dataset) and mean per dataset; ``changed_pixels`` counts
    pixels that differ. ``quality_gate``: whether every image's IoU is at least ``min_iou``."""
    from weakseg.sources.sam import build_mask_generator

    sides = {
        "baseline": build_mask_generator(generator, **(baseline if baseline is not None else {"backend": "torch"})),
        "fast": build_mask_generator(generator, **(fast or {})),
    }
    images = [image for ims, _ in datasets.values() for image in ims]
    boxes = [b for _, bxs in datasets.values() for b in bxs]
    for gen in sides.values():
        gen(images[:warmup], boxes[:warmup])
    load_before = machine_load()
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    masks: dict[str, list[np.ndarray]] = {}
    orders = []
    for pair in range(pairs):
        order = list(sides) if pair % 2 == 0 else list(sides)[::-1]
        orders.append(",".join(order))
        for side in order:
            started = time.perf_counter()
            out = sides[side](images, boxes)
            seconds[side].append(time.perf_counter() - started)
            masks.setdefault(side, out)
    ratios = [round(b / f, 3) for b, f in zip(seconds["baseline"], seconds["fast"], strict=True)]
    quality, start = {}, 0
    for name, (ims, _) in datasets.items():
        ious, changed, part = [], 0, slice(start, start + len(ims))
        for a, b in zip(masks["baseline"][part], masks["fast"][part], strict=True):
            a, b = a.astype(bool), b.astype(bool)
            union = int((a | b).sum())
            ious.append(float((a & b).sum() / union) if union else 1.0)
            changed += int((a ^ b).sum())
        quality[name] = {
            "images": len(ims),
            "iou_min": round(min(ious), 5),
            "iou_min_image": int(np.argmin(ious)),
            "iou_mean": round(float(np.mean(ious)), 5),
            "changed_pixels": changed,
        }
        start += len(ims)
    return {
        "bench": "sam",
        "generator": generator,
        "baseline": sides["baseline"].identity(),
        "fast": sides["fast"].identity(),
        "images": len(images),
        "boxes": int(sum(len(b) for b in boxes)),
        "threads": torch.get_num_threads(),
        "warmup": {"images": min(warmup, len(images)), "timed": False},
        "load_seconds": {side: round(getattr(gen, "load_seconds", 0.0), 2) for side, gen in sides.items()},
        "timed": "wall clock of each side over all images (preprocessing, encoder, decoder, upsampling)",
        "pairs": pairs,
        "orders": orders,
        "ratio": round(statistics.median(ratios), 3),
        "pair_ratios": ratios,
        "baseline_s_per_image": [round(s / len(images), 3) for s in seconds["baseline"]],
        "fast_s_per_image": [round(s / len(images), 3) for s in seconds["fast"]],
        "iou_vs_baseline": quality,
        "quality_gate": {"min_iou": min_iou, "passed": all(q["iou_min"] >= min_iou for q in quality.values())},
        "load": {"before": load_before, "after": machine_load()},
        "note": "the CPU may be shared (e.g. with a training run): see load; pairs alternate so drift hits both",
    }


LABEL_STAGES = ("decode", "cam", "sam", "refine", "train", "export", "load", "predict", "scan", "write")
"""The stages ``weakseg bench label`` reports, adding up to the wall time of the run: the issue's six first
(``refine`` = GrabCut + fusion of the box masks, ``cam`` always 0: ``weakseg label`` does not use image tags),
then ``load`` (the box generator's model, with LiteMedSAM's one-off ONNX export), ``predict`` (the trained
segmenter on every image), ``scan`` (list and fingerprint the folder) and ``write`` (masks, review.csv,
label.json)."""


def bench_label(
    data: str | Path,
    settings: LabelSettings | None = None,
    export: str | None = "coco",
    out_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The wall seconds of each stage (:data:`LABEL_STAGES`) of one fresh ``weakseg label`` run on the folder
    ``data``, then its export (``export``: a format of ``weakseg export-labels``, None for none), as one JSON-able
    dict. ``out_dir`` must not hold an earlier run (a resumed run skips done work); by default a temporary folder,
    deleted afterwards. ``images_per_s``: the folder's images per second of the whole run and, per stage, per
    second of that stage (what the pipeline would do if that stage were all it did); ``sam_images_per_s``: images
    segmented by the box generator per second of ``sam``."""
    from weakseg.export import export_labels
    from weakseg.labelling import LabelSettings, label_folder

    settings = settings or LabelSettings()
    with contextlib.ExitStack() as stack:
        out = Path(out_dir) if out_dir else Path(stack.enter_context(tempfile.TemporaryDirectory())) / "label"
        if (out / "label.json").exists():
            raise ConfigError(f"'{out}' holds an earlier run: bench label needs a fresh --out")
        load_before = machine_load()
        started = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # progress and training lines; stdout keeps one JSON line
            report = label_folder(data, out, settings, progress=False)
            exported = time.perf_counter()
            if export:
                export_labels(out, export, images=Path(data) / "images")
        finished = time.perf_counter()
    detail = {**report.seconds, "export": round(finished - exported, 3)}
    parts = {
        "decode": ["decode"],
        "cam": [],
        "sam": ["sam"],
        "refine": ["grabcut", "fuse"],
        "train": ["train"],
        "export": ["export"],
        "load": ["load"],
        "predict": ["predict"],
        "scan": ["scan"],
        "write": ["write"],
    }
    seconds = {stage: round(sum((detail.get(p, 0.0) for p in parts[stage]), 0.0), 3) for stage in LABEL_STAGES}
    wall = finished - started
    segmented = report.with_boxes if settings.generator != "none" else 0
    return {
        "bench": "label",
        "data": str(data),
        "images": report.images,
        "with_mask": report.with_mask,
        "with_boxes": report.with_boxes,
        "predicted": report.predicted,
        "generator": settings.generator,
        "generator_options": settings.generator_options,
        "grabcut": settings.grabcut,
        "size": settings.size,
        "epochs": settings.epochs,
        "export": export,
        "threads": torch.get_num_threads(),
        "seconds": seconds,
        "wall_s": round(wall, 3),
        "unaccounted_s": round(wall - sum(seconds.values()), 3),
        "images_per_s": {
            "run": round(report.images / wall, 3),
            **{stage: round(report.images / t, 3) if t > 0 else None for stage, t in seconds.items()},
        },
        "sam_images_per_s": round(segmented / seconds["sam"], 3) if segmented and seconds["sam"] > 0 else None,
        "detail": detail,  # label_folder's own stages (weakseg.labelling.STAGES) and the export
        "box_generator_load": report.box_generator_load,
        "notes": {
            "cam": "weakseg label does not use image tags: no CAM stage (0)",
            "load": "the box generator's model, with LiteMedSAM's ONNX export on its first use on this machine",
            "machine": "the CPU may be shared (e.g. with a training run): see load",
        },
        "load": {"before": load_before, "after": machine_load()},
    }
