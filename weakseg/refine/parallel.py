"""Run a refinement pipeline over many images, in worker processes when it pays.

Workers come from a ``forkserver`` context (``spawn`` where there is none), never plain ``fork``: a forked
child inherits the parent's torch and OpenCV thread pools in an undefined state and can hang (it did, in a
test). As with any ``multiprocessing`` code, a script that uses a pool needs the
``if __name__ == "__main__":`` guard, or the workers re-run it. Each worker calls ``cv2.setNumThreads(1)``
(one image per core is the parallelism). The pipeline travels as its canonical string; images travel in chunks
to keep IPC small.
The in-process path (``workers=1``) leaves the caller's OpenCV thread setting alone.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Executor, ProcessPoolExecutor
from functools import lru_cache
from types import TracebackType
from typing import Any

import cv2
import numpy as np

from weakseg.errors import ConfigError
from weakseg.refine.pipeline import PipelineSpec, RefinePipeline, parse_pipeline

__all__ = ["Refiner", "bench_refine", "default_chunksize", "refine_many"]

MAX_CHUNK = 8


def _init_worker() -> None:
    cv2.setNumThreads(1)


@lru_cache(maxsize=16)
def _pipeline_from_string(spec: str) -> RefinePipeline:
    return parse_pipeline(spec)


def _refine_chunk(spec: str, images: list[np.ndarray | None], softs: list[np.ndarray]) -> list[np.ndarray]:
    pipeline = _pipeline_from_string(spec)
    return [pipeline(image, soft) for image, soft in zip(images, softs, strict=True)]


def default_chunksize(n: int, workers: int) -> int:
    """About four chunks per worker for load balance, at most MAX_CHUNK images each."""
    return max(1, min(MAX_CHUNK, math.ceil(n / (4 * max(1, workers)))))


def _default_workers(pipeline: RefinePipeline) -> int:
    """Every core for a pipeline with a CPU-heavy op (GrabCut, CRF); in-process otherwise, where a pool's start-up
    and transfers cost more than the work."""
    return (os.cpu_count() or 1) if pipeline.is_cpu_heavy else 1


def _mp_context() -> multiprocessing.context.BaseContext:
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


class Refiner:
    """Reusable refiner: ``with Refiner(pipeline, workers=4) as r: masks = r.map(images, softs)``.

    The worker pool starts on first use and lives until ``close()``/the end of the ``with`` block, so a caller
    refining many batches pays the start-up once. ``workers=1`` runs in-process; ``None`` means every core for a
    CPU-heavy pipeline (GrabCut, CRF) and in-process for the rest.
    """

    def __init__(self, pipeline: PipelineSpec, workers: int | None = None, chunksize: int | None = None):
        self.pipeline = parse_pipeline(pipeline)
        self.workers = _default_workers(self.pipeline) if workers is None else int(workers)
        if self.workers < 1:
            raise ConfigError(f"workers must be >= 1, got {workers}")
        if chunksize is not None and int(chunksize) < 1:
            raise ConfigError(f"chunksize must be >= 1, got {chunksize}")
        self.chunksize = None if chunksize is None else int(chunksize)
        self._spec = str(self.pipeline)
        self._pool: Executor | None = None

    def _executor(self) -> Executor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(self.workers, mp_context=_mp_context(), initializer=_init_worker)
        return self._pool

    def map(self, images: Sequence[np.ndarray | None] | None, softs: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Refine each (image, soft) pair; returns uint8 0/1 masks in input order. ``images`` may be None when
        the pipeline does not read the image."""
        softs = list(softs)
        images = [None] * len(softs) if images is None else list(images)
        if len(images) != len(softs):
            raise ConfigError(f"got {len(images)} images but {len(softs)} soft maps")
        if not softs:
            return []
        if self.workers == 1:
            return [self.pipeline(image, soft) for image, soft in zip(images, softs, strict=True)]
        size = self.chunksize or default_chunksize(len(softs), self.workers)
        pool = self._executor()
        futures = [
            pool.submit(_refine_chunk, self._spec, images[i : i + size], softs[i : i + size])
            for i in range(0, len(softs), size)
        ]
        return [mask for future in futures for mask in future.result()]

    def close(self) -> None:
        """Shut the worker pool down (waits for running chunks)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> Refiner:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def refine_many(
    pipeline: PipelineSpec,
    images: Sequence[np.ndarray | None] | None,
    softs: Sequence[np.ndarray],
    workers: int | None = None,
    chunksize: int | None = None,
) -> list[np.ndarray]:
    """Refine a batch, order-preserving; one-shot wrapper around :class:`Refiner` (no more workers than chunks).

    Results are bit-identical for any ``workers`` (GrabCut reseeds OpenCV's RNG per image).
    """
    softs = list(softs)
    pipeline = parse_pipeline(pipeline)
    workers = _default_workers(pipeline) if workers is None else int(workers)
    if softs and workers > 1:
        size = chunksize or default_chunksize(len(softs), workers)
        workers = min(workers, math.ceil(len(softs) / size))
    with Refiner(pipeline, workers, chunksize) as refiner:
        return refiner.map(images, softs)


def bench_refine(
    pipeline: PipelineSpec,
    images: Sequence[np.ndarray | None] | None,
    softs: Sequence[np.ndarray],
    workers: int,
    chunksize: int | None = None,
) -> dict[str, Any]:
    """Time the pipeline in-process vs in ``workers`` processes.

    Serial: after one excluded warm-up image (lazy imports). Parallel (``parallel_img_s``, ``speedup``): a fresh
    pool, start-up included — what a one-shot :func:`refine_many` costs. ``parallel_warm_img_s`` and
    ``speedup_warm`` repeat the batch on the already-started pool (a long-lived :class:`Refiner`).
    ``identical`` checks the parallel masks equal the serial ones.
    """
    pipe = parse_pipeline(pipeline)
    softs = list(softs)
    images = [None] * len(softs) if images is None else list(images)
    n = len(softs)
    if n == 0:
        raise ConfigError("bench_refine needs at least one image")
    pipe(images[0], softs[0])
    started = time.perf_counter()
    serial = [pipe(image, soft) for image, soft in zip(images, softs, strict=True)]
    serial_s = time.perf_counter() - started
    started = time.perf_counter()
    with Refiner(pipe, workers, chunksize) as refiner:
        parallel = refiner.map(images, softs)
        parallel_s = time.perf_counter() - started
        started = time.perf_counter()
        refiner.map(images, softs)
        warm_s = time.perf_counter() - started
    return {
        "pipeline": str(pipe),
        "images": n,
        "serial_img_s": round(n / serial_s, 2),
        "parallel_img_s": round(n / parallel_s, 2),
        "workers": refiner.workers,
        "speedup": round(serial_s / parallel_s, 3),
        "parallel_warm_img_s": round(n / warm_s, 2),
        "speedup_warm": round(serial_s / warm_s, 3),
        "serial_ms_per_img": round(1000 * serial_s / n, 2),
        "identical": all(np.array_equal(a, b) for a, b in zip(serial, parallel, strict=True)),
        "cpu_count": os.cpu_count(),
    }
