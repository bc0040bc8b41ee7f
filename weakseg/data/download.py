"""Fetching official dataset archives (only when asked with ``--download``)."""

from __future__ import annotations

import shutil
import tarfile
import urllib.request
import zipfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

from weakseg.errors import WeaksegError
from weakseg.io import atomic_path
from weakseg.progress import quiet


def download_file(url: str, dest: Path) -> Path:
    """Download ``url`` to ``dest`` with a progress bar; the file appears only when complete."""
    if dest.is_file():
        return dest
    try:
        with urllib.request.urlopen(url, timeout=30) as response, atomic_path(dest) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            columns = (
                "{task.description}",
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
            )
            shown = Progress(*columns, transient=True, disable=quiet(), console=Console(stderr=True))
            with shown as bar, open(tmp, "wb") as out:
                task = bar.add_task(dest.name, total=total)
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    bar.advance(task, len(chunk))
    except (OSError, ValueError) as err:  # URLError is an OSError; a malformed URL a ValueError
        raise WeaksegError(f"cannot download '{url}': {err}. Download it by hand into '{dest.parent}'.") from err
    return dest


def extract(archive: Path, dest: Path) -> None:
    """Extract a .tar.gz or .zip archive into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if archive.name.endswith((".tar.gz", ".tgz", ".tar")):
            with tarfile.open(archive) as tar:
                tar.extractall(dest, filter="data")
        elif archive.suffix == ".zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(dest)
        else:
            raise WeaksegError(f"unknown archive type: '{archive}'")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as err:
        archive.unlink(missing_ok=True)  # never reuse a broken download
        raise WeaksegError(f"archive '{archive}' is damaged ({err}); it was removed, run again to re-download") from err


def fetch_archives(urls: list[str], root: Path) -> None:
    """Download and extract each archive into ``root``; archives are removed once extracted."""
    root.mkdir(parents=True, exist_ok=True)
    for url in urls:
        archive = download_file(url, root / url.rsplit("/", 1)[-1])
        extract(archive, root)
        archive.unlink()


def hoist(root: Path, subfolder: str) -> None:
    """Move the contents of ``root/subfolder`` up into ``root`` (for archives with a top folder)."""
    inner = root / subfolder
    if not inner.is_dir():
        return
    for item in inner.iterdir():
        target = root / item.name
        if not target.exists():
            shutil.move(str(item), target)
    shutil.rmtree(inner, ignore_errors=True)
