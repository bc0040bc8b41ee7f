"""Progress bars: one look for every long loop (count, rate, elapsed time, ETA), on stderr, silenced by
``weakseg --quiet`` and ``weakseg --json`` (the environment variable ``WEAKSEG_QUIET=1``, inherited by worker and
torchrun processes)."""

from __future__ import annotations

import os

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text

QUIET_ENV = "WEAKSEG_QUIET"


def quiet() -> bool:
    """Whether progress bars and chatter are off (``weakseg --quiet`` / ``--json``, or ``WEAKSEG_QUIET=1``)."""
    return os.environ.get(QUIET_ENV, "") not in ("", "0")


def set_quiet(value: bool) -> None:
    """Turn progress bars off (or on) for this process and the processes it starts."""
    if value:
        os.environ[QUIET_ENV] = "1"
    else:
        os.environ.pop(QUIET_ENV, None)


class RateColumn(ProgressColumn):
    """Items per second (or seconds per item when slower than one a second)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("", style="progress.data.speed")
        text = f"{speed:.1f}/s" if speed >= 1 else f"{1 / speed:.1f} s/it"
        return Text(text, style="progress.data.speed")


def progress_bar(enabled: bool = True, transient: bool = True, info: bool = False) -> Progress:
    """A progress display for ``with progress_bar(...) as bar: task = bar.add_task(name, total=n)``: description,
    bar, done/total, rate, elapsed, ETA, and with ``info`` a free text field (``bar.update(task, info=...)``).
    Off when ``enabled`` is false or weakseg is quiet; drawn on stderr so that ``--json`` output stays clean."""
    columns: list[ProgressColumn] = [
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    ]
    if info:
        columns.append(TextColumn("{task.fields[info]}"))
    return Progress(*columns, disable=not enabled or quiet(), transient=transient, console=Console(stderr=True))
