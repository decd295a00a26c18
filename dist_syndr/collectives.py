"""Collectives over numpy arrays and picklable objects: identities without a process group.

Every rank calls them in the same order; without a torch process group (one
process, or tests that split work by ``(rank, world_size)`` arguments) each
returns what a one-rank group would. Tensors travel on the device
:func:`dist_syndr.runtime.collective_device` names (the GPU under NCCL).

Shapes: arrays ``(n_r, ...)`` per rank ``r``, the trailing shape the same on every rank.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
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


@contextlib.contextmanager
def rank_zero_lock(lock_file: Path, what: str, check: Callable[[], None] | None = None) -> Iterator[None]:
    """Rank 0 holds :func:`dist_syndr.files.exclusive_lock` on ``lock_file`` for the block and runs ``check``
    under it; when either fails, every rank raises the same ValueError (so no rank of a second job writes)."""
    lock = contextlib.ExitStack()
    failure: tuple[bool, str] | None = None  # (is it the lock, message)
    if runtime.rank_world()[0] == 0:
        try:
            lock.enter_context(files.exclusive_lock(lock_file, what))
            if check is not None:
                check()
        except ValueError as error:
            lock.close()
            failure = (isinstance(error, files.LockedError), str(error))
    failure = broadcast_object(failure)
    if failure is not None:
        is_lock, message = failure
        raise files.LockedError(message) if is_lock else ValueError(message)
    with lock:
        yield


def broadcast_object(value: object, src: int = 0) -> object:
    """Rank ``src``'s picklable ``value`` on every rank (``value`` itself without a process group)."""
    if not runtime.is_distributed():
        return value
    import torch.distributed as dist

    box = [value if dist.get_rank() == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]
