"""Errors a user can act on. The CLI prints them as one line, without a traceback."""

from __future__ import annotations

from pathlib import Path


class WeaksegError(Exception):
    """Base class for errors caused by input, configuration or environment (not by a bug)."""


class DatasetNotFoundError(WeaksegError):
    """A dataset is not where it was looked for."""

    def __init__(self, name: str, looked: Path | str, hint: str):
        self.looked = Path(looked)
        super().__init__(f"{name} dataset not found: looked in '{looked}'. {hint}")


class DataFileError(WeaksegError):
    """A file a dataset needs is missing or unreadable."""

    def __init__(self, path: Path | str, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{problem}: '{path}'")


class ConfigError(WeaksegError):
    """A configuration or experiment spec is invalid."""


class WeightsUnavailableError(WeaksegError):
    """Pretrained weights cannot be loaded (usually: offline and not bundled)."""


class TrainingDivergedError(WeaksegError):
    """The training loss became NaN or infinite; the weights were not updated with it."""
