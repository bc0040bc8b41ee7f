"""Kill and resume (issue 14): ``weakseg pseudo-label``, ``label``, ``train`` and ``experiment run`` are killed with
SIGKILL at real moments of their runs (the k-th mask on disk, an epoch logged, a checkpoint replaced, a finished
seed run, and a seeded random time), started again until they finish, and every output is compared with that of an
uninterrupted run of the same command (CPU, one thread): PNGs byte for byte, JSON and CSV field by field, every
tensor of the checkpoints with ``torch.equal``. Only the fields in :data:`TIME_DEPENDENT` may differ.

Each command runs as a subprocess in its own session, killed with ``os.killpg`` so that its worker processes (the
refinement pool) die with it. After each kill, every output file on disk must be complete (no truncated PNG or
checkpoint under an output's name); at the end the folder must hold exactly the uninterrupted run's files (no
temporaries left), and work finished before a kill must not have been redone (masks and finished runs keep their
files, epochs their logged times). The selected commands play at the same time, each beside its uninterrupted run:
about 20 launches that spend most of their time importing torch, which in sequence would leave a core idle.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch
import yaml

from tests.conftest import DEMO_ROOT, draw_object

pytestmark = pytest.mark.slow

TIME_DEPENDENT = frozenset({"seconds", "images_per_s", "train_images_per_s"})
"""Fields that measure wall-clock time (an epoch's seconds, images per second); every other field must be equal."""

POLL_S = 0.02
LAUNCH_LIMIT_S = 300.0


def env_for(cwd: Path) -> dict[str, str]:
    """The environment of every launch: one thread (cheap and reproducible) and a prepared-split cache of its own
    (so that the interrupted run prepares, and can be killed preparing, too)."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", WEAKSEG_CACHE=str(cwd / "cache"), NO_COLOR="1")
    return env


def weakseg(*args: str) -> list[str]:
    return [sys.executable, "-m", "weakseg.cli", *args]


# --- Launching, killing -------------------------------------------------------------------------------------------


Trigger = Callable[[Path], bool]
"""Given the output folder: whether the kill point is reached."""


@dataclass
class KillPoint:
    """A moment of a run: ``make(launched)`` returns a fresh trigger for a launch started at ``launched``
    (``time.time_ns()``). A random point may come after the run's end: it is then recorded, and the next points
    start from an empty folder again."""

    name: str
    make: Callable[[int], Trigger]
    random: bool = False


@dataclass
class Kill:
    point: str
    after_s: float | None
    """Seconds from the launch to the kill; None: the point was passed before the launch, or the run ended first."""
    state: str
    """What the run had finished when it was killed (the check's own summary)."""


@dataclass
class Interrupted:
    kills: list[Kill] = field(default_factory=list)


def visible(folder: Path, pattern: str = "*") -> list[Path]:
    """Files matching ``pattern`` in ``folder``, hidden ones (temporaries) left out."""
    return sorted(p for p in folder.glob(pattern) if not p.name.startswith(".") and p.is_file())


def count_at_least(pattern: str, count: int) -> KillPoint:
    return KillPoint(f"{count} x {pattern}", lambda _: lambda out: len(visible(out, pattern)) >= count)


def rows_at_least(pattern: str, rows: int) -> KillPoint:
    """A CSV log matching ``pattern`` has ``rows`` data rows."""

    def reached(out: Path) -> bool:
        for path in visible(out, pattern):
            try:
                if path.read_text().count("\n") - 1 >= rows:
                    return True
            except OSError:
                pass
        return False

    return KillPoint(f"{pattern} has {rows} row(s)", lambda _: reached)


def written_after(first: str, then: str, rows: int) -> KillPoint:
    """``then`` (a checkpoint) was written after the log ``first`` reached ``rows`` rows: the last epoch's
    checkpoint is on disk and the run goes on to score the model."""

    def reached(out: Path) -> bool:
        logs, checkpoints = visible(out, first), visible(out, then)
        try:
            if not logs or not checkpoints or logs[0].read_text().count("\n") - 1 < rows:
                return False
            return checkpoints[0].stat().st_mtime_ns >= logs[0].stat().st_mtime_ns
        except OSError:
            return False

    return KillPoint(f"{then} written after {first} has {rows} rows", lambda _: reached)


def random_after(marker: str, high: float) -> KillPoint:
    """A random time (seeded), 0 to ``high`` seconds after the launch (re)writes ``marker``, its first output
    (its imports are done, the work begins)."""
    delay = round(random.Random(f"14 {marker}").uniform(0.0, high), 2)

    def make(launched: int) -> Trigger:
        seen: dict[str, float] = {}

        def reached(out: Path) -> bool:
            if "at" not in seen:
                try:
                    if (out / marker).stat().st_mtime_ns >= launched:
                        seen["at"] = time.monotonic()
                except OSError:
                    pass
                return False
            return time.monotonic() - seen["at"] >= delay

        return reached

    return KillPoint(f"random: {delay} s after {marker} is written", make, random=True)


def group_alive(pgid: int) -> bool:
    """Whether a process of the group (not a zombie) is still running (Linux /proc; elsewhere: False)."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def start(args: list[str], cwd: Path, log: Path) -> subprocess.Popen:
    with open(log, "wb") as fh:
        return subprocess.Popen(
            args, cwd=cwd, env=env_for(cwd), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )


def finish(proc: subprocess.Popen, log: Path) -> None:
    """Wait for a launch to end; it must succeed."""
    try:
        rc = proc.wait(timeout=LAUNCH_LIMIT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"{proc.args} ran over {LAUNCH_LIMIT_S} s:\n{log.read_text()[-3000:]}")
    assert rc == 0, f"{proc.args} failed ({rc}):\n{log.read_text()[-3000:]}"


def kill_at(args: list[str], cwd: Path, out: Path, point: KillPoint, log: Path) -> float | None:
    """Launch the command and SIGKILL its whole process group once ``point`` is reached; returns the seconds it
    ran, or None when a random point came after the run's end. A run that ends before any other point fails."""
    launched = time.time_ns()
    reached = point.make(launched)
    started = time.monotonic()
    proc = start(args, cwd, log)
    while proc.poll() is None:
        if reached(out):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            deadline = time.monotonic() + 10
            while group_alive(proc.pid):  # the refinement pool's workers die with the command
                assert time.monotonic() < deadline, f"processes of {proc.args} outlived the kill"
                time.sleep(0.05)
            return time.monotonic() - started
        if time.monotonic() - started > LAUNCH_LIMIT_S:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            pytest.fail(f"kill point '{point.name}' not reached in {LAUNCH_LIMIT_S} s")
        time.sleep(POLL_S)
    if point.random and proc.returncode == 0:
        return None
    pytest.fail(f"the run ended ({proc.returncode}) before kill point '{point.name}':\n{log.read_text()[-3000:]}")


def interrupted_run(args: list[str], cwd: Path, points: list[KillPoint], inspect: Callable[[Path], str]) -> Interrupted:
    """Kill the command at each point in turn (each launch resuming the last), then let it finish.
    ``inspect(out)`` checks the folder after each kill and summarises what the run had finished."""
    out = cwd / "out"
    result = Interrupted()
    for number, point in enumerate(points, 1):
        if out.is_dir() and point.make(time.time_ns())(out):
            result.kills.append(Kill(point.name, None, "passed before the launch (after a late random kill)"))
            continue
        seconds = kill_at(args, cwd, out, point, cwd / f"launch{number}.log")
        if seconds is None:  # a random time after the end: start again from nothing for the other points
            result.kills.append(Kill(point.name, None, "the run ended first; started again from an empty folder"))
            shutil.rmtree(out)
            continue
        assert_complete(out)
        left = sum(1 for path in out.rglob(".*.tmp"))  # the next launch removes them (checked at the end)
        result.kills.append(Kill(point.name, round(seconds, 1), f"{inspect(out)}; {left} temporaries"))
    proc = start(args, cwd, cwd / "final.log")
    finish(proc, cwd / "final.log")
    return result


# --- Checking outputs ---------------------------------------------------------------------------------------------

PNG_END = b"IEND\xaeB`\x82"


def assert_complete(out: Path) -> None:
    """Every output file on disk under its own name is whole: what a resume takes for finished is finished."""
    for path in out.rglob("*"):
        if path.name.startswith(".") or not path.is_file():
            continue
        data = path.read_bytes() if path.suffix in (".png", ".jpg", ".json") else b""
        if path.suffix == ".png":
            assert data.endswith(PNG_END), f"truncated PNG {path}"
        elif path.suffix == ".jpg":
            assert data.rstrip(b"\x00").endswith(b"\xff\xd9"), f"truncated JPEG {path}"
        elif path.suffix == ".json":
            json.loads(data)
        elif path.suffix == ".pt":
            assert zipfile.is_zipfile(path), f"truncated checkpoint {path}"


def files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def assert_same(expected: Any, actual: Any, where: str) -> None:
    """Equal values, recursively (tensors and arrays exactly); :data:`TIME_DEPENDENT` keys are not compared."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and expected.keys() == actual.keys(), where
        for key in expected:
            if key not in TIME_DEPENDENT:
                assert_same(expected[key], actual[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert type(actual) is type(expected) and len(actual) == len(expected), where
        for i, (a, b) in enumerate(zip(expected, actual, strict=True)):
            assert_same(a, b, f"{where}[{i}]")
    elif isinstance(expected, torch.Tensor):
        assert isinstance(actual, torch.Tensor) and expected.dtype == actual.dtype, where
        assert torch.equal(expected, actual), f"{where}: tensors differ"
    elif isinstance(expected, np.ndarray):
        assert np.array_equal(expected, actual), f"{where}: arrays differ"
    elif isinstance(expected, float) and math.isnan(expected):
        assert isinstance(actual, float) and math.isnan(actual), where
    else:
        assert expected == actual, f"{where}: {expected!r} != {actual!r}"


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """The interrupted run's folder holds exactly the uninterrupted run's files, with the same content."""
    assert files(actual) == files(expected), "the resumed run left other files (temporaries?) or lacks some"
    for name in files(expected):
        a, b = expected / name, actual / name
        if a.suffix == ".json":
            assert_same(json.loads(a.read_text()), json.loads(b.read_text()), name)
        elif a.suffix == ".csv":
            assert_same(read_csv(a), read_csv(b), name)
        elif a.suffix == ".pt":
            assert_same(torch.load(a, weights_only=False), torch.load(b, weights_only=False), name)
        else:  # PNG, JPEG, Markdown, HTML: byte for byte
            assert a.read_bytes() == b.read_bytes(), f"{name} differs"


def stamps(paths: list[Path]) -> dict[Path, tuple[int, int]]:
    return {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in paths}


# --- The four commands --------------------------------------------------------------------------------------------


@dataclass
class Command:
    """One command's scenario, run in ``root/ref`` (uninterrupted) and ``root/got`` (killed at ``points``), both
    writing ``out`` there. ``inspect`` notes what the run had finished at each kill (and returns a summary);
    ``check`` asserts at the end that none of it was done again."""

    name: str
    root: Path
    args: list[str]
    points: list[KillPoint]
    inspect: Callable[[Path], str]
    check: Callable[[], None]


def workdirs(root: Path) -> tuple[Path, Path]:
    ref, got = root / "ref", root / "got"
    ref.mkdir(parents=True)
    got.mkdir()
    return ref, got


def train_command(root: Path) -> Command:
    """``weakseg train``: a U-Net from random weights, 3 epochs at 32 px on the embedded pet sample."""
    config = {
        "dataset": {"name": "oxford_pet", "root": str(DEMO_ROOT), "size": 32, "val_fraction": 0.2},
        "model": {"arch": "unet", "weights": "none"},
        "train": {"epochs": 3, "batch_size": 8, "augment": ["hflip", "vflip"], "patience": 0, "progress": False},
    }
    for cwd in workdirs(root):
        (cwd / "train.yaml").write_text(yaml.safe_dump(config))
    histories: list[list[dict[str, Any]]] = []

    def inspect(out: Path) -> str:
        last = out / "last.pt"
        history = torch.load(last, weights_only=False)["history"] if last.is_file() else []
        histories.append(history)
        return f"{len(history)} of 3 epochs in last.pt, metrics.json: {(out / 'metrics.json').is_file()}"

    def check() -> None:
        final = torch.load(root / "got" / "out" / "last.pt", weights_only=False)["history"]
        for history in histories:  # epochs finished before a kill come from last.pt: not trained again
            assert [r["seconds"] for r in final[: len(history)]] == [r["seconds"] for r in history]

    points = [
        random_after("config.json", 3.0),
        rows_at_least("log.csv", 1),  # epoch 1 logged: its checkpoints are being written
        written_after("log.csv", "last.pt", 3),  # the last epoch's checkpoint on disk: the test split is scored
    ]
    args = weakseg("train", "-c", "train.yaml", "--out", "out", "--seed", "3")
    return Command("train", root, args, points, inspect, check)


def experiment_command(root: Path) -> Command:
    """``weakseg experiment run``: one row, two seeds, 2 epochs at 32 px each."""
    spec = {
        "name": "killed",
        "dataset": {"name": "oxford_pet", "root": str(DEMO_ROOT), "size": 32, "val_fraction": 0.2},
        "model": {"arch": "unet", "weights": "none"},
        "train": {"epochs": 2, "batch_size": 8, "progress": False},
        "seeds": [0, 1],
        "grid": {"coverage": [100]},
    }
    for cwd in workdirs(root):
        (cwd / "spec.yaml").write_text(yaml.safe_dump(spec))
    finished: dict[Path, tuple[int, int]] = {}

    def inspect(out: Path) -> str:
        done = visible(out, "*/seed*/metrics.json")
        finished.update(stamps(done))
        return f"{len(done)} of 2 seed runs finished, results.json: {(out / 'results.json').is_file()}"

    def check() -> None:
        assert finished, "no kill came after the first seed's run had finished"
        assert stamps(list(finished)) == finished, "a finished seed run was run again"

    points = [
        random_after("spec.json", 4.0),
        rows_at_least("*/seed0/log.csv", 1),  # in the middle of the first seed's run
        count_at_least("*/seed0/metrics.json", 1),  # between the two runs
    ]
    args = weakseg("experiment", "run", "spec.yaml", "--out", "out", "--records", "records")
    return Command("experiment run", root, args, points, inspect, check)


def write_folder(root: Path, n: int, masked: int) -> None:
    """A folder dataset of ``n`` ellipse images (tests.conftest.draw_object), tagged cat/dog, with boxes, masks
    for the first ``masked`` and a click on the next one."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    names, rows, annotations = [f"img_{i:03d}" for i in range(n)], ["name,label"], []
    coco: dict[str, list] = {"images": [], "annotations": annotations, "categories": [{"id": 1, "name": "object"}]}
    for i, name in enumerate(names):
        image, mask = draw_object(i, 40 + 8 * (i % 3), 56 + 8 * (i % 2))
        cv2.imwrite(str(root / "images" / f"{name}.png"), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        if i < masked:
            cv2.imwrite(str(root / "masks" / f"{name}.png"), mask * 255)
        elif i == masked:
            ys, xs = np.nonzero(mask)
            (root / "clicks.csv").write_text(f"name,x,y,label\n{name},{xs[0]},{ys[0]},positive\n")
        rows.append(f"{name}.png,{'cat' if i % 2 == 0 else 'dog'}")
        coco["images"].append({"id": i, "file_name": f"{name}.png", "height": mask.shape[0], "width": mask.shape[1]})
        x, y, w, h = cv2.boundingRect(mask)
        annotations.append({"id": i, "image_id": i, "category_id": 1, "bbox": [x, y, w, h], "iscrowd": 0})
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    (root / "boxes.json").write_text(json.dumps(coco))


def pseudo_label_command(root: Path) -> Command:
    """``weakseg pseudo-label``: 80 tagged images (two chunks of 64), a random classifier, GrabCut in a pool of two
    worker processes, soft maps and overlays."""
    from weakseg.models.classifier import build_classifier

    workdirs(root)
    write_folder(root / "data", 80, masked=0)
    torch.manual_seed(0)
    model = build_classifier("tf_efficientnet_lite0", 2, weights=None)
    state = {"classifier_spec": model.spec, "model": model.state_dict(), "tag_classes": ["cat", "dog"]}
    torch.save(state, root / "classifier.pt")
    kept: dict[Path, tuple[int, int]] = {}

    def inspect(out: Path) -> str:
        masks = visible(out / "masks", "*.png")
        kept.update(stamps(masks))
        return f"{len(masks)} of 80 masks"

    def check() -> None:
        assert 0 < len(kept) < 80
        assert stamps(list(kept)) == kept, "masks written before a kill were written again"

    points = [
        random_after("pseudo.json", 3.0),
        count_at_least("masks/*.png", 3),  # writing the first chunk's masks
        count_at_least("masks/*.png", 64),  # a chunk's masks written: the next chunk's CAMs and refinement follow
    ]
    args = weakseg(
        *("pseudo-label", "--classifier", str(root / "classifier.pt"), "--out", "out", "--dataset", "folder"),
        *("--root", str(root / "data"), "--split", "all", "--size", "32", "--batch-size", "16"),
        *("--refine", "otsu | grabcut:iters=2", "--workers", "2", "--overlays"),
    )
    return Command("pseudo-label", root, args, points, inspect, check)


def label_command(root: Path) -> Command:
    """``weakseg label``: 12 images (3 masks, boxes on the others, a click), box masks from the boxes and GrabCut, a
    segmenter trained 3 epochs at 32 px predicting 9 masks, a COCO export."""
    workdirs(root)
    write_folder(root / "data", 12, masked=3)
    kept: dict[Path, tuple[int, int]] = {}

    def inspect(out: Path) -> str:
        boxes = visible(out / "boxes" / "grabcut", "*.png")
        kept.update(stamps(visible(out / "boxes" / "box", "*.png") + boxes))
        log = out / "model" / "log.csv"
        epochs = len(read_csv(log)) if log.is_file() else 0
        return f"{len(boxes)} of 9 box masks, {epochs} of 3 epochs, {len(visible(out / 'masks', '*.png'))} of 12 masks"

    def check() -> None:
        assert kept and stamps(list(kept)) == kept, "box masks written before a kill were made again"

    points = [
        count_at_least("boxes/grabcut/*.png", 4),  # making the masks of the boxes (short: before the random kill)
        random_after("label.json", 2.0),
        rows_at_least("model/log.csv", 2),  # training the segmenter
        written_after("model/log.csv", "model/last.pt", 3),  # trained: the masks are predicted and written
    ]
    args = weakseg(
        *("label", str(root / "data"), "--out", "out", "--generator", "box"),
        *("--size", "32", "--epochs", "3", "--export", "coco"),
    )
    return Command("label", root, args, points, inspect, check)


COMMANDS: dict[str, Callable[[Path], Command]] = {
    "train": train_command,
    "experiment run": experiment_command,
    "pseudo-label": pseudo_label_command,
    "label": label_command,
}


@dataclass
class Played:
    command: Command
    result: Interrupted


def play(command: Command) -> Played:
    """The uninterrupted run and, beside it, the interrupted one."""
    ref, got = command.root / "ref", command.root / "got"
    reference = start(command.args, ref, ref / "reference.log")
    try:
        result = interrupted_run(command.args, got, command.points, command.inspect)
    finally:
        finish(reference, ref / "reference.log")
    return Played(command, result)


@pytest.fixture(scope="module")
def played(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future]]:
    """Every selected command's runs, all at once: one command's launches follow each other, and alone they would
    leave the second core idle."""
    selected = [
        item.callspec.params["command"]
        for item in request.session.items
        if item.module is request.module and hasattr(item, "callspec") and "command" in item.callspec.params
    ]
    root = tmp_path_factory.mktemp("kill")
    commands = [COMMANDS[name](root / name.replace(" ", "-")) for name in COMMANDS if name in selected]
    with ThreadPoolExecutor(max(1, len(commands))) as pool:
        yield {command.name: pool.submit(play, command) for command in commands}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_killed_and_resumed_run_ends_as_an_uninterrupted_one(played: dict[str, Future], command: str):
    outcome = played[command].result()
    root = outcome.command.root
    assert_same_outputs(root / "ref" / "out", root / "got" / "out")
    outcome.command.check()
    for kill in outcome.result.kills:  # pytest -s shows the table of docs/benchmarks.md
        print(f"| {command} | {kill.point} | {kill.after_s if kill.after_s is not None else '-'} | {kill.state} |")


def test_a_write_killed_midway_leaves_nothing_that_reads_as_an_output(tmp_path: Path):
    """A process killed inside an atomic write leaves a hidden temporary that no listing of outputs sees (masks
    folders are globbed for ``*.png`` by exports and scoring), and the next run's sweep removes it."""
    from weakseg.export.base import collect_masks
    from weakseg.io import list_images, remove_temporaries

    masks = tmp_path / "masks"
    script = (
        "import os, signal, numpy as np\n"
        "from weakseg.io import atomic_path, write_png\n"
        f"write_png({str(masks / 'a.png')!r}, np.zeros((4, 4), np.uint8))\n"
        f"with atomic_path({str(masks / 'b.png')!r}) as tmp:\n"
        "    tmp.write_bytes(b'\\x89PNG\\r\\n')\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], env=env_for(tmp_path), capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    assert len(list(masks.iterdir())) == 2  # the finished mask and the killed write's temporary
    assert [p.name for p in masks.glob("*.png")] == ["a.png"] and [p.name for p in list_images(masks)] == ["a.png"]
    assert [item.name for item in collect_masks(tmp_path).items] == ["a"]
    with open(masks / ".c.png.elsewhere-1.abcdefgh.tmp", "wb"):  # another machine's write: maybe in progress
        pass
    assert remove_temporaries(tmp_path) == 1
    assert sorted(p.name for p in masks.iterdir()) == [".c.png.elsewhere-1.abcdefgh.tmp", "a.png"]
