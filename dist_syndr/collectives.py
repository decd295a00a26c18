"""Collectives over numpy arrays and picklable objects: identities without a process group.

Every rank calls them in the same order; without a torch process group (one
process, or tests that split work by ``(rank, world_size)`` arguments) each
returns what a one-rank group would. Tensors travel on the device
:func:`dist_syndr.runtime.collective_device` names (the GPU under NCCL).

:func:`exclusive_lock` is :func:`dist_syndr.files.exclusive_lock` for a job of
several ranks: the ranks that hold it (rank 0, or each node's first rank for
node-local files) take it before any rank writes, and every rank learns whether
they all got it, so a second job stops on every rank with the same one line.

Shapes: arrays ``(n_r, ...)`` per rank ``r``, the trailing shape the same on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from dist_syndr import files, runtime


def all_gather_array(array: np.ndarray) -> list[np.ndarray]:
    """Every rank's 1-D-or-more ``array`` (lengths may differ along axis 0), in rank order."""
    if not runtime.is_distributed():
        return [array]
    import torch
    import torch.distributed as dist

    device = runtime.collective_device()
    world_size = dist.get_world_size()
    length = torch.tensor([array.shape[0]], dtype=torch.int64, device=device)
    lengths = [torch.zeros_like(length) for _ in range(world_size)]
    dist.all_gather(lengths, length)
    longest = int(max(int(n) for n in lengths))
    padded = np.zeros((longest, *array.shape[1:]), dtype=array.dtype)
    padded[: array.shape[0]] = array
    local = torch.from_numpy(padded).to(device)
    gathered = [torch.empty_like(local) for _ in range(world_size)]
    dist.all_gather(gathered, local)
    return [g[: int(n)].cpu().numpy() for g, n in zip(gathered, lengths, strict=True)]


def all_gather_objects(value: object) -> list:
    """Every rank's picklable ``value``, in rank order (``[value]`` without a process group)."""
    if not runtime.is_distributed():
        return [value]
    import torch.distributed as dist

    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_buffers(module, src: int = 0) -> None:
    """Give every rank rank ``src``'s module buffers (BatchNorm running statistics drift apart per rank)."""
    if not runtime.is_distributed():
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=src)


def barrier() -> None:
    """Wait for every rank (nothing to wait for without a process group)."""
    if runtime.is_distributed():
        import torch.distributed as dist

        dist.barrier()


def broadcast_array(array: np.ndarray | None, src: int = 0) -> np.ndarray:
    """Rank ``src``'s array on every rank (other ranks pass None)."""
    if array is None and not runtime.is_distributed():
        raise ValueError("broadcast_array without a process group needs the array itself")
    return broadcast_object(array, src)


def broadcast_object(value: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``value`` on every rank (``value`` itself without a process group)."""
    if not runtime.is_distributed():
        return value
    import torch.distributed as dist

    box = [value if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path | None, what: str, *, is_collective: bool = True) -> Iterator[None]:
    """:func:`dist_syndr.files.exclusive_lock` on ``lock_file`` for the block, taken by the ranks that pass one
    (the others pass None). With ``is_collective`` every rank of the group calls it: when any holder finds its
    lock held, every rank raises the same :class:`dist_syndr.files.LockedError` (the first in rank order)
    before the block starts, so no rank writes. ``is_collective=False``: a single-writer call inside a
    distributed job (no other rank meets it)."""
    with contextlib.ExitStack() as stack:
        problem = None
        if lock_file is not None:
            try:
                stack.enter_context(files.exclusive_lock(lock_file, what))
            except files.LockedError as error:
                problem = str(error)
        refuse_if_any(problem, error_type=files.LockedError, is_collective=is_collective)
        yield


def refuse_if_any(
    problem: str | None, *, error_type: type[ValueError] = ValueError, is_collective: bool = True
) -> None:
    """Every rank passes its reason to stop (None: none); when any rank has one, every rank raises
    ``error_type`` with the first in rank order, so all ranks end in the same one line. Collective (a
    barrier as well) unless ``is_collective`` is False. A refusal ends the job: the ranks leave the
    process group together first (one that exits while another still holds the group can abort)."""
    problems = all_gather_objects(problem) if is_collective else [problem]
    first = next((text for text in problems if text), None)
    if first is None:
        return
    if is_collective and runtime.is_distributed():
        barrier()
        runtime.shutdown()
    raise error_type(first)
