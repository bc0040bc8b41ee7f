"""One self-contained HTML page per run folder: summary table, training curves, example pictures and, where a
checkpoint and the data are at hand, a qualitative grid (image | ground truth | prediction) of a fixed seeded
sample plus the worst and best images by IoU. Pictures are embedded as base64 PNG, so the page opens offline.

Three kinds of folder are understood: an experiment (``results.json`` and ``<row>-<digest>/seed<k>/``), a single
``weakseg train`` run (``config.json``, ``metrics.json``, ``log.csv``, ``best.pt``) and a ``weakseg label`` folder
(``review.csv``, ``masks/``, ``label.json``).
"""

from __future__ import annotations

import base64
import csv
import html
import io
import itertools
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from weakseg.errors import DataFileError
from weakseg.io import write_text

SUMMARY_METRICS = ("dice", "iou", "miou", "precision", "recall", "val_dice", "val_iou")
EXAMPLE_PICTURES = ("source_examples.png", "pseudo_examples.png")
GRID_COUNT = 4  # images in each part of a qualitative grid: seeded sample, worst, best
CSS = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; } h3 { font-size: 1.05em; }
table { border-collapse: collapse; font-size: 0.85em; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
th { background: #f0f0f0; }
img { max-width: 100%; display: block; margin: 6px 0; border: 1px solid #ddd; }
.caption { font-size: 0.85em; color: #555; }
"""


def png_data_uri(image: np.ndarray | bytes) -> str:
    """A ``data:image/png;base64`` URI of an RGB array (H, W, 3) or of PNG file bytes."""
    if isinstance(image, np.ndarray):
        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG")
        image = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(image).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{html.escape(alt)}">'


def _table(header: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        numeric = isinstance(value, (int, float)) or bool(re.fullmatch(r"[-+]?[\d.]+( ± [\d.]+)?", str(value)))
        return f'<td class="num">{html.escape(str(value))}</td>' if numeric else f"<td>{html.escape(str(value))}</td>"

    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _setting_text(value: Any) -> str:
    return "+".join(map(str, value)) if isinstance(value, list) else str(value)


def _labels_text(labels: dict[str, Any]) -> str:
    """Labels consumed, e.g. 'masks 8, boxes 30 (12 images)'."""
    images = labels.get("images", {}) if isinstance(labels.get("images"), dict) else {}
    parts = []
    for kind, count in labels.items():
        if kind != "images" and isinstance(count, (int, float)) and count:
            shown = f"{kind} {count:g}"
            if images.get(kind) not in (None, count):
                shown += f" ({images[kind]} images)"
            parts.append(shown)
    return ", ".join(parts) or "none"


def read_log(path: Path) -> dict[str, list[float]]:
    """The numeric columns of a ``log.csv`` (missing values as NaN)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list[float]] = {}
    for name in ("epoch", "train_loss", "val_loss", "val_iou", "val_dice"):
        values = []
        for row in rows:
            try:
                values.append(float(row.get(name) or "nan"))
            except ValueError:
                values.append(math.nan)
        columns[name] = values
    return columns


def curves_figure(logs: dict[str, dict[str, list[float]]], title: str) -> np.ndarray | None:
    """Validation Dice/IoU and training loss per epoch, one line per log (seed); an RGB array, or None when no
    log has any epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    logs = {name: log for name, log in logs.items() if log["epoch"]}
    if not logs:
        return None
    figure, (scores, losses) = plt.subplots(1, 2, figsize=(10, 3.4), dpi=90)
    for k, (name, log) in enumerate(logs.items()):
        epochs = log["epoch"]
        if any(b <= a for a, b in itertools.pairwise(epochs)):  # several stages: number them in order
            epochs = list(range(1, len(epochs) + 1))
        color = f"C{k % 10}"
        scores.plot(epochs, log["val_dice"], color=color, marker=".", label=f"{name} Dice")
        scores.plot(epochs, log["val_iou"], color=color, linestyle="--", label=f"{name} IoU")
        losses.plot(epochs, log["train_loss"], color=color, marker=".", label=name)
    scores.set(xlabel="epoch", ylabel="validation score", title="validation Dice (—) and IoU (--)")
    losses.set(xlabel="epoch", ylabel="training loss", title="training loss")
    for axes in (scores, losses):
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.canvas.draw()
    picture = np.asarray(figure.canvas.buffer_rgba())[..., :3].copy()
    plt.close(figure)
    return picture


def _examples_html(folder: Path, caption: str) -> str:
    parts = []
    for name in EXAMPLE_PICTURES:
        path = folder / name
        if path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n":
            parts.append(
                f'<p class="caption">{html.escape(caption)}: {name}</p>{_img(png_data_uri(path.read_bytes()), name)}'
            )
    return "".join(parts)


def row_folders(run_dir: Path, setting: dict[str, Any]) -> list[Path]:
    """The ``<row>-<digest>`` folders of a results row's setting (without its stage), the newest first when stale
    digests are left over."""
    from weakseg.experiments.runner import row_id

    pattern = re.compile(re.escape(row_id(setting)) + r"-[0-9a-f]{10}")
    found = [p for p in run_dir.iterdir() if p.is_dir() and pattern.fullmatch(p.name)]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _metric_keys(row: dict[str, Any], name: str) -> list[str]:
    """The keys of a results row's metric ``name``: itself, else per source (``<source>.<name>``)."""
    return [name] if name in row["metrics"] else [k for k in row["metrics"] if k.endswith("." + name)]


def _experiment_body(run_dir: Path) -> tuple[str, str]:
    results = json.loads((run_dir / "results.json").read_text())
    rows = results.get("rows", [])
    title = f"Experiment {results.get('experiment', run_dir.name)}"
    keys = list(dict.fromkeys(k for row in rows for k in row["setting"]))
    metrics = [m for m in SUMMARY_METRICS if any(_metric_keys(row, m) for row in rows)]

    def stat(row: dict[str, Any], name: str) -> str:
        """The metric, or each source's (``boxes.dice``: a scored weak-label row) prefixed by the source."""
        shown = []
        for key in _metric_keys(row, name):
            s = row["metrics"][key]
            shown.append(
                (f"{key.removesuffix('.' + name)} " if key != name else "") + f"{s['mean']:.3f} ± {s['std']:.3f}"
            )
        return "; ".join(shown)

    table_rows = [
        [*(_setting_text(row["setting"].get(k, "")) for k in keys), len(row.get("seeds", []))]
        + [stat(row, m) for m in metrics]
        + [_labels_text(row.get("labels", {}))]
        for row in rows
    ]
    body = ["<h2>Summary</h2>", '<p class="caption">mean ± std over seeds</p>']
    body.append(_table([*keys, "seeds", *metrics, "labels consumed"], table_rows))
    from weakseg.experiments.plot import result_figures

    figures = result_figures(results, run_dir)  # also kept as PNG files next to results.json
    if figures:
        body.append("<h2>Plots</h2>")
        body.extend(_img(png_data_uri(path.read_bytes()), path.stem) for path in figures)
    body.append("<h2>Runs</h2>")
    runs: dict[str, tuple[dict[str, Any], list[int]]] = {}  # the stages of a row share its run folders
    for row in rows:
        setting = {k: v for k, v in row["setting"].items() if k != "stage"}
        runs.setdefault(json.dumps(setting, sort_keys=True), (setting, []))[1].extend(row.get("seeds", []))
    for setting, seeds in runs.values():
        name = ", ".join(f"{k}={_setting_text(v)}" for k, v in setting.items())
        folders = row_folders(run_dir, setting)
        logs, examples = {}, ""
        for seed in sorted(set(seeds)):
            seed_dir = next((f / f"seed{seed}" for f in folders if (f / f"seed{seed}").is_dir()), None)
            if seed_dir is None:
                continue
            if (seed_dir / "log.csv").is_file():
                logs[f"seed {seed}"] = read_log(seed_dir / "log.csv")
            examples = examples or _examples_html(seed_dir, f"seed {seed}")
        body.append(f"<h3>{html.escape(name)}</h3>")
        picture = curves_figure(logs, name)
        body.append(_img(png_data_uri(picture), f"training curves: {name}") if picture is not None else "")
        if picture is None:
            body.append('<p class="caption">no training log in this folder</p>')
        body.append(examples)
    return title, "\n".join(body)


def _prediction_grid(run_dir: Path, data_root: Path, count: int = GRID_COUNT, seed: int = 0) -> str:
    """Image | ground truth | prediction for a seeded sample of test images and the worst and best by IoU."""
    import torch

    from weakseg.config import RunConfig
    from weakseg.data.prepared import iterate_batches, prepare
    from weakseg.evaluate import predict_probabilities
    from weakseg.methods.base import load_dataset
    from weakseg.models import load_model
    from weakseg.visualize import overlay, panel

    config = RunConfig.model_validate(json.loads((run_dir / "config.json").read_text()))
    ds = config.dataset
    tiles = {"tile": ds.tile} if ds.tile is not None else {}  # a tiled run: its test tiles, at native resolution
    split = prepare(load_dataset(config, data_root, ds.test_split), ds.size, ds.fit, **tiles)
    if split.masks is None or not len(split):
        return '<p class="caption">the test split has no ground-truth masks: no qualitative grid</p>'
    model = load_model(run_dir / "best.pt").eval()
    predictions = torch.zeros_like(split.masks)
    with torch.no_grad():
        for images, _, index in iterate_batches(split, 16, torch.device("cpu")):
            predictions[index] = predict_probabilities(model, images, amp=False).argmax(1).to(predictions.dtype)
    ious = []
    for truth, predicted in zip(split.masks, predictions, strict=True):
        known = truth != 255
        t, p = (truth > 0) & known, (predicted > 0) & known
        union = int((t | p).sum())
        ious.append(int((t & p).sum()) / union if union else 1.0)
    order = np.argsort(ious, kind="stable")
    sample = np.random.default_rng(seed).choice(len(split), min(count, len(split)), replace=False)
    parts = []
    for caption, chosen in (
        (f"seeded sample (seed {seed})", sample),
        ("worst by IoU", order[:count]),
        ("best by IoU", order[::-1][:count]),
    ):
        rows = []
        for i in chosen.tolist():
            image = split.images[i].permute(1, 2, 0).numpy()
            cells = [image, overlay(image, split.masks[i].numpy()), overlay(image, predictions[i].numpy())]
            rows.append(panel(cells, height=128))
        names = ", ".join(f"{split.names[i]} (IoU {ious[i]:.3f})" for i in chosen.tolist())
        parts.append(f'<h3>{caption}</h3><p class="caption">{html.escape(names)}</p>')
        parts.append(_img(png_data_uri(np.concatenate(rows, axis=0)), caption))
    where = "tiles of the test split, native resolution" if tiles else "test split, model input size"
    header = f'<p class="caption">columns: image | ground truth | prediction ({where})</p>'
    return header + "".join(parts)


def _run_body(run_dir: Path, data_root: Path | None) -> tuple[str, str]:
    raw = json.loads((run_dir / "metrics.json").read_text()) if (run_dir / "metrics.json").is_file() else []
    stages = raw if isinstance(raw, list) else [{"stage": "final", "metrics": raw}]
    body = ["<h2>Summary</h2>"]
    for stage in stages:
        values = stage.get("metrics", {})
        table_rows = [
            [k, f"{v:.4f}" if isinstance(v, float) else v] for k, v in values.items() if not isinstance(v, list)
        ]
        body.append(f"<h3>{html.escape(str(stage.get('stage', '')))}</h3>" + _table(["metric", "value"], table_rows))
    if (run_dir / "labels.json").is_file():
        body.append(
            f"<p>labels consumed: {html.escape(_labels_text(json.loads((run_dir / 'labels.json').read_text())))}</p>"
        )
    if (run_dir / "log.csv").is_file():
        picture = curves_figure({"run": read_log(run_dir / "log.csv")}, run_dir.name)
        if picture is not None:
            body.append("<h2>Training curves</h2>" + _img(png_data_uri(picture), "training curves"))
    examples = _examples_html(run_dir, "training labels")
    body.append(f"<h2>Training labels</h2>{examples}" if examples else "")
    body.append("<h2>Predictions</h2>")
    if data_root is not None and (run_dir / "best.pt").is_file() and (run_dir / "config.json").is_file():
        body.append(_prediction_grid(run_dir, data_root))
    else:
        body.append('<p class="caption">no qualitative grid: it needs best.pt, config.json and --data-root</p>')
    return f"Run {run_dir.name}", "\n".join(body)


def _find_image(images_dir: Path, name: str) -> Path | None:
    from weakseg.io import IMAGE_EXTENSIONS

    return next((p for p in sorted(images_dir.glob(f"{name}.*")) if p.suffix.lower() in IMAGE_EXTENSIONS), None)


def _label_body(run_dir: Path, data_root: Path | None, count: int = GRID_COUNT) -> tuple[str, str]:
    from weakseg.labelling import read_review

    review = read_review(run_dir / "review.csv")
    body = ["<h2>Review</h2>", '<p class="caption">worst first (unscored first)</p>']
    body.append(_table(["name", "score", "confidence", "sources"], [list(r.values()) for r in review]))
    images_dir = None
    if data_root is not None:
        images_dir = data_root / "images" if (data_root / "images").is_dir() else data_root
    if images_dir is None or not images_dir.is_dir():
        body.append('<p class="caption">no picture grid: give the labelled folder as --data-root</p>')
        return f"Labels {run_dir.name}", "\n".join(body)
    import cv2

    from weakseg.io import read_image
    from weakseg.visualize import overlay, panel

    scored = [r for r in review if r["score"]]
    for caption, chosen in (("worst by review score", scored[:count]), ("best by review score", scored[::-1][:count])):
        rows, names = [], []
        for r in chosen:
            image_path, mask_path = _find_image(images_dir, r["name"]), run_dir / "masks" / f"{r['name']}.png"
            if image_path is None or not mask_path.is_file():
                continue
            image = read_image(image_path)
            mask = cv2.imread(str(mask_path), cv2.IMREAD_UNCHANGED)
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
            rows.append(panel([image, overlay(image, mask)], height=160))
            names.append(f"{r['name']} ({float(r['score']):.3f})")
        if rows:
            width = max(row.shape[1] for row in rows)
            rows = [np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255) for row in rows]
            body.append(f'<h3>{caption}</h3><p class="caption">image | mask; {html.escape(", ".join(names))}</p>')
            body.append(_img(png_data_uri(np.concatenate(rows, axis=0)), caption))
    return f"Labels {run_dir.name}", "\n".join(body)


def write_report(run_dir: str | Path, data_root: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the HTML report of an experiment, train or label folder to ``out`` (default ``run_dir/report.html``).
    ``data_root``: where the dataset roots of the config are (train run) or the labelled folder (label run)."""
    run_dir = Path(run_dir)
    data_root = Path(data_root) if data_root is not None else None
    if (run_dir / "results.json").is_file():
        title, body = _experiment_body(run_dir)
    elif (run_dir / "review.csv").is_file():
        title, body = _label_body(run_dir, data_root)
    elif (run_dir / "metrics.json").is_file() or (run_dir / "log.csv").is_file():
        title, body = _run_body(run_dir, data_root)
    else:
        raise DataFileError(run_dir, "not a run folder: no results.json, review.csv, metrics.json or log.csv")
    page = (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f"<title>{html.escape(title)}</title>"
        f"<style>{CSS}</style></head>\n<body><h1>{html.escape(title)}</h1>\n"
        f'<p class="caption">{html.escape(str(run_dir))}</p>\n{body}\n</body></html>\n'
    )
    out = Path(out) if out is not None else run_dir / "report.html"
    write_text(out, page)
    return out
