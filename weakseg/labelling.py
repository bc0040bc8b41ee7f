"""``weakseg label DATA --out DIR``: a mask for every image of a folder, from whatever labels each image has.

Per image, from its own labels:

- a mask file (or a shape drawn in an annotation tool): kept as it is;
- boxes: the box-prompted generator's mask (LiteMedSAM offline, SAM checkpoints online) and box-initialised
  GrabCut ("Simple Does It"); where both agree the pixel is labelled, where they disagree it is left unknown
  (``IGNORE_INDEX``) for the segmenter to resolve;
- clicks: the clicked pixels, learned from by the segmenter (no offline generator takes point prompts).

Then (``segmenter``; by default when at least ``min_images`` images have labels) one U-Net is trained on all of
it, ignoring unknown pixels, and predicts the mask of every image that has no mask file. Every image gets a review
score in [0, 1], low = look at it first: the mean agreement (IoU) between its box masks and the segmenter's
prediction, or, for an image without boxes, the segmenter's mean confidence; an image with nothing to compare
(one box mask, no segmenter) is unscored and listed first, a mask file scores 1. ``DIR`` holds ``masks/<name>.png``
(class indices), ``review.csv`` (worst first), ``label.json`` (settings and counts), the box masks under
``boxes/`` and the segmenter under ``model/``. An interrupted run resumes: box masks are cached per image and
training continues from its last epoch; ``label.json`` refuses a folder made with other settings (or another box
generator: its identity, e.g. LiteMedSAM's backend, is part of the folder's). The returned report has the wall
seconds of each stage (:data:`STAGES`; ``weakseg bench label`` prints them).
Image tags are not used yet.

Large images (``tile``): the segmenter trains on ``tile x tile`` pieces cut at native resolution (mask files, box
masks and clicks cut alike, padding ignored) instead of images resized to ``size``, and predicts each image whole
at native resolution by sliding windows overlapping by ``overlap`` (:func:`weakseg.tiling.predict_tiled`).
"""

from __future__ import annotations

import csv
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weakseg import distributed
from weakseg.budget import click_masks
from weakseg.config import TrainConfig
from weakseg.data.folder import FolderDataset
from weakseg.data.prepared import PreparedSplit, prepare
from weakseg.data.sample import IGNORE_INDEX, Sample
from weakseg.data.tiles import crop_tile
from weakseg.data.transforms import fit_sample
from weakseg.errors import ConfigError
from weakseg.evaluate import predict_probabilities
from weakseg.identity import CODE_VERSIONS, digest
from weakseg.io import read_label_image, remove_temporaries, write_json, write_png, write_text
from weakseg.models import build_model
from weakseg.pipeline import holdout
from weakseg.progress import progress_bar
from weakseg.runtime import pick_device, seed_everything
from weakseg.sources.sam import MaskGenerator, build_mask_generator
from weakseg.tiling import predict_tiled
from weakseg.train import fit


@dataclass
class LabelSettings:
    """What ``weakseg label`` does; every field is part of the output folder's identity."""

    generator: str = "litemedsam"
    """Box-prompted mask generator (``weakseg list generators``), or ``none`` for GrabCut alone."""
    generator_options: dict[str, Any] = field(default_factory=dict)
    grabcut: bool = True
    """Also segment each box with GrabCut; pixels where the two masks disagree are left to the segmenter."""
    segmenter: bool | None = None
    """Train a segmenter on all labels and predict unlabelled images (None: when ``min_images`` have labels)."""
    min_images: int = 8
    size: int = 256
    epochs: int = 20
    batch_size: int = 8
    lr: float = 1e-3
    arch: str = "unet"
    encoder: str = "tf_efficientnet_lite0"
    weights: str = "imagenet"
    val_fraction: float = 0.1
    cpu_amp: bool = True
    """bfloat16 training on CPU (about 2x faster at 256 px with AVX-512 BF16)."""
    seed: int = 0
    mask_mode: str = "binary"
    mask_classes: list[str] | None = None
    tile: int | None = None
    """Large images: train on tiles of this size at native resolution, predict by sliding windows (None: resize to
    ``size``)."""
    overlap: int = 64
    """Overlap of the sliding windows (with ``tile``)."""

    def ident(self) -> dict[str, Any]:
        """The settings that identify the output folder (``tile`` and ``overlap`` only when tiling, generator
        options only when given, so that folders made before these settings existed keep their identity)."""
        out = asdict(self)
        if self.tile is None:
            del out["tile"], out["overlap"]
        if not self.generator_options:
            del out["generator_options"]
        return out


@dataclass
class LabelReport:
    out_dir: Path
    images: int
    with_mask: int
    with_boxes: int
    with_clicks: int
    predicted: int
    unlabelled: list[str]
    """Images that got no mask: no labels of their own and no segmenter."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Wall seconds per stage of this process's run (:data:`STAGES`), adding up to its wall time; not written to
    ``label.json`` (which stays the same for the same inputs)."""
    box_generator_load: dict[str, Any] = field(default_factory=dict)
    """The box generator's one-off model load (``load`` seconds) and, for LiteMedSAM on ONNX Runtime, whether
    this run exported the model (``exported``: its first use on this machine)."""


STAGES = ("scan", "decode", "load", "sam", "grabcut", "fuse", "train", "predict", "write")
"""The stages of :func:`label_folder`, in order: ``scan`` (list and fingerprint the folder), ``decode`` (read the
images: for the box generators, then resized for the segmenter), ``load`` (the box generator's model, with
LiteMedSAM's one-off ONNX export), ``sam`` (the box-prompted generator), ``grabcut``, ``fuse`` (box masks into
training labels), ``train`` and ``predict`` (the segmenter), ``write`` (box masks, masks, review.csv). A resumed
run skips what is done, so its stages are shorter. Image tags are not used, so there is no CAM stage."""


class StageClock:
    """Wall seconds per stage, by laps: ``clock.lap("sam")`` charges the time since the previous lap (or since the
    clock was made) to ``sam``. Stages add up over laps, and their sum is the wall time up to the last lap."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._last
        self._last = now

    def move(self, source: str, target: str, seconds: float) -> None:
        """Re-charge ``seconds`` (at most what ``source`` has) from ``source`` to ``target``."""
        seconds = min(seconds, self.seconds.get(source, 0.0))
        if seconds > 0:
            self.seconds[source] -= seconds
            self.seconds[target] = self.seconds.get(target, 0.0) + seconds


def claim(out_dir: Path, ident: dict[str, Any]) -> None:
    """``out_dir`` holds the outputs of ``ident`` only; a folder made with other settings is refused."""
    record = out_dir / "label.json"
    if record.is_file():
        old = json.loads(record.read_text()).get("ident")
        if old != ident:
            changed = sorted(k for k in ident if (old or {}).get(k) != ident[k])
            raise ConfigError(
                f"'{out_dir}' holds labels made with other settings ({', '.join(changed)}): use another --out"
            )
    write_json(record, {"ident": ident})


def fuse(first: np.ndarray, second: np.ndarray | None) -> np.ndarray:
    """Two 0/1 masks → labels where they agree, ``IGNORE_INDEX`` where they do not (one mask: itself)."""
    if second is None:
        return first.astype(np.uint8)
    return np.where(first == second, first, IGNORE_INDEX).astype(np.uint8)


def iou(a: np.ndarray, b: np.ndarray, known: np.ndarray | None = None) -> float:
    """IoU of two 0/1 masks over ``known`` pixels (both empty: 1)."""
    a, b = a.astype(bool), b.astype(bool)
    if known is not None:
        a, b = a & known, b & known
    union = int((a | b).sum())
    return float((a & b).sum() / union) if union else 1.0


def box_mask_makers(settings: LabelSettings) -> list[tuple[str, str, MaskGenerator]]:
    """(folder name under ``boxes/``, stage, generator) of the box generator and GrabCut, as ``settings`` ask."""
    makers: list[tuple[str, str, MaskGenerator]] = []
    if settings.generator != "none":
        generator = build_mask_generator(settings.generator, **settings.generator_options)
        makers.append((settings.generator, "sam", generator))
    if settings.grabcut:
        makers.append(("grabcut", "grabcut", build_mask_generator("grabcut")))
    if not makers:
        raise ConfigError("boxes need a generator or GrabCut (generator 'none' with grabcut off labels nothing)")
    return makers


def box_masks_for(
    ds: FolderDataset,
    makers: list[tuple[str, str, MaskGenerator]],
    out_dir: Path,
    progress: bool,
    clock: StageClock | None = None,
) -> dict[str, list[str]]:
    """Write ``boxes/<generator>/<name>.png`` (and ``boxes/grabcut/``) for every image with boxes and no mask,
    skipping masks already written (a resumed run); returns {name: [the generators' names]}. Under torchrun each
    process segments its share of the images, and every process gets the whole dict. ``clock`` gets the
    ``decode``, ``load``, ``sam``, ``grabcut`` and ``write`` laps."""
    clock = clock or StageClock()
    done: dict[str, list[str]] = {}
    mine = distributed.shard(ds.names)
    with progress_bar(progress and distributed.is_main()) as bar:
        task = bar.add_task("masks from boxes", total=len(mine))
        for name in mine:
            bar.advance(task)
            paths = [out_dir / "boxes" / maker_name / f"{name}.png" for maker_name, _, _ in makers]
            if all(p.is_file() for p in paths):
                done[name] = [m for m, _, _ in makers]
                continue
            sample = ds.try_load(name)
            clock.lap("decode")
            if sample is None or sample.mask is not None or not len(sample.boxes):
                continue
            for (_, stage, maker), path in zip(makers, paths, strict=True):
                mask = maker([sample.image], [sample.boxes])[0]
                clock.lap(stage)
                write_png(path, mask)
                clock.lap("write")
            done[name] = [m for m, _, _ in makers]
    for _, stage, maker in makers:  # a model loaded on first use: its load apart from segmenting
        clock.move(stage, "load", getattr(maker, "load_seconds", 0.0))
    merged = {k: v for share in distributed.gather_objects(done) for k, v in share.items()}
    return {name: merged[name] for name in ds.names if name in merged}


def read_box_masks(out_dir: Path, name: str, generators: list[str]) -> list[np.ndarray]:
    return [read_label_image(out_dir / "boxes" / g / f"{name}.png") for g in generators]


def training_masks(split: PreparedSplit, ds: FolderDataset, out_dir: Path, boxed: dict[str, list[str]]) -> torch.Tensor:
    """(N, S, S) labels of the split's rows: mask files as they are, fused box masks (resized to the model size,
    or cut into the rows' tiles), then clicks on unknown pixels."""
    masks = split.masks.clone() if split.masks is not None else torch.full_like(split.images[:, 0], IGNORE_INDEX)
    fused: dict[str, np.ndarray] = {}  # the current image's (its tiles are consecutive rows)
    for i, name in enumerate(split.image_of):
        if split.labelled[i] or name not in boxed:
            continue
        if name not in fused:
            made = read_box_masks(out_dir, name, boxed[name])
            fused = {name: fuse(made[0], made[1] if len(made) > 1 else None)}
        if split.origins is not None:
            masks[i] = torch.from_numpy(crop_tile(fused[name], split.origins[i], split.size, IGNORE_INDEX))
            continue
        image = np.zeros((*fused[name].shape, 3), np.uint8)
        fitted, _ = fit_sample(Sample(image=image, mask=fused[name], name=name), split.size, "resize")
        masks[i] = torch.from_numpy(fitted.mask)
    clicks = click_masks(split)
    return torch.where((masks == IGNORE_INDEX) & (clicks != IGNORE_INDEX), clicks, masks)


def label_folder(
    root: str | Path,
    out_dir: str | Path,
    settings: LabelSettings | None = None,
    progress: bool = True,
    on_error: str = "raise",
) -> LabelReport:
    """Label every image of the folder dataset at ``root`` (see the module docstring). Launched by torchrun, the
    processes share the work: box masks and the final masks per image, the segmenter's training; rank 0 writes
    ``review.csv`` and ``label.json`` for all."""
    settings = settings or LabelSettings()
    clock = StageClock()
    out_dir = Path(out_dir)
    extra = {"mask_classes": settings.mask_classes} if settings.mask_classes else {}
    ds = FolderDataset(root, split="all", mask_mode=settings.mask_mode, **extra)
    ds.on_error = on_error
    makers = box_mask_makers(settings)
    ident = {"settings": settings.ident(), "files": ds.fingerprint(), "code": CODE_VERSIONS}
    if settings.generator != "none":  # what makes its masks beyond the settings (weights, LiteMedSAM's backend)
        ident["box_generator"] = makers[0][2].identity()
    out_dir.mkdir(parents=True, exist_ok=True)
    distributed.setup()
    main = distributed.is_main()
    distributed.main_first(lambda: claim(out_dir, ident))
    remove_temporaries(out_dir)  # writes an earlier run was killed in
    clock.lap("scan")
    boxed = box_masks_for(ds, makers, out_dir, progress, clock)
    tiling = {"tile": settings.tile} if settings.tile is not None else {}
    split = prepare(ds, settings.size, keep_native=False, use_cache=False, progress=progress, **tiling)
    if split.skipped and main:  # on_error='skip': the images left out, with their reasons
        write_json(out_dir / "skipped.json", split.skipped)
    clock.lap("decode")
    labels = training_masks(split, ds, out_dir, boxed)
    clock.lap("fuse")
    has_labels = (labels != IGNORE_INDEX).flatten(1).any(1)
    use_segmenter = (
        settings.segmenter if settings.segmenter is not None else int(has_labels.sum()) >= settings.min_images
    )
    classes = len(ds.mask_classes)

    by_image = split.rows_by_image()  # one row per image, or its tiles
    names = list(by_image)
    mine = distributed.shard(range(len(names)))  # the images this process writes (all in one process)
    probs: dict[int, torch.Tensor] = {}  # model-size probabilities of whole images (not tiled), by row
    model = None
    if use_segmenter:
        if not bool(has_labels.any()):
            raise ConfigError(f"'{root}': no image has a mask, boxes or clicks to learn from")
        labelled = split.subset([i for i in range(len(split)) if has_labels[i]]).with_masks(labels[has_labels])
        train, val = (
            holdout(labelled, settings.val_fraction, settings.seed)
            if len(set(labelled.image_of)) >= 10  # images, not tiles: a validation split holds out whole images
            else (labelled, None)
        )
        seed_everything(settings.seed)
        model = build_model(settings.arch, settings.encoder, classes, settings.weights)
        config = TrainConfig(
            epochs=settings.epochs,
            batch_size=settings.batch_size,
            lr=settings.lr,
            loss="ce+dice",
            augment=["hflip"],
            tta=["hflip"],
            progress=progress,
            cpu_amp=settings.cpu_amp,
        )
        device = pick_device(config.device)
        meta = {"size": settings.size, "fit": "resize", "mask_classes": ds.mask_classes}
        if settings.tile is not None:
            meta |= {"size": settings.tile, "tile": settings.tile, "overlap": settings.overlap}
        fit(
            model,
            train,
            val,
            config,
            out_dir / "model",
            device,
            settings.seed,
            run_key={"label": digest(ident)},
            meta=meta,
        )
        clock.lap("train")
        model.eval()
        if not split.tiled:
            with torch.no_grad():
                for s in range(0, len(mine), 16):
                    batch = mine[s : s + 16]
                    images = split.images[batch].to(device).float().div_(255)
                    probs.update(
                        zip(batch, predict_probabilities(model, images, config.tta, config.amp).cpu(), strict=True)
                    )
        clock.lap("predict")

    def predict(k: int) -> tuple[np.ndarray | None, float]:
        """Image k's predicted mask at native resolution and the segmenter's mean confidence (None, NaN without
        a segmenter): whole images from the probabilities at model size, a tiled split's by sliding windows."""
        if model is None:
            return None, float("nan")
        if split.tiled:
            image, _ = split.assemble(by_image[names[k]])
            native = predict_tiled(model, image, split.size, settings.overlap, device=device, tta=config.tta)
            return native.argmax(0).astype(np.uint8), float(native.max(0).mean())
        native = split.geometry[k].to_native(probs[k])
        return native.argmax(0).numpy().astype(np.uint8), float(probs[k].max(0).values.mean())

    rows, predicted, unlabelled = [], 0, []
    with progress_bar(progress and main) as bar:
        task = bar.add_task("writing masks", total=len(mine))
        for k in mine:
            name, image_rows = names[k], by_image[names[k]]
            bar.advance(task)
            prediction, confidence = predict(k)
            has_mask, clicked = split.labelled[image_rows[0]], any(len(split.points[r]) for r in image_rows)
            agreements, sources = [], []
            if has_mask:
                sample = ds.load(name)
                mask, sources = sample.mask, ["mask"]
            elif name in boxed:
                made = read_box_masks(out_dir, name, boxed[name])
                sources = list(boxed[name])
                if len(made) > 1:
                    agreements.append(iou(made[0], made[1]))
                if prediction is not None:
                    agreements += [iou(prediction > 0, m) for m in made]
                    mask = prediction
                    predicted += 1
                else:  # no segmenter to resolve disagreements: the generator's mask (GrabCut's without one)
                    mask = made[0]
            elif prediction is not None:
                mask, predicted = prediction, predicted + 1
                sources = ["clicks"] if clicked else []
            else:
                unlabelled.append(name)
                continue
            if clicked and "clicks" not in sources:
                sources.append("clicks")
            write_png(out_dir / "masks" / f"{name}.png", mask.astype(np.uint8))
            score = float(np.mean(agreements)) if agreements else (1.0 if has_mask else confidence)
            rows.append({"name": name, "score": score, "confidence": confidence, "sources": "+".join(sources)})
    shares = distributed.gather_objects((rows, predicted, unlabelled))  # every process's images
    rows, predicted = [r for share in shares for r in share[0]], sum(share[1] for share in shares)
    unlabelled = sorted((n for share in shares for n in share[2]), key=names.index)
    rows.sort(key=lambda r: (-1.0 if np.isnan(r["score"]) else r["score"], r["name"]))  # unscored first

    def text(value: float) -> str:
        return "" if np.isnan(value) else f"{value:.4f}"

    lines = ["name,score,confidence,sources"]
    lines += [f"{r['name']},{text(r['score'])},{text(r['confidence'])},{r['sources']}" for r in rows]
    if main:
        write_text(out_dir / "review.csv", "\n".join(lines) + "\n")
    report = LabelReport(
        out_dir=out_dir,
        images=len(names),
        with_mask=sum(split.labelled[rows[0]] for rows in by_image.values()),
        with_boxes=len(boxed),
        with_clicks=sum(any(len(split.points[r]) for r in rows) for rows in by_image.values()),
        predicted=predicted,
        unlabelled=unlabelled,
    )
    summary = {k: v for k, v in asdict(report).items() if k not in ("out_dir", "seconds", "box_generator_load")}
    if main:
        write_json(out_dir / "label.json", {"ident": ident, "report": summary, "segmenter": use_segmenter})
    distributed.barrier()  # every process returns with the whole folder written
    clock.lap("write")
    report.seconds = {stage: round(clock.seconds[stage], 3) for stage in STAGES if stage in clock.seconds}
    if settings.generator != "none":
        generator = makers[0][2]
        report.box_generator_load = {
            "load": round(getattr(generator, "load_seconds", 0.0), 3),
            **({"exported": generator.exported} if hasattr(generator, "exported") else {}),
        }
    return report


def read_review(path: str | Path) -> list[dict[str, str]]:
    """The rows of a ``review.csv``, worst first."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
