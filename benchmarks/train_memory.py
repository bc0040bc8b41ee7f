"""Peak memory and speed of ``weakseg train`` as the training split grows: the prepared split stored by rows on
disk (this checkout) against the split held whole in RAM (an older commit, run from a ``git worktree``).

For each N a folder dataset of N training images (``trainval.txt``) and a small test split is built from a pool
of distinct synthetic pictures (ellipses on noise, 160 x 120 PNG, with 0/255 masks) repeated by symbolic links, so
30 000 images cost 30 000 links. Per code version and N, two child processes are measured:

- ``prepare``: decoding the two splits into an empty cache (seconds; peak RSS);
- ``train``: ``weakseg train`` on the prepared cache, one epoch of ``--epoch-images`` images (``train.epoch_images``)
  at 128 px, validation on 1 % of the training images, then the test split.

Peak RSS is the child's own ``ru_maxrss`` (``os.wait4``, = VmHWM: every resident page, including the shared
libraries mapped from files); the anonymous and file-backed parts (``RssAnon``, ``RssFile`` of
``/proc/<pid>/status``) are polled every 50 ms and their peaks reported too. Training speed is the epoch's
``images_per_s`` from the run's ``log.csv``; it is then measured as ``--pairs`` alternating old/new pairs at the
middle N, since a training run shares the machine. The load average is printed with every line. Everything the
benchmark writes (datasets, caches, runs, the worktree) is removed at the end. ``--loader-only`` times just the
batch reading, in one process: the old way (whole in-RAM tensors indexed) against rows read from disk.

python benchmarks/train_memory.py --old-ref 211e9d5             # N = 300, 3000, 30000; in-RAM code: 211e9d5
python benchmarks/train_memory.py --sizes 300 3000 --old-ref 211e9d5 --pairs 2
python benchmarks/train_memory.py --loader-only              # ms per batch: in-RAM tensors vs rows on disk
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
PREPARE = """
import sys, time
from weakseg.data.folder import FolderDataset
from weakseg.data.prepared import prepare
started = time.perf_counter()
for split, native in (("trainval", False), ("test", True)):
    prepare(FolderDataset(sys.argv[1], split=split), int(sys.argv[2]), keep_native=native, progress=False)
print(time.perf_counter() - started)
"""


def make_dataset(root: Path, count: int, test: int = 32, pool: int = 64, seed: int = 0) -> None:
    """``count`` training and ``test`` test images (links to ``pool`` distinct pictures) with masks."""
    rng = np.random.default_rng(seed)
    store = root / "pool"
    for folder in ("pool", "images", "masks"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for k in range(pool):
        image = cv2.GaussianBlur(rng.integers(0, 90, (120, 160, 3), dtype=np.uint8), (5, 5), 0)
        mask = np.zeros((120, 160), np.uint8)
        center = (int(rng.integers(40, 120)), int(rng.integers(30, 90)))
        axes = (int(rng.integers(15, 40)), int(rng.integers(10, 30)))
        cv2.ellipse(mask, center, axes, float(rng.uniform(0, 180)), 0, 360, 255, -1)
        image[mask > 0] = (0.3 * image[mask > 0] + 0.7 * rng.integers(150, 255, 3)).astype(np.uint8)
        cv2.imwrite(str(store / f"{k}.png"), image)
        cv2.imwrite(str(store / f"{k}_mask.png"), mask)
    names = [f"img_{i:06d}" for i in range(count + test)]
    for i, name in enumerate(names):
        os.symlink(store / f"{i % pool}.png", root / "images" / f"{name}.png")
        os.symlink(store / f"{i % pool}_mask.png", root / "masks" / f"{name}.png")
    (root / "trainval.txt").write_text("".join(f"{n}\n" for n in names[:count]))
    (root / "test.txt").write_text("".join(f"{n}\n" for n in names[count:]))


def write_config(path: Path, root: Path, size: int, epoch_images: int, workers: int | None) -> None:
    train = {"epochs": 1, "batch_size": 16, "epoch_images": epoch_images, "progress": False}
    if workers is not None:  # the older code has no such setting
        train["workers"] = workers
    config = {
        "dataset": {"name": "folder", "root": str(root), "train_split": "trainval", "test_split": "test"}
        | {"size": size, "val_fraction": 0.01},
        "model": {"arch": "unet", "weights": None},
        "method": {"name": "full"},
        "train": train,
    }
    path.write_text(json.dumps(config))  # JSON is YAML


def measure(command: list[str], env: dict[str, str], log: Path) -> dict:
    """Run ``command``; its wall time, peak RSS (ru_maxrss) and polled peaks of RssAnon / RssFile, in MiB."""
    peaks = {"RssAnon": 0, "RssFile": 0}
    with open(log, "w") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent)
        done = threading.Event()

        def poll() -> None:
            status = Path(f"/proc/{proc.pid}/status")
            while not done.is_set():
                try:
                    for line in status.read_text().splitlines():
                        key, _, value = line.partition(":")
                        if key in peaks:
                            peaks[key] = max(peaks[key], int(value.split()[0]))
                except (OSError, ValueError):
                    pass
                done.wait(0.05)

        watcher = threading.Thread(target=poll, daemon=True)
        watcher.start()
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own peak, not the maximum over all children
        proc.returncode = os.waitstatus_to_exitcode(status)
        done.set()
        watcher.join()
    if proc.returncode:
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}); see {log}:\n{log.read_text()[-3000:]}")
    return {
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024),
        "peak_anon_mib": round(peaks["RssAnon"] / 1024),
        "peak_file_mib": round(peaks["RssFile"] / 1024),
    }


def images_per_s(run: Path) -> float:
    lines = (run / "log.csv").read_text().splitlines()
    header, row = lines[0].split(","), lines[1].split(",")
    return round(float(row[header.index("images_per_s")]), 2)


class Version:
    """One code version: its source tree (on PYTHONPATH) and its own prepared-split cache."""

    def __init__(self, name: str, tree: Path, work: Path, workers: int | None):
        self.name, self.tree, self.workers = name, tree, workers
        self.cache = work / f"cache-{name}"
        self.env = os.environ | {"PYTHONPATH": str(tree), "WEAKSEG_CACHE": str(self.cache), "WEAKSEG_QUIET": "1"}

    def prepare(self, root: Path, size: int, work: Path) -> dict:
        shutil.rmtree(self.cache, ignore_errors=True)
        log = work / f"prepare-{self.name}.log"
        result = measure([sys.executable, "-c", PREPARE, str(root), str(size)], self.env, log)
        result["prepare_s"] = round(float(log.read_text().split()[-1]), 1)
        return result

    def train(self, root: Path, size: int, epoch_images: int, work: Path, tag: str, workers: int | None = None):
        config, run = work / f"config-{self.name}-{tag}.yaml", work / f"run-{self.name}-{tag}"
        write_config(config, root, size, epoch_images, self.workers if workers is None else workers)
        shutil.rmtree(run, ignore_errors=True)
        weakseg = [sys.executable, "-c", "from weakseg.cli import app; app()"]
        result = measure([*weakseg, "train", "-c", str(config), "--out", str(run)], self.env, work / f"{tag}.log")
        result["images_per_s"] = images_per_s(run)
        shutil.rmtree(run, ignore_errors=True)
        return result


def old_batches(images, masks, batch_size: int, generator, order):
    """Batches as ``iterate_batches`` made them before the store (whole in-RAM tensors indexed, then flipped)."""
    import torch

    from weakseg.data.transforms import augment_batch

    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        batch, labels = augment_batch(images[index], masks[index], ["hflip"], generator)
        batch = batch.float().div_(255).contiguous(memory_format=torch.channels_last)
        yield batch, labels.long(), index.tolist()


def loader_speed(count: int, size: int, work: Path, batches: int = 200, rounds: int = 3) -> dict:
    """Milliseconds per batch of 16 (hflip), in this process: the old way (in-RAM tensors) against rows read from
    disk (the page cache warm, as after preparing), alternating, random order; no model."""
    import torch

    from weakseg.data.prepared import PreparedSplit, iterate_batches, open_split, write_split

    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, size, size), dtype=torch.uint8, generator=generator)
    masks = torch.randint(0, 2, (count, size, size), dtype=torch.uint8, generator=generator)
    ram = PreparedSplit([str(i) for i in range(count)], images, masks, [[0]] * count, [None] * count, [None] * count)
    write_split(ram, work / "loader")
    disk = open_split(work / "loader")
    times: dict[str, list[float]] = {"old": [], "new": []}
    for r in range(rounds):
        for way in ("old", "new") if r % 2 == 0 else ("new", "old"):
            order = torch.randint(0, count, (batches * 16,), generator=generator)
            started = time.perf_counter()
            if way == "old":
                for _ in old_batches(images, masks, 16, generator, order):
                    pass
            else:
                for _ in iterate_batches(
                    disk, 16, torch.device("cpu"), generator=generator, augment=["hflip"], order=order
                ):
                    pass
            times[way].append(round(1000 * (time.perf_counter() - started) / batches, 3))
    shutil.rmtree(work / "loader")
    return {"bench": "train_memory_loader", "images": count, "size": size, "ms_per_batch": times, "load": load()}


def load() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[300, 3000, 30000])
    parser.add_argument("--size", type=int, default=128, help="prepared image size")
    parser.add_argument("--epoch-images", type=int, default=320, help="images of the one training epoch")
    parser.add_argument(
        "--old-ref",
        default="211e9d5",
        help="commit of the in-RAM code (default: the last before the row store; empty: new only)",
    )
    parser.add_argument("--pairs", type=int, default=3, help="alternating old/new throughput pairs")
    parser.add_argument("--workers", type=int, default=0, help="train.workers of the new code")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--loader-only", action="store_true", help="only the batch-reading comparison (no model)")
    args = parser.parse_args()
    if args.loader_only:
        work = Path(tempfile.mkdtemp(prefix="weakseg-loader-", dir=args.work))
        try:
            print(json.dumps(loader_speed(sorted(args.sizes)[len(args.sizes) // 2], args.size, work)), flush=True)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return

    work = Path(tempfile.mkdtemp(prefix="weakseg-memory-", dir=args.work))
    worktree = work / "old-tree"
    versions = [Version("new", REPO, work, args.workers)]
    try:
        if args.old_ref:
            subprocess.run(
                ["git", "-C", str(REPO), "worktree", "add", "--detach", str(worktree), args.old_ref], check=True
            )
            versions.insert(0, Version("old", worktree, work, None))
        for n in args.sizes:
            root = work / f"data-{n}"
            make_dataset(root, n)
            for version in versions:
                row = {"bench": "train_memory", "code": version.name, "images": n, "size": args.size}
                row |= {"epoch_images": args.epoch_images, "load_before": load()}
                prepared = version.prepare(root, args.size, work)
                trained = version.train(root, args.size, args.epoch_images, work, f"{n}")
                row |= {"prepare": prepared, "train": trained, "load_after": load()}
                print(json.dumps(row), flush=True)
            if n == sorted(args.sizes)[len(args.sizes) // 2] and len(versions) == 2:
                speeds: dict[str, list[float]] = {"old": [], "new": []}
                for pair in range(args.pairs):
                    for version in versions if pair % 2 == 0 else versions[::-1]:
                        result = version.train(root, args.size, args.epoch_images, work, f"pair{pair}")
                        speeds[version.name].append(result["images_per_s"])
                ratios = [round(b / a, 3) for a, b in zip(speeds["old"], speeds["new"], strict=True)]
                pairs = {"bench": "train_memory_speed", "images": n, "old_img_s": speeds["old"]}
                pairs |= {"new_img_s": speeds["new"], "pair_ratios": ratios, "ratio": sorted(ratios)[len(ratios) // 2]}
                print(json.dumps(pairs | {"load": load()}), flush=True)
            for version in versions:
                shutil.rmtree(version.cache, ignore_errors=True)
            shutil.rmtree(root)
    finally:
        if worktree.exists():
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(worktree)], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
