"""Prediction on image files: PNG masks (class indices) and overlay pictures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from weakseg.data.sample import Sample
from weakseg.data.transforms import fit_sample
from weakseg.errors import DataFileError
from weakseg.evaluate import predict_probabilities
from weakseg.io import IMAGE_EXTENSIONS, list_images, read_image, write_json, write_png
from weakseg.models.segmenter import Segmenter
from weakseg.progress import progress_bar
from weakseg.tiling import predict_tiled
from weakseg.visualize import overlay


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """Image files named directly or found in the named folders."""
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += list_images(item)
        elif item.is_file() and item.suffix.lower() in IMAGE_EXTENSIONS:
            files.append(item)
        else:
            raise DataFileError(item, "not an image file or folder")
    return files


@torch.no_grad()
def predict_files(
    model: Segmenter,
    files: list[Path],
    out_dir: str | Path,
    size: int,
    fit: str = "resize",
    device: torch.device | None = None,
    overlays: bool = True,
    tta: list[str] | tuple[str, ...] = (),
    progress: bool = True,
    on_error: str = "raise",
    tile: int | None = None,
    overlap: int = 64,
) -> list[Path]:
    """Write ``<stem>.png`` (class indices at native resolution) and ``<stem>_overlay.jpg`` per image.

    An unreadable image stops with one line naming it; with ``on_error='skip'`` it is left out and listed with its
    reason in ``out_dir/skipped.json``. With ``tile`` the image is not resized: it is predicted at its native
    resolution in overlapping ``tile x tile`` windows (:func:`weakseg.tiling.predict_tiled`), memory bounded."""
    if on_error not in ("raise", "skip"):
        raise ValueError(f"on_error must be 'raise' or 'skip', not '{on_error}'")
    out_dir = Path(out_dir)
    device = device or next(model.parameters()).device
    model.eval().to(device)
    written, skipped = [], []
    with progress_bar(progress) as bar:
        task = bar.add_task("predicting", total=len(files))
        for path in files:
            try:
                image = read_image(path)
            except DataFileError as err:
                if on_error != "skip":
                    raise
                skipped.append({"name": path.stem, "file": str(err.path), "reason": err.problem})
                bar.advance(task)
                continue
            if tile:
                probs = predict_tiled(model, image, tile, overlap, device=device, tta=tta)
                mask = probs.argmax(0).astype(np.uint8)
            else:
                fitted, geometry = fit_sample(Sample(image=image, mask=None, name=path.stem), size, fit)
                x = torch.from_numpy(fitted.image).permute(2, 0, 1)[None].to(device).float() / 255
                probs = predict_probabilities(model, x, tta)[0]
                mask = geometry.to_native(probs).argmax(0).cpu().numpy().astype(np.uint8)
            write_png(out_dir / f"{path.stem}.png", mask)
            if overlays:
                write_png(out_dir / f"{path.stem}_overlay.png", overlay(image, mask))
            written.append(out_dir / f"{path.stem}.png")
            bar.advance(task)
    if on_error == "skip":
        write_json(out_dir / "skipped.json", skipped)
    return written
