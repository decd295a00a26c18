"""The forward pass over a shard set that training's DRCDown features and every evaluation share.

:func:`forward_pass` runs a model (or its ``features`` method) over this rank's
loader batches in eval mode, averages each image's crops, and gathers every
rank's rows with the positions they belong to, dropping the repeats a padded
plan adds, so one process and many give the same rows. :class:`PassOptions` is
the small set of choices such a pass reads (device, precision, loader backend,
the seed that fixes evaluation crops): callers pass it, never the whole config.
Planning the keys and opening the loader are the caller's
(:mod:`dist_syndr.evaluate.predict`), since the loader sits above this stage.

Shapes: ``N`` images, ``D`` output width (1 for predictions, the feature size for
features); crops ``(B, 3, C, C)``; rows ``(N, D)`` or ``(N,)`` float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from dist_syndr import collectives
from dist_syndr.features.embed import evaluating, forward_rows, gather_rows, input_dtype
from dist_syndr.features.precision import Precision


@dataclass(frozen=True)
class PassOptions:
    """How a pass over a shard set computes: ``device``, the mixed-precision policy, the loader backend
    (``runtime.dali``: auto, gpu, cpu, off) and the seed that fixes random evaluation crops."""

    device: object = "cpu"  # a torch.device or its name
    precision: Precision = "fp32"
    dali: str = "auto"
    seed: int = 0


class Batch(Protocol):
    """What the loaders yield (:class:`dist_syndr.loader.batch.Batch`)."""

    images: object  # (B * crops, 3, C, C) tensor
    keys: list[str]

    def mean_over_crops(self, outputs): ...


def forward_pass(
    module,
    forward: Callable,
    batches: Iterable[Batch],
    position: dict[str, int],
    empty: tuple[int, ...],
    options: PassOptions,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions (ascending, each once) and the per-image outputs of ``forward`` (``module`` or one of its
    methods) at them, from every rank; ``position`` maps a key to its place in the caller's key list and
    ``empty`` is the shape of no rows. Collective under a process group."""
    dtype = input_dtype(module)
    rows, positions = [], []
    with evaluating(module):
        for batch in batches:
            outputs = forward_rows(
                forward, batch.images, device=options.device, dtype=dtype, precision=options.precision
            )
            rows.append(batch.mean_over_crops(outputs).cpu().numpy())
            positions.extend(position[key] for key in batch.keys)
    gathered_rows = gather_rows(rows, empty)
    gathered_positions = np.concatenate(collectives.all_gather_array(np.asarray(positions, dtype=np.int64)))
    # Padding repeats a few samples; their rows are the same computation, so the first one stands.
    unique, first = np.unique(gathered_positions, return_index=True)
    return unique, gathered_rows[first]
