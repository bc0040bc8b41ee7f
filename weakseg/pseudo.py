"""``weakseg pseudo-label``: CAM -> refinement -> one PNG mask per image, streamed over a dataset in chunks
(memory does not grow with the dataset) and resumable: ``pseudo.json`` records what produced the folder's masks
(classifier weights, CAM, refinement, sizes, dataset files), and only a run with the same record skips the
images already done; another record is refused (or, with ``overwrite``, the old outputs are removed first)."""

from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from weakseg import distributed
from weakseg.config import CamConfig
from weakseg.data.base import SegmentationDataset
from weakseg.data.sample import NEGATIVE_TAG, negative_tag
from weakseg.data.transforms import Geometry, fit_sample
from weakseg.errors import ConfigError
from weakseg.identity import CODE_VERSIONS, bytes_digest, digest
from weakseg.io import remove_temporaries, write_json, write_png
from weakseg.models.classifier import Classifier
from weakseg.progress import progress_bar
from weakseg.refine import Refiner, parse_pipeline
from weakseg.sources.cam import cam_maps
from weakseg.visualize import heatmap, overlay, panel

REFINE_AT = ("input", "native")
OUTPUTS = ("masks", "soft", "overlays")


def weights_digest(model: torch.nn.Module) -> str:
    """A digest of a model's weights (every tensor of its state dict, in order)."""

    def chunks():
        for name, tensor in model.state_dict().items():
            yield name.encode()
            yield tensor.detach().cpu().contiguous().numpy().tobytes()

    return bytes_digest(chunks(), 20)


def claim_folder(out_dir: Path, ident: dict, overwrite: bool) -> None:
    """Make ``out_dir`` hold outputs of ``ident`` only: a folder made by another ident is refused, or emptied of
    its outputs with ``overwrite``; then ``pseudo.json`` records ``ident``."""
    record = out_dir / "pseudo.json"
    old = json.loads(record.read_text()) if record.is_file() else None
    has_outputs = any((out_dir / kind).is_dir() for kind in OUTPUTS)
    if has_outputs and old != ident:
        if not overwrite:
            changed = sorted(k for k in ident if (old or {}).get(k) != ident[k]) if old else ["(no pseudo.json)"]
            raise ConfigError(
                f"'{out_dir}' holds pseudo-labels made with other settings ({', '.join(changed)}): "
                "choose another --out, or --overwrite to replace them"
            )
        for kind in OUTPUTS:
            shutil.rmtree(out_dir / kind, ignore_errors=True)
    write_json(record, ident)


@dataclass
class PseudoLabelReport:
    written: int
    skipped: int
    """Images already done by an earlier run with the same settings."""
    out_dir: Path
    unreadable: list[dict[str, str]] = field(default_factory=list)
    """Images left out because their files are bad (``on_error='skip'``), also in ``skipped.json``."""


def _to_native(values: np.ndarray, geometry: Geometry) -> np.ndarray:
    """A (S, S) float map at model resolution, bilinearly resized onto the native image grid."""
    return geometry.to_native(torch.from_numpy(values)[None].float())[0].numpy()


def pseudo_label_dataset(
    dataset: SegmentationDataset,
    classifier: Classifier,
    out_dir: str | Path,
    method: str = "gradcam",
    refine: str | list | None = "otsu",
    size: int = 160,
    fit: str = "resize",
    cam: CamConfig | None = None,
    refine_at: str = "input",
    soft: bool = True,
    overlays: bool = False,
    workers: int | None = None,
    chunk: int = 64,
    device: torch.device | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> PseudoLabelReport:
    """Write ``masks/<name>.png`` (0 background, 255 foreground, native size) for every image of ``dataset``,
    plus ``soft/<name>.png`` (the CAM as 0-255) and ``overlays/<name>.jpg`` when asked.

    The CAM is computed at ``size``; refinement runs on the model-size image (``refine_at='input'``, fast)
    or on the native image with the map resized onto it (``'native'``, sharper edges, slower).
    An image tagged ``none`` (no foreground class, :data:`~weakseg.data.sample.NEGATIVE_TAG`) gets an empty mask.

    An image whose files are bad stops the run, or with the dataset's ``on_error='skip'`` is left out and listed
    with its reason in ``skipped.json`` (it is tried again by the next run).
    """
    if not len(dataset):
        raise ConfigError(f"split '{dataset.split}' of '{dataset.root}' holds no images")
    if refine_at not in REFINE_AT:
        raise ConfigError(f"refine_at must be one of {REFINE_AT}, not '{refine_at}'")
    out_dir = Path(out_dir)
    pipeline = parse_pipeline(refine)
    cam = cam or CamConfig()
    ident = {
        "classifier": weights_digest(classifier),
        "method": method,
        "refine": str(pipeline),
        "size": size,
        "fit": fit,
        "cam": cam.model_dump(exclude={"batch_size"}),
        "refine_at": refine_at,
        "dataset": {"kind": type(dataset).__name__, "split": dataset.split, "names": digest(dataset.names)},
        "files": dataset.fingerprint(),
        "code": {k: CODE_VERSIONS[k] for k in ("cams", "refine")},
    }
    negative = negative_tag(dataset.tag_classes)  # images tagged 'none': zero maps, empty masks
    if negative is not None:
        ident["negatives"] = NEGATIVE_TAG
    distributed.setup()  # under torchrun each process labels its share of the images (every world-th one)
    distributed.main_first(lambda: claim_folder(out_dir, ident, overwrite))
    for folder in (out_dir, *(out_dir / kind for kind in OUTPUTS)):  # writes an earlier run was killed in
        remove_temporaries(folder, recursive=False)
    mask_dir = out_dir / "masks"
    mine = distributed.shard(dataset.names)
    todo = [n for n in mine if not (mask_dir / f"{n}.png").is_file()]
    skipped = len(mine) - len(todo)
    already_unreadable = len(dataset.skipped)
    written = 0
    classifier.eval()
    device = device or next(classifier.parameters()).device
    with (
        Refiner(pipeline, workers) as refiner,
        ThreadPoolExecutor(max_workers=2) as readers,
        progress_bar(progress and distributed.is_main(), transient=False) as bar,
    ):
        task = bar.add_task("pseudo-labels", total=len(mine), completed=skipped)
        for start in range(0, len(todo), chunk):
            names = todo[start : start + chunk]
            samples = [s for s in readers.map(dataset.try_load, names) if s is not None]
            bar.advance(task, len(names) - len(samples))
            if not samples:
                continue
            fitted = [fit_sample(s, size, fit) for s in samples]
            images = torch.stack([torch.from_numpy(f.image).permute(2, 0, 1) for f, _ in fitted])
            maps = cam_maps(classifier, images, [s.labels for s in samples], method, cam, device, negative=negative)
            maps = maps.numpy()
            natives = [np.clip(_to_native(m, g), 0, 1) for m, (_, g) in zip(maps, fitted, strict=True)]
            if refine_at == "input":  # refine at model size, then bring the mask back smoothly
                refined = refiner.map([f.image for f, _ in fitted], list(maps))
                masks = [_to_native(m.astype(np.float32), g) >= 0.5 for m, (_, g) in zip(refined, fitted, strict=True)]
            else:
                masks = [m > 0 for m in refiner.map([s.image for s in samples], natives)]
            for sample, mask, native in zip(samples, masks, natives, strict=True):
                mask = mask.astype(np.uint8) * (negative is None or sample.labels != [negative])  # none: empty
                if soft:
                    write_png(out_dir / "soft" / f"{sample.name}.png", (np.clip(native, 0, 1) * 255).astype(np.uint8))
                if overlays:
                    picture = panel([heatmap(sample.image, native), overlay(sample.image, mask)], height=256)
                    write_png(out_dir / "overlays" / f"{sample.name}.jpg", picture)
                write_png(mask_dir / f"{sample.name}.png", mask * 255)  # last: its presence marks the image done
            written += len(samples)
            bar.advance(task, len(samples))
    shares = distributed.gather_objects((written, skipped, dataset.skipped[already_unreadable:]))  # every process's
    written, skipped = sum(share[0] for share in shares), sum(share[1] for share in shares)
    order = {name: i for i, name in enumerate(dataset.names)}  # readers (and processes) finish in any order
    unreadable = sorted((s for share in shares for s in share[2]), key=lambda item: order.get(item["name"], len(order)))
    if dataset.on_error == "skip" and distributed.is_main():
        write_json(out_dir / "skipped.json", unreadable)
    distributed.barrier()  # every process returns with the whole folder written
    return PseudoLabelReport(written, skipped, out_dir, unreadable)
