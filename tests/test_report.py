"""The HTML report: self-contained pages for experiment, train and label folders, checked by parsing and, where
Chromium is installed, by rendering it headless."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from weakseg.cli import app
from weakseg.errors import DataFileError
from weakseg.report import SUMMARY_METRICS, row_folders, write_report

REPO = Path(__file__).resolve().parent.parent
EXPERIMENT = "pets-coverage-sweep"


class PageParser(HTMLParser):
    """Collects the ``src`` of every <img> and the text of every table cell."""

    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []
        self.cells: list[str] = []
        self._in_cell = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources.append(dict(attrs).get("src") or "")
        self._in_cell = self._in_cell or tag == "td"

    def handle_endtag(self, tag: str) -> None:
        if tag == "td":
            self._in_cell = False

    def handle_data(self, data: str) -> None:
        if self._in_cell:
            self.cells.append(data)


def parse_page(path: Path) -> PageParser:
    text = path.read_text()
    assert text.startswith("<!DOCTYPE html>") and "</html>" in text
    assert not re.search(r"""(src|href)=["']?https?://""", text), "the page must not load anything from the network"
    parser = PageParser()
    parser.feed(text)
    parser.close()
    return parser


def assert_images_embedded_and_not_blank(sources: list[str]) -> None:
    """Every image is a base64 PNG data URI that decodes and is not one flat colour."""
    assert sources
    for src in sources:
        assert src.startswith("data:image/png;base64,"), src[:60]
        image = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1], validate=True)))
        assert image.format == "PNG"
        assert np.asarray(image.convert("RGB"), np.float32).var() > 0


@pytest.fixture
def experiment_dir(tmp_path: Path) -> Path:
    """A run folder of the published experiment: results.json plus its run records in ``<row>-<digest>/seed<k>``."""
    run_dir = tmp_path / EXPERIMENT
    shutil.copytree(REPO / "docs" / "results" / "runs" / EXPERIMENT, run_dir)
    shutil.copyfile(REPO / "docs" / "results" / f"{EXPERIMENT}.json", run_dir / "results.json")
    example = np.zeros((24, 48, 3), np.uint8)
    example[:, 24:] = (200, 40, 40)
    first = json.loads((run_dir / "results.json").read_text())["rows"][0]
    seed_dir = row_folders(run_dir, {k: v for k, v in first["setting"].items() if k != "stage"})[0] / "seed0"
    Image.fromarray(example).save(seed_dir / "source_examples.png")
    return run_dir


def test_experiment_report_is_self_contained_with_every_row_and_curves(experiment_dir: Path) -> None:
    path = write_report(experiment_dir)
    assert path == experiment_dir / "report.html"
    page = parse_page(path)
    assert_images_embedded_and_not_blank(page.sources)
    results = json.loads((experiment_dir / "results.json").read_text())
    settings = {json.dumps({k: v for k, v in r["setting"].items() if k != "stage"}) for r in results["rows"]}
    logged = [s for s in settings if any(f.glob("seed*/log.csv") for f in row_folders(experiment_dir, json.loads(s)))]
    plots = sorted(p.stem for p in experiment_dir.glob("plot-*.png"))  # written next to results.json
    assert plots == ["plot-coverage", "plot-rows"]
    # a curve per run with a log, the example, and the plots
    assert len(page.sources) == len(logged) + 1 + len(plots) and len(logged) >= 5
    assert 'alt="source_examples.png"' in path.read_text()
    assert all(f'alt="{name}"' in path.read_text() for name in plots)
    text = " ".join(page.cells)
    for row in results["rows"]:  # every row, with each of its main metrics
        shown = [k for k in row["metrics"] if k.split(".")[-1] in SUMMARY_METRICS]
        assert shown
        for name in shown:  # per-source scores ('boxes.dice') are listed with their source
            assert f"{row['metrics'][name]['mean']:.3f} ± {row['metrics'][name]['std']:.3f}" in text
    assert text.count("masks ") >= len(results["rows"])  # labels consumed, per row


def trained_run(make_folder_dataset, tmp_path: Path) -> tuple[Path, Path]:
    """A train run folder (1 epoch at 32 px, no pretrained weights) on a tiny folder dataset; (run dir, data)."""
    from weakseg.config import RunConfig
    from weakseg.pipeline import run

    data = make_folder_dataset(n=10, splits={"trainval": list(range(6)), "test": list(range(6, 10))})
    config = RunConfig.model_validate(
        {
            "dataset": {"name": "folder", "root": str(data.root), "size": 32, "val_fraction": 0},
            "method": {"name": "multi", "sources": ["masks"]},
            "model": {"weights": "none"},
            "train": {"epochs": 1, "batch_size": 4, "progress": False},
        }
    )
    run(config, tmp_path / "run", ".", progress=False)
    return tmp_path / "run", data.root


def test_train_report_has_a_prediction_grid_of_sample_worst_and_best(make_folder_dataset, tmp_path: Path) -> None:
    run_dir, _ = trained_run(make_folder_dataset, tmp_path)
    without_data = parse_page(write_report(run_dir, out=tmp_path / "plain.html"))
    assert "no qualitative grid" in (tmp_path / "plain.html").read_text()
    result = CliRunner().invoke(app, ["report", str(run_dir), "--data-root", "."])
    assert result.exit_code == 0, result.output
    assert str(run_dir / "report.html") in result.output.replace("\n", "")
    text = (run_dir / "report.html").read_text()
    for caption in ("seeded sample (seed 0)", "worst by IoU", "best by IoU", "image | ground truth | prediction"):
        assert caption in text
    page = parse_page(run_dir / "report.html")
    assert len(page.sources) == len(without_data.sources) + 3
    assert_images_embedded_and_not_blank(page.sources)


def test_label_report_lists_the_review_and_shows_worst_and_best(make_folder_dataset, tmp_path: Path) -> None:
    data = make_folder_dataset(n=4)
    out = tmp_path / "labels"
    (out / "masks").mkdir(parents=True)
    review = ["name,score,confidence,sources"]
    for k, name in enumerate(reversed(data.names)):
        cv2.imwrite(str(out / "masks" / f"{name}.png"), data.masks[name])
        review.append(f"{name},{0.2 + 0.2 * k:.4f},0.9,masks")
    (out / "review.csv").write_text("\n".join(review) + "\n")
    (out / "label.json").write_text("{}")
    bare = (write_report(out, out=tmp_path / "bare.html")).read_text()
    assert "no picture grid" in bare
    page = parse_page(write_report(out, data.root))
    assert all(name in page.cells for name in data.names)
    assert len(page.sources) == 2  # worst and best
    assert_images_embedded_and_not_blank(page.sources)


def test_report_of_a_folder_that_is_no_run_names_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert isinstance(result.exception, DataFileError) and "not a run folder" in str(result.exception)


IMAGE_CHECK = """<script>
window.addEventListener("load", () => {
  const broken = [...document.images].filter((im) => !im.complete || im.naturalWidth === 0);
  if (broken.length) console.error("BROKEN-IMAGES " + broken.length);
  else console.log("IMAGES-LOADED " + document.images.length);
});
</script></body>"""


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(
    chromium() is None, reason="chromium is not installed (.ci/run installs the Debian package when apt-get works)"
)
def test_report_renders_in_headless_chromium(experiment_dir: Path, tmp_path: Path) -> None:
    """The page loads without console errors, every image loads and the screenshot is not blank. The page itself
    has no script: a copy with a small image check appended is what the browser loads."""
    report = write_report(experiment_dir)
    count = len(parse_page(report).sources)
    checked = tmp_path / "checked.html"
    checked.write_text(report.read_text().replace("</body>", IMAGE_CHECK, 1))
    screenshot = tmp_path / "screenshot.png"
    command = [
        chromium(),
        "--headless=new",
        "--disable-gpu",
        "--no-sandbox",
        "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--enable-logging=stderr",
        "--v=0",
        f"--screenshot={screenshot}",
        "--window-size=1280,2000",
        checked.as_uri(),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    assert f"IMAGES-LOADED {count}" in "\n".join(console), console
    errors = [line for line in console if "IMAGES-LOADED" not in line]
    assert not errors, errors
    shot = np.asarray(Image.open(screenshot).convert("RGB"), np.float32)
    assert shot.shape[:2] == (2000, 1280) and shot.var() > 10


def _stat(mean: float, std: float = 0.01) -> dict[str, float]:
    return {"mean": mean, "std": std, "n": 3}


def self_training_results() -> dict:
    """Results of a self-training study: 2 losses x 3 rounds, a pseudo and a final row each (mIoU)."""
    rows = []
    for loss, base in (("ce", 0.6), ("focal", 0.5)):
        for r in range(3):
            for stage, shift in (("pseudo", -0.1), ("final", 0.0)):
                setting = {"loss": loss, "round": r, "stage": stage}
                rows.append({"setting": setting, "metrics": {"miou": _stat(base + shift + 0.05 * r)}})
    return {"experiment": "selftrain-study", "rows": rows}


def test_rounds_figure_draws_each_setting_and_stage_per_round() -> None:
    from weakseg.experiments.plot import rounds_figure

    figure = rounds_figure(self_training_results(), "miou")
    drawn = {c.get_label(): c.lines[0].get_data() for c in figure.axes[0].containers}
    assert sorted(drawn) == ["loss=ce (final)", "loss=ce (pseudo)", "loss=focal (final)", "loss=focal (pseudo)"]
    xs, ys = drawn["loss=focal (pseudo)"]
    assert list(xs) == [0, 1, 2] and np.allclose(ys, [0.4, 0.45, 0.5])
    assert np.allclose(drawn["loss=ce (final)"][1], [0.6, 0.65, 0.7])


def test_rows_figure_bars_are_the_row_means_top_down() -> None:
    from weakseg.experiments.plot import rows_figure

    data = self_training_results()
    figure = rows_figure(data, "miou")
    axes = figure.axes[0]
    bars = sorted(axes.patches, key=lambda bar: -bar.get_y())  # top first
    final = [r for r in data["rows"] if r["setting"]["stage"] == "final"]
    assert np.allclose([bar.get_width() for bar in bars], [r["metrics"]["miou"]["mean"] for r in final])
    ticks = sorted(zip(axes.get_yticks(), axes.get_yticklabels(), strict=True), key=lambda tick: -tick[0])
    labels = [label.get_text() for _, label in ticks]  # top first
    assert labels[0] == "loss=ce, round=0" and labels[-1] == "loss=focal, round=2"


def test_result_figures_fit_the_experiment(tmp_path: Path) -> None:
    from weakseg.experiments.plot import result_figures

    written = result_figures(self_training_results(), tmp_path)
    assert [p.name for p in written] == ["plot-rounds.png", "plot-rows.png"]  # no axis for 'round' as a budget
    for path in written:
        assert Image.open(path).format == "PNG"
    one_row = {"experiment": "x", "rows": [{"setting": {"stage": "final"}, "metrics": {"iou": _stat(0.5)}}]}
    assert result_figures(one_row, tmp_path / "one") == []
