"""The Python API matches the CLI: ``import weakseg`` is light, every exported name resolves and is documented,
and ``weakseg.label`` / ``weakseg.export_labels`` write what the commands write."""

from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

import weakseg
from weakseg.cli import app


def test_import_is_light_and_every_exported_name_is_documented():
    code = "import sys, weakseg; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
    for name in weakseg.__all__:
        value = getattr(weakseg, name)
        assert name == "__version__" or (value.__doc__ or "").strip(), name
    assert weakseg.build_model.__module__ == "weakseg.models.registry"
    assert weakseg.GradCAM.__name__ == "GradCAM" and "label" in dir(weakseg)


def test_label_and_export_match_the_commands(make_folder_dataset, tmp_path):
    truth = make_folder_dataset(n=6)
    for name in truth.names[2:]:
        (truth.root / "masks" / f"{name}.png").unlink()
    report = weakseg.label(truth.root, tmp_path / "api", progress=False, generator="none", segmenter=False)
    assert (report.with_mask, report.with_boxes) == (2, 4)
    result = CliRunner().invoke(
        app, ["label", str(truth.root), "--out", str(tmp_path / "cli"), "--generator", "none", "--no-segmenter"]
    )
    assert result.exit_code == 0, result.output
    for name in truth.names:
        assert (tmp_path / "api" / "masks" / f"{name}.png").read_bytes() == (
            tmp_path / "cli" / "masks" / f"{name}.png"
        ).read_bytes()
    coco = json.loads(weakseg.export_labels(tmp_path / "api", "coco").read_text())
    assert len(coco["images"]) == 6
