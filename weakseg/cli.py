"""The ``weakseg`` command."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from weakseg.errors import DataFileError, WeaksegError

app = typer.Typer(
    help="weakseg: from cheap labels to pixel masks, measured honestly.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
experiment_app = typer.Typer(help="Run experiment specs (grids of settings over seeds).", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks that print one JSON line.", no_args_is_help=True)
list_app = typer.Typer(help="List registered models, datasets and methods.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(bench_app, name="bench")
app.add_typer(list_app, name="list")
console = Console()
err_console = Console(stderr=True)
_json_output = {"on": False}  # weakseg --json: the command's result as one JSON object on stdout


@app.callback()
def options(
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or messages (errors still go to stderr).")
    ] = False,
    json_output: Annotated[
        bool, typer.Option("--json", help="Print only the command's result, as one JSON object on stdout.")
    ] = False,
) -> None:
    """weakseg: from cheap labels to pixel masks, measured honestly."""
    from weakseg.progress import set_quiet

    _json_output["on"] = json_output
    console.quiet = quiet or json_output or os.environ.get("RANK", "0") != "0"
    set_quiet(quiet or json_output)


def _jsonable(value: Any) -> Any:
    """``value`` with paths as strings, dataclasses as dicts and NaN / infinity as null (strict JSON)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def _emit(**result: Any) -> None:
    """The command's result: with ``weakseg --json``, one JSON object on stdout (rank 0 only under torchrun)."""
    if _json_output["on"] and os.environ.get("RANK", "0") == "0":
        sys.stdout.write(json.dumps(_jsonable(result)) + "\n")
        sys.stdout.flush()


def _results(results: list) -> list[dict[str, Any]]:
    return [{"stage": r.stage, "setting": r.setting, "metrics": r.metrics} for r in results]


Overrides = Annotated[list[str] | None, typer.Option("--set", help="Override a config value: KEY=VALUE (dotted).")]
DataRoot = Annotated[Path, typer.Option(help="Folder that dataset roots in the config are relative to.")]
OnError = Annotated[
    str,
    typer.Option(
        "--on-error",
        help="A bad data file (unreadable, truncated, wrong values): 'raise' stops with one line naming it; 'skip' "
        "leaves the item out, goes on and lists every skipped item with its reason in skipped.json.",
    ),
]


GeneratorOption = Annotated[
    list[str] | None,
    typer.Option(
        "--generator-option",
        help="KEY=VALUE option of the box generator (repeatable), e.g. backend=torch (LiteMedSAM in PyTorch "
        "float32, as before; default on a CPU: ONNX Runtime) or threshold=0.3.",
    ),
]


def _generator_options(items: list[str] | None) -> dict[str, Any]:
    """``--generator-option KEY=VALUE`` items as a dict, each value as JSON when it parses (numbers, booleans),
    else as text."""
    options: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise WeaksegError(f"--generator-option takes KEY=VALUE, not '{item}'")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return options


def _on_error(policy: str) -> str:
    if policy not in ("raise", "skip"):
        raise WeaksegError(f"--on-error must be 'raise' or 'skip', not '{policy}'")
    return policy


def _report_skipped(items: list, where: Path) -> None:
    """One line: how many items were skipped and the file that lists them."""
    console.print(f"skipped {len(items)} item(s) with bad files; the list with reasons: {where}")


def metrics_table(metrics: dict, title: str) -> Table:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("iou", "dice", "accuracy", "precision", "recall", "miou", "miou_multiclass_images", "images"):
        if key in metrics:
            value = metrics[key]
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    return table


def _print_results(results: list) -> None:
    for result in results:
        console.print(metrics_table(result.metrics, f"{result.stage} ({result.metrics.get('images', '?')} images)"))


@app.command()
def train(
    config: Annotated[Path | None, typer.Option("--config", "-c", help="Run config YAML.")] = None,
    data_root: DataRoot = Path("."),
    out: Annotated[Path, typer.Option(help="Run directory (checkpoints, log.csv, metrics.json).")] = Path("runs/train"),
    seed: Annotated[int | None, typer.Option(help="Seed (overrides the config).")] = None,
    download: Annotated[bool, typer.Option(help="Fetch the dataset's official archive if it is missing.")] = False,
    on_error: OnError = "raise",
    overrides: Overrides = None,
) -> None:
    """Train a segmenter as configured (resumes from OUT/last.pt when the setup is the same) and test it."""
    from weakseg.config import load_run_config
    from weakseg.pipeline import run

    extra = ([f"seed={seed}"] if seed is not None else []) + (["dataset.download=true"] if download else [])
    extra += [f"dataset.on_error={_on_error(on_error)}"] if on_error != "raise" else []
    cfg = load_run_config(config, (overrides or []) + extra)
    results = run(cfg, out, data_root)
    _print_results(results)
    skipped = []
    if cfg.dataset.on_error == "skip":
        skipped = json.loads((out / "skipped.json").read_text())
        _report_skipped(skipped, out / "skipped.json")
    console.print(f"run directory: {out}")
    _emit(run_dir=out, results=_results(results), skipped=skipped)


@app.command()
def evaluate(
    checkpoint: Annotated[
        Path | None, typer.Option(help="Model checkpoint (best.pt) or ONNX model (.onnx) to score.")
    ] = None,
    pred_dir: Annotated[Path | None, typer.Option(help="Folder of predicted PNG masks to score instead.")] = None,
    dataset: Annotated[str, typer.Option(help="Dataset name (oxford_pet, kvasir, folder).")] = "oxford_pet",
    root: Annotated[Path, typer.Option(help="Dataset root folder.")] = Path("oxford-iiit-pet-subset"),
    split: Annotated[str, typer.Option(help="Split to score on.")] = "test",
    json_out: Annotated[Path | None, typer.Option("--json", help="Also write the metrics here.")] = None,
    download: Annotated[bool, typer.Option(help="Fetch the dataset's official archive if it is missing.")] = False,
    on_error: OnError = "raise",
    tile: Annotated[
        int | None,
        typer.Option(
            help="Predict each image whole at native resolution by sliding windows of N pixels (a multiple of 32) "
            "instead of resizing it to the model size; default: the checkpoint's tile when it was trained on tiles.",
            min=32,
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(help="Overlap of the sliding windows in pixels (default: the checkpoint's, else 64).", min=0),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="Images per forward pass (default 32), or windows with tiles (default 4).", min=1)
    ] = None,
) -> None:
    """Score a checkpoint (.pt or .onnx) or a folder of masks against a dataset's ground truth (native
    resolution). With --on-error skip, images with bad files are left out and listed in skipped.json (beside
    --json, else here). Large images: --tile N scores each image whole, predicted in N x N windows."""
    from weakseg.data import build_dataset
    from weakseg.evaluate import evaluate_mask_folder, evaluate_model
    from weakseg.io import write_json

    ds = build_dataset(dataset, root, split, **({"download": True} if download else {}))
    ds.on_error = _on_error(on_error)
    if (checkpoint is None) == (pred_dir is None):
        raise WeaksegError("give exactly one of --checkpoint and --pred-dir")
    if pred_dir is not None:
        metrics = evaluate_mask_folder(pred_dir, ds)
    else:
        from weakseg.data.prepared import prepare
        from weakseg.models.onnx import load_for_inference
        from weakseg.runtime import configure_threads, pick_device

        configure_threads()
        model, meta = load_for_inference(checkpoint, pick_device())
        device = next(model.parameters()).device
        tile = tile or meta.get("tile")
        overlap = overlap if overlap is not None else meta.get("overlap", 64)
        if tile is not None:  # stored as tiles, scored on whole images reassembled from them
            prepared = prepare(ds, tile, tile=tile)
            windows = batch_size or 4
            metrics = evaluate_model(model, prepared, device, windows, progress=True, tile=tile, overlap=overlap)
        else:
            prepared = prepare(ds, meta.get("size", 160), meta.get("fit", "resize"), keep_native=True)
            metrics = evaluate_model(model, prepared, device, batch_size or 32, progress=True)
        ds.skipped[:] = prepared.skipped  # also when the prepared split came from the cache
    console.print(metrics_table(metrics, f"{dataset}/{split}"))
    if json_out:
        write_json(json_out, metrics)
    if on_error == "skip":
        where = (json_out.parent if json_out else Path(".")) / "skipped.json"
        write_json(where, ds.skipped)
        _report_skipped(ds.skipped, where)
    _emit(dataset=dataset, split=split, metrics=metrics, skipped=ds.skipped)


@app.command()
def predict(
    inputs: Annotated[list[Path], typer.Argument(help="Image files or folders.")],
    checkpoint: Annotated[
        Path, typer.Option(help="Model checkpoint (best.pt), or an ONNX model from weakseg export (.onnx).")
    ],
    out: Annotated[Path, typer.Option(help="Output folder for masks and overlays.")] = Path("predictions"),
    overlays: Annotated[bool, typer.Option(help="Also write overlay pictures.")] = True,
    on_error: OnError = "raise",
    tile: Annotated[
        int | None,
        typer.Option(
            help="Predict at native resolution in overlapping tiles of N pixels (large images); default: the "
            "checkpoint's tile when it was trained on tiles.",
            min=1,
        ),
    ] = None,
    overlap: Annotated[
        int | None,
        typer.Option(
            help="Overlap of neighbouring tiles in pixels (with --tile); each keeps its centre. Default: the "
            "checkpoint's, else 64.",
            min=0,
        ),
    ] = None,
) -> None:
    """Predict masks (PNG, class indices at native resolution) and overlay pictures for images. An .onnx model
    runs with ONNX Runtime and needs nothing else (size, fit and classes are in its metadata)."""
    from weakseg.models.onnx import load_for_inference
    from weakseg.predict import collect_inputs, predict_files
    from weakseg.runtime import configure_threads, pick_device

    configure_threads()
    files = collect_inputs(inputs)
    model, meta = load_for_inference(checkpoint, pick_device())
    size, fit, policy = meta.get("size", 160), meta.get("fit", "resize"), _on_error(on_error)
    tiling = {"tile": tile or meta.get("tile"), "overlap": overlap if overlap is not None else meta.get("overlap", 64)}
    written = predict_files(model, files, out, size, fit, overlays=overlays, on_error=policy, **tiling)
    console.print(f"wrote {len(written)} masks to {out}")
    skipped = []
    if on_error == "skip":
        skipped = json.loads((out / "skipped.json").read_text())
        _report_skipped(skipped, out / "skipped.json")
    _emit(out=out, masks=len(written), skipped=skipped)


@app.command("train-classifier")
def train_classifier_cmd(
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="Run config YAML (dataset, classifier).")
    ] = None,
    data_root: DataRoot = Path("."),
    out: Annotated[Path, typer.Option(help="Folder for classifier.pt and classifier.csv.")] = Path("runs/classifier"),
    seed: Annotated[int, typer.Option(help="Seed.")] = 0,
    overrides: Overrides = None,
) -> None:
    """Fine-tune a tag classifier (timm backbone, crop + flip augmentation) on the training split's tags and
    report its accuracy on the test split's tags. Resumes an interrupted run."""
    from weakseg.classify import is_multilabel, train_classifier
    from weakseg.config import load_run_config
    from weakseg.data.prepared import prepare
    from weakseg.models.classifier import build_classifier
    from weakseg.pipeline import load_dataset
    from weakseg.runtime import configure_threads, pick_device

    configure_threads()
    cfg = load_run_config(config, overrides or [])
    ds, c = cfg.dataset, cfg.classifier
    train = prepare(load_dataset(cfg, data_root, ds.train_split), ds.size, ds.fit)  # honours dataset.on_error
    test = prepare(load_dataset(cfg, data_root, ds.test_split), ds.size, ds.fit)
    if not train.tag_classes:
        raise WeaksegError(f"dataset '{ds.name}' has no image tags to train a classifier on")
    model = build_classifier(c.encoder, len(train.tag_classes), c.weights, is_multilabel(train, c), c.drop_rate)
    result = train_classifier(model, train, c, out / "classifier.pt", pick_device(cfg.train.device), seed, test)
    for row in result.history:
        console.print(
            f"epoch {row['epoch']}: loss {row['loss']:.4f}, test accuracy {row.get('accuracy', float('nan')):.3f}, "
            f"{row['images_per_s']:.1f} images/s"
        )
    console.print(f"test accuracy {result.accuracy:.4f} on {len(test)} images; classifier: {out / 'classifier.pt'}")
    if ds.on_error == "skip":
        from weakseg.io import write_json

        skipped = [*train.skipped, *(s for s in test.skipped if s not in train.skipped)]
        write_json(out / "skipped.json", skipped)
        _report_skipped(skipped, out / "skipped.json")
    _emit(classifier=out / "classifier.pt", accuracy=result.accuracy, test_images=len(test), history=result.history)


@app.command("pseudo-label")
def pseudo_label_cmd(
    classifier: Annotated[Path, typer.Option(help="Classifier checkpoint from train-classifier.")],
    out: Annotated[Path, typer.Option(help="Output folder (masks/, soft/, overlays/).")],
    dataset: Annotated[str, typer.Option(help="Dataset name (oxford_pet, kvasir, folder).")] = "oxford_pet",
    root: Annotated[Path, typer.Option(help="Dataset root folder.")] = Path("oxford-iiit-pet-subset"),
    split: Annotated[str, typer.Option(help="Split to label.")] = "trainval",
    method: Annotated[str, typer.Option(help="CAM method (weakseg list cams).")] = "gradcam",
    refine: Annotated[str, typer.Option(help="Refinement pipeline, e.g. 'otsu | grabcut:iters=5 | lcc'.")] = "otsu",
    size: Annotated[int, typer.Option(help="Model input size for the CAM.")] = 160,
    scales: Annotated[str, typer.Option(help="Comma-separated CAM input scales, averaged.")] = "1",
    flip: Annotated[bool, typer.Option(help="Also average the CAM of the flipped image.")] = False,
    refine_at: Annotated[str, typer.Option(help="Refine at 'input' size (fast) or 'native' size.")] = "input",
    soft: Annotated[bool, typer.Option(help="Also write the soft maps (soft/).")] = True,
    overlays: Annotated[bool, typer.Option(help="Also write heatmap + mask pictures (overlays/).")] = False,
    workers: Annotated[int | None, typer.Option(help="Processes for refinement (default: all cores).")] = None,
    batch_size: Annotated[int, typer.Option(help="CAM batch size.")] = 32,
    overwrite: Annotated[
        bool, typer.Option(help="Replace pseudo-labels that --out holds from other settings (default: refuse).")
    ] = False,
    on_error: OnError = "raise",
) -> None:
    """Pseudo-masks from image tags: CAM -> refinement -> one PNG per image (0/255, native size). Streams
    over the dataset and skips images already done with the same settings, so an interrupted run resumes."""
    from weakseg.config import CamConfig
    from weakseg.data import build_dataset
    from weakseg.models.classifier import load_classifier
    from weakseg.pseudo import pseudo_label_dataset
    from weakseg.runtime import configure_threads, pick_device

    configure_threads()
    device = pick_device()
    model = load_classifier(classifier).to(device)
    ds = build_dataset(dataset, root, split)
    ds.on_error = _on_error(on_error)
    cam = CamConfig(scales=[float(v) for v in scales.split(",")], flip=flip, batch_size=batch_size)
    report = pseudo_label_dataset(
        ds,
        model,
        out,
        method,
        refine,
        size,
        cam=cam,
        refine_at=refine_at,
        soft=soft,
        overlays=overlays,
        workers=workers,
        device=device,
        overwrite=overwrite,
    )
    console.print(f"wrote {report.written} masks, {report.skipped} already done: {out / 'masks'}")
    if on_error == "skip":
        _report_skipped(report.unreadable, out / "skipped.json")
    console.print(
        f"score them: weakseg evaluate --pred-dir {out / 'masks'} --dataset {dataset} --root {root} --split {split}"
    )
    _emit(masks=out / "masks", written=report.written, already_done=report.skipped, skipped=report.unreadable)


@app.command("label")
def label_cmd(
    data: Annotated[Path, typer.Argument(help="Folder dataset: images/ and any of masks/, boxes, clicks, tags.")],
    out: Annotated[Path, typer.Option(help="Output folder (masks/, review.csv, label.json, boxes/, model/).")],
    generator: Annotated[
        str, typer.Option(help="Box-prompted mask generator, or 'none' (GrabCut only).")
    ] = "litemedsam",
    generator_option: GeneratorOption = None,
    grabcut: Annotated[
        bool, typer.Option(help="Also segment each box with GrabCut; disagreements are unknown.")
    ] = True,
    segmenter: Annotated[
        bool | None, typer.Option(help="Train a segmenter on all labels (default: when 8 images have labels).")
    ] = None,
    size: Annotated[int, typer.Option(help="Segmenter input size.")] = 256,
    epochs: Annotated[int, typer.Option(help="Segmenter epochs.")] = 20,
    seed: Annotated[int, typer.Option(help="Seed of the segmenter.")] = 0,
    export: Annotated[str | None, typer.Option(help="Also export the masks: coco, yolo, labelstudio or cvat.")] = None,
    on_error: OnError = "raise",
    tile: Annotated[
        int | None,
        typer.Option(
            help="Large images: train the segmenter on N x N tiles at native resolution (a multiple of 32, instead "
            "of resizing to --size) and predict each image whole by sliding windows.",
            min=32,
        ),
    ] = None,
    overlap: Annotated[int, typer.Option(help="Overlap of the sliding windows in pixels (with --tile).", min=0)] = 64,
) -> None:
    """A mask for every image from what each image has: its mask, masks from its boxes (generator + GrabCut),
    its clicks; a segmenter trained on all of it predicts the rest. Writes a review.csv ranked worst first.
    Resumable: re-running the same command continues where it stopped."""
    from weakseg.labelling import LabelSettings, label_folder

    settings = LabelSettings(
        generator=generator,
        generator_options=_generator_options(generator_option),
        grabcut=grabcut,
        segmenter=segmenter,
        size=size,
        epochs=epochs,
        seed=seed,
        tile=tile,
        overlap=overlap,
    )
    report = label_folder(data, out, settings, on_error=_on_error(on_error))
    console.print(
        f"{report.images} images: {report.with_mask} with a mask, {report.with_boxes} with boxes, "
        f"{report.with_clicks} with clicks; {report.predicted} predicted by the segmenter"
    )
    if report.unlabelled:
        console.print(f"{len(report.unlabelled)} image(s) got no mask (no labels and no segmenter)")
    console.print(f"masks: {out / 'masks'}; check first: {out / 'review.csv'}")
    report_path, exported = _write_report(out, data), None
    if export and os.environ.get("RANK", "0") == "0":  # under torchrun: rank 0, once the masks are all written
        from weakseg.export import export_labels

        exported = export_labels(out, export, images=data / "images")
        console.print(f"exported: {exported}")
    _emit(**dataclasses.asdict(report), review=out / "review.csv", report=report_path, exported=exported)


@app.command("export-labels")
def export_labels_cmd(
    directory: Annotated[Path, typer.Argument(help="Folder with masks/<name>.png (as pseudo-label writes it).")],
    format: Annotated[str, typer.Option("--format", "-f", help="coco, yolo, labelstudio or cvat.")],
    out: Annotated[Path | None, typer.Option(help="Output folder (default DIR/export/<format>).")] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of the source images: real file names, sizes checked.")
    ] = None,
    classes: Annotated[
        str | None,
        typer.Option(help="Foreground class names in index order 1..C-1, comma-separated (default: foreground)."),
    ] = None,
    coco_mode: Annotated[
        str, typer.Option(help="COCO: 'semantic' (a mask per class, iscrowd=1) or 'instance' (per component).")
    ] = "semantic",
    image_root: Annotated[
        str, typer.Option(help="Label Studio: URL prefix of the images, e.g. '/data/local-files/?d=pets/'.")
    ] = "",
    image_ext: Annotated[str, typer.Option(help="Image file extension assumed without --images.")] = ".jpg",
) -> None:
    """Export masks for correction in an annotation tool: COCO (RLE), YOLO-seg polygons, Label Studio brush
    pre-annotations or CVAT 1.1 XML. With one class, mask values 1 and 255 are foreground; with several, 1..C-1
    are the classes and 255 (unlabelled) is exported as background. YOLO polygons cannot hold holes."""
    from weakseg.export import export_labels

    options = {"coco": {"mode": coco_mode}, "labelstudio": {"image_root": image_root}}.get(format.lower(), {})
    path = export_labels(directory, format, out, classes, images, image_ext, progress=True, **options)
    console.print(f"wrote {format} labels: {path}")
    _emit(format=format, path=path)


@app.command("export")
def export_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (best.pt) written by training.")],
    onnx: Annotated[Path, typer.Option("--onnx", help="ONNX file to write, e.g. model.onnx.")],
    opset: Annotated[int, typer.Option(help="ONNX opset version.", min=13)] = 18,
) -> None:
    """Export a trained model to one ONNX file for deployment; 'weakseg predict --checkpoint FILE.onnx' uses it.
    Input 'images': float32 RGB in [0, 1], N x 3 x H x W (normalised inside); output 'logits', N x C x H x W (the
    primary head of a multi-head model, the masks of a multi-task one). Batch, height and width are dynamic: any
    size for U-Net, multiples of the encoder's output stride for the others. The metadata holds size, fit, class
    names and the output's kind (sigmoid for binary models, softmax otherwise). Checked against PyTorch."""
    from weakseg.models.onnx import export_onnx

    path = export_onnx(checkpoint, onnx, opset)
    console.print(f"wrote {path}")
    _emit(onnx=path)


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Run directory.")] = Path("runs/demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 8,
    overrides: Overrides = None,
) -> None:
    """Train and test a U-Net on the embedded pet sample (offline, a few minutes on 2 CPU cores)."""
    from weakseg.demo import DEMO_ROOT, demo_config
    from weakseg.io import list_images
    from weakseg.pipeline import run
    from weakseg.predict import predict_files

    cfg = demo_config(epochs, overrides)
    console.print(
        f"[bold]weakseg demo[/]: U-Net ({cfg.model.encoder}, bundled ImageNet weights) on the embedded "
        f"Oxford-IIIT Pet sample, {cfg.train.epochs} epochs at {cfg.dataset.size} px"
    )
    results = run(cfg, out, ".")
    _print_results(results)
    from weakseg.data import build_dataset
    from weakseg.models import load_model

    test = build_dataset("oxford_pet", DEMO_ROOT, "test")
    files = [f for f in list_images(DEMO_ROOT / "images") if f.stem in set(test.names)]
    model = load_model(out / "best.pt")
    predict_files(model, files, out / "predictions", cfg.dataset.size, cfg.dataset.fit)
    console.print(f"predictions and overlays: {out / 'predictions'}; training log: {out / 'log.csv'}")
    _emit(run_dir=out, results=_results(results), predictions=out / "predictions")


@experiment_app.command("run")
def experiment_run(
    spec: Annotated[Path, typer.Argument(help="Experiment spec YAML.")],
    data_root: DataRoot = Path("."),
    out: Annotated[Path | None, typer.Option(help="Output directory (default runs/<experiment>).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds replacing the spec's list.")] = None,
    only: Annotated[list[str] | None, typer.Option(help="Run only rows whose setting has KEY=VALUE.")] = None,
    publish: Annotated[bool, typer.Option(help="Copy results to docs/results/<experiment>.{json,md}.")] = False,
    publish_dir: Annotated[Path, typer.Option(help="Where --publish copies results.")] = Path("docs/results"),
    records: Annotated[
        Path,
        typer.Option(
            help="Records of finished runs (key, metrics, labels, log) per experiment: runs whose key matches are "
            "taken from here instead of trained again; --publish writes the current ones here."
        ),
    ] = Path("docs/results/runs"),
    overrides: Overrides = None,
) -> None:
    """Run an experiment spec: every row of its grid over its seeds, resumable; writes results.json/md."""
    from weakseg.config import load_spec
    from weakseg.experiments import run_experiment

    extra = list(overrides or [])
    if seeds:
        extra.append(f"seeds=[{seeds}]")
    spec_obj = load_spec(spec, extra)
    if seeds:  # the command-line seeds replace every part's own seed list too
        spec_obj.parts = [part.model_copy(update={"seeds": None}) for part in spec_obj.parts]
    out = out or Path("runs") / spec_obj.name
    rows = run_experiment(spec_obj, data_root, out, only, publish_dir if publish else None, records_dir=records)
    console.print((out / "results.md").read_text())
    console.print(f"{len(rows)} rows in {out / 'results.json'}")
    _emit(results=out / "results.json", report=_write_report(out), rows=rows)


def _write_report(run_dir: Path, data_root: Path | None = None) -> Path | None:
    """The run's HTML report (by rank 0 under torchrun); a failure is printed, never fails the command that produced
    the run."""
    if os.environ.get("RANK", "0") != "0":
        return None
    from weakseg.report import write_report

    try:
        path = write_report(run_dir, data_root)
    except Exception as err:  # the run itself succeeded
        console.print(f"[yellow]no report ({type(err).__name__}: {err})[/yellow]")
        return None
    console.print(f"report: {path}", soft_wrap=True)
    return path


@experiment_app.command("plot")
def experiment_plot(
    results: Annotated[Path, typer.Argument(help="results.json of an experiment (runs/<name>/ or docs/results/).")],
    x: Annotated[str, typer.Option(help="Numeric row setting on the x axis (log scale).")] = "coverage",
    y: Annotated[str, typer.Option(help="Metric on the y axis.")] = "dice",
    series: Annotated[str | None, typer.Option(help="Row setting with one line per value.")] = None,
    stage: Annotated[str, typer.Option(help="Stage of the rows plotted (final or pseudo).")] = "final",
    out: Annotated[Path, typer.Option(help="Image file written.")] = Path("plot.png"),
) -> None:
    """Plot a metric (mean ± std over seeds) against a numeric row setting, e.g. Dice against coverage."""
    from weakseg.experiments.plot import plot_results

    if not results.is_file():
        raise DataFileError(results, "results file not found")
    path = plot_results(results, x, y, series, out, stage)
    console.print(f"plot: {path}")
    _emit(plot=path)


@app.command("report")
def report_cmd(
    run_dir: Annotated[Path, typer.Argument(help="Run folder: an experiment (runs/<name>), a train or a label run.")],
    data_root: Annotated[
        Path | None,
        typer.Option(
            help="For a train run: the folder dataset roots are relative to (adds image | ground truth | prediction "
            "grids); for a label run: the labelled folder (adds worst/best pictures)."
        ),
    ] = None,
    out: Annotated[Path | None, typer.Option(help="HTML file written (default RUN_DIR/report.html).")] = None,
) -> None:
    """Write one self-contained HTML page (opens offline) with the summary table, training curves and pictures."""
    from weakseg.report import write_report

    path = write_report(run_dir, data_root, out)
    console.print(f"report: {path}", soft_wrap=True)
    _emit(report=path)


@app.command("compare")
def compare_cmd(
    results: Annotated[list[Path], typer.Argument(help="results.json files, or run folders holding one.")],
    metric: Annotated[str, typer.Option(help="Metric on the y axis.")] = "dice",
    stage: Annotated[str, typer.Option(help="Stage of the rows compared (final or pseudo).")] = "final",
    out: Annotated[Path, typer.Option(help="Folder for compare.png, compare.md and compare.json.")] = Path("compare"),
    cost: Annotated[
        list[str] | None,
        typer.Option("--cost", help="Seconds per label, KIND=SECONDS (tag, point, box, polygon, mask, sam_mask)."),
    ] = None,
    costs: Annotated[Path | None, typer.Option("--costs", help="YAML/JSON file {kind: seconds}.")] = None,
    front_by: Annotated[
        str, typer.Option(help="'all': one Pareto front over every row; 'experiment': one per experiment.")
    ] = "all",
) -> None:
    """Quality against annotation cost across experiments, each row priced by the labels it consumed
    (docs/cost.md), with the Pareto front marked."""
    from weakseg.compare import compare, hours_text
    from weakseg.cost import cost_model

    comparison = compare(results, out, metric, stage, cost_model(costs, cost), front_by)
    for line in comparison.skipped:
        console.print(f"left out: {line}", highlight=False)
    console.print(f"{len(comparison.rows)} rows; Pareto front, cheapest first:", highlight=False)
    for row in comparison.front:
        console.print(
            f"  #{row.number} {row.experiment}: {hours_text(row.hours)} h, {metric} {row.mean:.3f}", highlight=False
        )
    console.print(f"written: {out / 'compare.png'}, {out / 'compare.md'}, {out / 'compare.json'}")
    _emit(
        table=out / "compare.json",
        plot=out / "compare.png",
        left_out=comparison.skipped,
        **json.loads((out / "compare.json").read_text()),
    )


@bench_app.command("train")
def bench_train_cmd(
    data_root: DataRoot = Path("../shared/data"),
    dataset: Annotated[str, typer.Option(help="Dataset name.")] = "oxford_pet",
    root: Annotated[str, typer.Option(help="Dataset root under --data-root.")] = "oxford-iiit-pet-subset",
    split: Annotated[str, typer.Option(help="Split to train on.")] = "trainval",
    size: Annotated[int, typer.Option(help="Input size.")] = 160,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 16,
    epochs: Annotated[int, typer.Option(help="Epochs per timed run.")] = 1,
    repeats: Annotated[int, typer.Option(help="Timed pairs of runs, the order alternating.")] = 3,
) -> None:
    """Training throughput of weakseg's whole fit call against a bare smp loop doing the same work (same model,
    data, batch, loss, flips, channels-last format, a checkpoint per epoch); per-pair ratios and their median."""
    from weakseg.bench import bench_train
    from weakseg.data import build_dataset
    from weakseg.data.prepared import prepare
    from weakseg.models import OFFLINE_ENCODER

    split_data = prepare(build_dataset(dataset, data_root / root, split), size)
    print(json.dumps(bench_train(split_data, OFFLINE_ENCODER, batch_size, epochs, repeats)))


def _pet_trainval(data_root: Path, size: int):
    """The Oxford-IIIT Pet subset's trainval images, prepared at ``size`` (the CAM and refinement benchmarks)."""
    from weakseg.data import build_dataset
    from weakseg.data.prepared import prepare

    return prepare(build_dataset("oxford_pet", data_root / "oxford-iiit-pet-subset", "trainval"), size)


@bench_app.command("cam")
def bench_cam_cmd(
    data_root: DataRoot = Path("../shared/data"),
    method: Annotated[str, typer.Option(help="CAM method.")] = "gradcam",
    classifier: Annotated[Path | None, typer.Option(help="Classifier checkpoint (default: ImageNet body).")] = None,
    encoder: Annotated[str, typer.Option(help="timm model when no checkpoint is given.")] = "tf_efficientnet_lite0",
    images: Annotated[int, typer.Option(help="Number of pet images.")] = 256,
    size: Annotated[int, typer.Option(help="Input size.")] = 160,
    batch_size: Annotated[int, typer.Option(help="Batch size.")] = 32,
    repeats: Annotated[int, typer.Option(help="Alternating repeats (medians reported).")] = 3,
    layers: Annotated[
        list[str] | None,
        typer.Option(
            "--layers",
            help="Target layer by module name, repeatable or comma-separated (net.blocks.5,net.bn2); "
            "default: the method's (the last feature block).",
        ),
    ] = None,
) -> None:
    """CAM throughput: weakseg vs pytorch-grad-cam vs a plain forward pass, same model, images, batch and
    target layers."""
    from weakseg.bench import bench_cam
    from weakseg.models.classifier import build_classifier, load_classifier

    split_data = _pet_trainval(data_root, size)
    count = min(images, len(split_data))
    if classifier is not None:
        model = load_classifier(classifier)
    else:
        import torch

        torch.manual_seed(0)
        model = build_classifier(encoder, len(split_data.tag_classes))
    targets = [labels[0] for labels in split_data.labels[:count]]
    names = [name.strip() for item in layers or [] for name in item.split(",") if name.strip()] or None
    result = bench_cam(model, split_data.images[:count], targets, method, batch_size, repeats, layers=names)
    print(json.dumps(result))


@bench_app.command("refine")
def bench_refine_cmd(
    data_root: DataRoot = Path("../shared/data"),
    pipeline: Annotated[str, typer.Option(help="Refinement pipeline.")] = "otsu | grabcut:iters=5",
    classifier: Annotated[
        Path | None, typer.Option(help="Classifier for real Grad-CAM maps (else a stand-in).")
    ] = None,
    images: Annotated[int, typer.Option(help="Number of pet images.")] = 300,
    size: Annotated[int, typer.Option(help="Image size.")] = 160,
    workers: Annotated[int, typer.Option(help="Worker processes.")] = 2,
) -> None:
    """Refinement throughput in one process vs a worker pool, on the same pet images and maps."""
    from weakseg.bench import pseudo_cam
    from weakseg.refine import bench_refine

    split_data = _pet_trainval(data_root, size)
    count = min(images, len(split_data))
    pictures = list(split_data.images[:count].permute(0, 2, 3, 1).contiguous().numpy())
    if classifier is not None:
        from weakseg.models.classifier import load_classifier
        from weakseg.sources.cam import cam_maps

        maps = cam_maps(load_classifier(classifier), split_data.images[:count], split_data.labels[:count])
        softs, kind = list(maps.numpy()), "gradcam"
    else:
        softs, kind = [pseudo_cam(p) for p in pictures], "stand-in"
    print(json.dumps({**bench_refine(pipeline, pictures, softs, workers), "size": size, "maps": kind}))


@bench_app.command("label")
def bench_label_cmd(
    data: Annotated[Path, typer.Argument(help="Folder dataset, as weakseg label takes it.")],
    out: Annotated[Path | None, typer.Option(help="Output folder, must be new (default: a temporary one).")] = None,
    generator: Annotated[str, typer.Option(help="Box-prompted mask generator, or 'none'.")] = "litemedsam",
    generator_option: GeneratorOption = None,
    grabcut: Annotated[bool, typer.Option(help="Also segment each box with GrabCut.")] = True,
    segmenter: Annotated[
        bool | None, typer.Option(help="Train a segmenter on all labels (default: when 8 images have labels).")
    ] = None,
    size: Annotated[int, typer.Option(help="Segmenter input size.")] = 256,
    epochs: Annotated[int, typer.Option(help="Segmenter epochs.")] = 20,
    export: Annotated[str, typer.Option(help="Export format timed after labelling, or 'none'.")] = "coco",
) -> None:
    """Time one fresh weakseg label run on DATA, stage by stage, and print one JSON line: "seconds" holds the
    wall seconds of each stage, adding up to the run's wall time ("unaccounted_s" is the rest): decode (read the
    images), cam (0: weakseg label does not use image tags), sam (the box generator, LiteMedSAM by default),
    refine (GrabCut and the fusion of the box masks), train (the segmenter), export (--export), then load (the box
    generator's model; LiteMedSAM's one-off ONNX export on its first use on a machine, see "box_generator_load"),
    predict (the segmenter on every image), scan (list the folder) and write (masks, review.csv).
    "images_per_s": the folder's images per second of the run and of each stage; "sam_images_per_s": images
    segmented per second of sam. Compare the box generator's paths with --generator-option backend=torch
    (PyTorch float32, as before) against the default (ONNX Runtime)."""
    from weakseg.bench import bench_label
    from weakseg.labelling import LabelSettings

    settings = LabelSettings(
        generator=generator,
        generator_options=_generator_options(generator_option),
        grabcut=grabcut,
        segmenter=segmenter,
        size=size,
        epochs=epochs,
    )
    print(json.dumps(bench_label(data, settings, None if export == "none" else export, out)))


@list_app.command("models")
def list_models_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern, e.g. '*unet*'")] = "*") -> None:
    """Registered segmentation architectures."""
    from weakseg.models import list_models

    names = list_models(pattern)
    console.print("\n".join(names))
    _emit(models=names)


@list_app.command("datasets")
def list_datasets_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern")] = "*") -> None:
    """Registered datasets."""
    from weakseg.data import list_datasets

    names = list_datasets(pattern)
    console.print("\n".join(names))
    _emit(datasets=names)


@list_app.command("cams")
def list_cams_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern, e.g. 'grad*'")] = "*") -> None:
    """CAM methods."""
    from weakseg.cams import list_cams

    names = list_cams(pattern)
    console.print("\n".join(names))
    _emit(cams=names)


@list_app.command("refine")
def list_refine_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern")] = "*") -> None:
    """Refinement steps for pipelines such as "otsu | grabcut:iters=5 | lcc", with their parameters."""
    from weakseg.refine import get_op, list_ops

    ops = {name: get_op(name).param_names() for name in list_ops(pattern)}
    console.print("\n".join(f"{name}: {', '.join(params) or '-'}" for name, params in ops.items()))
    _emit(refine=ops)


@list_app.command("generators")
def list_generators_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern, e.g. 'sam*'")] = "*") -> None:
    """Mask generators from box prompts."""
    from weakseg.sources.sam import list_mask_generators

    names = list_mask_generators(pattern)
    console.print("\n".join(names))
    _emit(generators=names)


@list_app.command("sources")
def list_sources_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern")] = "*") -> None:
    """Supervision sources that method 'multi' combines (method.sources), one head each."""
    import weakseg.methods  # noqa: F401  (registers the built-in sources)
    from weakseg.sources.registry import list_sources

    names = list_sources(pattern)
    console.print("\n".join(names))
    _emit(sources=names)


@list_app.command("methods")
def list_methods_cmd(pattern: Annotated[str, typer.Argument(help="shell-style pattern, e.g. 'grad*'")] = "*") -> None:
    """Registered training methods (with a note where a method has one)."""
    from weakseg.methods.base import METHODS, list_methods

    lines = [
        f"{n}: {METHODS.meta(n)['description']}" if METHODS.meta(n).get("description") else n
        for n in list_methods(pattern)
    ]
    console.print("\n".join(lines), highlight=False, soft_wrap=True)
    _emit(methods={n: METHODS.meta(n).get("description", "") for n in list_methods(pattern)})


@list_app.command("exporters")
def list_exporters_cmd() -> None:
    """Formats weakseg export-labels writes."""
    from weakseg.export import describe_exporter, list_exporters

    formats = {name: describe_exporter(name) for name in list_exporters()}
    console.print("\n".join(f"{name}: {text}" for name, text in formats.items()), highlight=False)
    _emit(exporters=formats)


def main() -> None:
    """Entry point: user errors become one line on stderr and exit code 2. Launched by torchrun, each process
    joins its process group first and only rank 0 prints results (every process prints its errors)."""
    several = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torch is only imported when torchrun launched us
    try:
        if several:
            from weakseg import distributed

            distributed.setup()
            if not distributed.is_main():
                console.quiet = True
        app()
    except WeaksegError as err:
        err_console.print(f"[red]error:[/] {escape(str(err))}", highlight=False)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted: finished epochs and runs are kept; rerun the same command to resume")
        sys.exit(130)
    finally:
        if several:
            from weakseg import distributed

            distributed.teardown()


if __name__ == "__main__":
    main()
