"""The Python API, one function per CLI command (``weakseg train`` → :func:`run`, ``weakseg label`` →
:func:`label`, ...), re-exported by ``weakseg``: ``import weakseg; weakseg.label("my-data", "labelled/")``.
Every function imports what it needs when called, so ``import weakseg`` stays light."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from weakseg.labelling import LabelReport
    from weakseg.methods.base import StageResult


def run(
    config: str | Path | None = None,
    out: str | Path = "runs/train",
    data_root: str | Path = ".",
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[StageResult]:
    """``weakseg train``: train (or resume) and test the run a config YAML describes, with ``overrides``
    (``["train.epochs=10", "method.name=multi"]``) applied; returns its stages' metrics.

    >>> weakseg.run("my-run.yaml", "runs/pets", data_root="../shared/data", overrides=["train.epochs=2"])
    """
    from weakseg.config import load_run_config
    from weakseg.pipeline import run as run_config

    return run_config(load_run_config(config, overrides or []), out, data_root, progress)


def run_experiment(
    spec: str | Path,
    data_root: str | Path = ".",
    out: str | Path | None = None,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    publish: bool = False,
    overrides: list[str] | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """``weakseg experiment run``: every row of a spec over its seeds (resumable), ``only`` rows whose setting
    has ``KEY=VALUE``; writes ``out/results.json`` (default ``runs/<experiment>``) and returns its rows.

    >>> rows = weakseg.run_experiment("configs/experiments/pets-coverage-sweep.yaml", "../shared/data",
    ...                               only=["coverage=2.5"], seeds=[0])
    """
    from weakseg.config import load_spec
    from weakseg.experiments import run_experiment as run_spec

    extra = list(overrides or []) + ([f"seeds=[{','.join(map(str, seeds))}]"] if seeds else [])
    spec_obj = load_spec(spec, extra)
    if seeds:  # the given seeds replace every part's own seed list too, as on the command line
        spec_obj.parts = [part.model_copy(update={"seeds": None}) for part in spec_obj.parts]
    out_dir = Path(out) if out is not None else Path("runs") / spec_obj.name
    publish_dir = Path("docs/results") if publish else None
    return run_spec(spec_obj, data_root, out_dir, only, publish_dir, progress, Path("docs/results/runs"))


def label(
    root: str | Path, out: str | Path, progress: bool = True, on_error: str = "raise", **settings: Any
) -> LabelReport:
    """``weakseg label``: a mask for every image of a folder dataset from what each image has (see
    :mod:`weakseg.labelling`); ``settings`` are :class:`weakseg.labelling.LabelSettings` fields. Returns the report.

    >>> report = weakseg.label("my-data", "labelled/", generator="litemedsam", epochs=20)
    >>> report.predicted, report.out_dir / "review.csv"
    """
    from weakseg.labelling import LabelSettings, label_folder

    return label_folder(root, out, LabelSettings(**settings), progress=progress, on_error=on_error)


def export_labels(directory: str | Path, format: str, out: str | Path | None = None, **options: Any) -> Path:
    """``weakseg export-labels``: the masks of ``directory/masks`` as COCO, YOLO, Label Studio or CVAT files.

    >>> weakseg.export_labels("labelled/", "coco", images="my-data/images")
    """
    from weakseg.export import export_labels as export

    return export(directory, format, out, **options)


def export_onnx(checkpoint: str | Path, out: str | Path, opset: int = 18) -> Path:
    """``weakseg export --onnx``: a checkpoint as one ONNX file (meta inside, checked against PyTorch); predict
    with it by ``weakseg predict --checkpoint out.onnx`` or :class:`weakseg.OnnxSegmenter`. Returns its path.

    >>> weakseg.export_onnx("runs/pets/best.pt", "pets.onnx")
    """
    from weakseg.models.onnx import export_onnx as export

    return export(checkpoint, out, opset)


def write_report(run_dir: str | Path, data_root: str | Path | None = None, out: str | Path | None = None) -> Path:
    """``weakseg report``: one self-contained HTML page for a run folder; returns its path.

    >>> weakseg.write_report("runs/pets-coverage-sweep")
    """
    from weakseg.report import write_report as write

    return write(run_dir, data_root, out)
