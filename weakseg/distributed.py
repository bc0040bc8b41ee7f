"""Several processes, launched by ``torchrun``: joining its process group and the few collectives weakseg uses.

torchrun starts the processes, runs the rendezvous and sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``; :func:`setup` only joins the group those variables describe (``env://``),
with gloo for CPU tensors and NCCL for CUDA ones, each process on GPU ``LOCAL_RANK``. Launched any other way
(one plain process) every function here is a no-op: :func:`world` is 1 and :func:`is_main` is true.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from weakseg.errors import WeaksegError

T = TypeVar("T")


def launched() -> bool:
    """Whether torchrun (or an equivalent launcher) started this process as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def setup() -> None:
    """Join torchrun's process group, once; a no-op in a single process. With CUDA, this process takes GPU
    ``LOCAL_RANK`` (so ``cuda`` means that GPU) and CUDA tensors go through NCCL, CPU tensors through gloo."""
    if not launched() or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("cpu:gloo,cuda:nccl")
    else:
        dist.init_process_group("gloo")


def teardown() -> None:
    """Leave the process group (at the end of a command)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def world() -> int:
    """The number of processes training together (1 without torchrun)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's number among them, 0 to ``world() - 1``."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Whether this process writes the shared outputs (checkpoints, logs, results): rank 0."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (what rank 0 wrote before is then there for all)."""
    if world() > 1:
        dist.barrier()


def shard(items: Sequence[T]) -> list[T]:
    """This process's share of ``items``: every ``world()``-th one from its rank on."""
    return list(items[rank() :: world()])


def gather_objects(value: Any) -> list[Any]:
    """Every process's ``value`` (picklable), in rank order, on every process."""
    if world() == 1:
        return [value]
    out: list[Any] = [None] * world()
    dist.all_gather_object(out, value)
    return out


def main_first(action: Callable[[], T]) -> T:
    """Run ``action`` on rank 0 only (claiming an output folder, say), then let every process go on with its
    result, or raise on every process the :class:`~weakseg.errors.WeaksegError` it raised. One process: ``action()``."""
    if world() == 1:
        return action()
    outcome: tuple[Any, WeaksegError | None] = (None, None)
    if is_main():
        try:
            outcome = (action(), None)
        except WeaksegError as err:
            outcome = (None, err)
    result, error = gather_objects(outcome)[0]
    if error is not None:
        raise error
    return result


def average_buffers(module: torch.nn.Module) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the processes, in place, so that
    every process evaluates and saves the same model."""
    if world() == 1:
        return
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world())


def parts(count: int) -> list[int]:
    """How many of ``count`` items (one global batch) each process takes: near-equal, the first ones larger."""
    return [len(part) for part in torch.arange(count).tensor_split(world())]


def gather_parts(local: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenate every process's ``local`` rows (``sizes[r]`` on rank ``r``) along dimension 0, in rank order,
    differentiably: the gradient of each process's rows flows back to that process."""
    if world() == 1:
        return local
    longest = max(sizes)
    padded = (
        torch.cat([local, local.new_zeros((longest - len(local), *local.shape[1:]))]) if len(local) < longest else local
    )
    with warnings.catch_warnings():  # the autograd-aware all_gather; its successors are still private API
        warnings.simplefilter("ignore", FutureWarning)
        from torch.distributed.nn.functional import all_gather

        pieces = all_gather(padded.contiguous())
    return torch.cat([piece[:size] for piece, size in zip(pieces, sizes, strict=True)])
