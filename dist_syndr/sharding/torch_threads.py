"""torch's intra-op thread count for the sharding step's small per-item work: one thread in each worker
process (one process per core; threads inside would oversubscribe), and one for a block in the parent."""

from __future__ import annotations

import contextlib


@contextlib.contextmanager
def one_torch_thread():
    """torch's intra-op threads set to one for the block, restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def single_thread_worker() -> None:
    """A process pool's initializer: one torch thread in the worker process."""
    import torch

    torch.set_num_threads(1)
