"""Per-epoch plans: which samples each rank reads, in which order.

An epoch's samples are the DRCDown keep-set plus the always-kept upsampled
keys (or the whole set), taken in ``index.json`` order and shuffled from
``(seed, epoch)`` alone, so every rank computes the same order without talking
to the others. With ``shuffle_block = n`` the selection is cut into blocks of
``n`` index-consecutive samples; the blocks are shuffled, then the samples
inside each block, so a reader stays in one region of one shard for a while.

Ranks take the order strided (rank ``r`` gets positions ``r, r + W, ...``), so
after every rank has consumed ``k`` samples the samples consumed are exactly
the first ``k * W`` of the order. That prefix is what a resumed epoch skips:
``start`` counts samples delivered over all ranks (``batches_done *
batch_size * world_size``) and the plan starts there.

Equal length on every rank (collective training never waits for a rank that
has run dry): training plans (``drop_last``) truncate the remaining order to
whole batches on every rank, so up to ``W * B - 1`` samples of the shuffled
order (a different tail each epoch) are left out; other plans pad the order to
a multiple of ``W`` by wrapping around to the epoch's first samples, as
``torch.utils.data.DistributedSampler`` does, so a few samples appear twice.

Shapes: ``N`` samples in the epoch, ``W`` ranks, ``B`` per-rank batch size.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from dist_syndr.config import DataConfig
from dist_syndr.sharding.shard_set import ShardSet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RankPlan:
    """One rank's share of an epoch: its keys in reading order, in batches of ``batch_size``."""

    keys: tuple[str, ...]
    rank: int
    seed: int
    epoch: int
    batch_size: int
    first_position: int  # position of keys[0] in this rank's whole-epoch list (non-zero after a resume)

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def num_batches(self) -> int:
        """Batches this rank yields (the last may be short when the plan pads instead of dropping)."""
        return -(-len(self.keys) // self.batch_size)


@dataclass(frozen=True)
class EpochPlan:
    """An epoch's reading order over all ranks; ``keys[r::world_size]`` is rank ``r``'s list."""

    keys: tuple[str, ...]
    seed: int
    epoch: int
    world_size: int
    batch_size: int
    start: int  # samples of the shuffled order skipped because an earlier run delivered them
    num_selected: int  # samples in the epoch before truncation or padding
    num_dropped: int  # tail of the shuffled order left out to keep whole batches (drop_last)
    num_padded: int  # wrapped-around repeats added to give every rank the same length

    def for_rank(self, rank: int) -> RankPlan:
        """Rank ``rank``'s share."""
        if not 0 <= rank < self.world_size:
            raise ValueError(f"rank {rank} outside world_size {self.world_size}")
        return RankPlan(
            keys=self.keys[rank :: self.world_size],
            rank=rank,
            seed=self.seed,
            epoch=self.epoch,
            batch_size=self.batch_size,
            first_position=self.start // self.world_size,
        )

    @property
    def samples_per_rank(self) -> int:
        """Samples every rank reads in this (possibly resumed) epoch."""
        return len(self.keys) // self.world_size

    @property
    def num_batches(self) -> int:
        """Batches every rank yields."""
        return -(-self.samples_per_rank // self.batch_size)


def plan_epoch(
    index_keys: Sequence[str],
    config: DataConfig,
    *,
    seed: int,
    epoch: int,
    world_size: int = 1,
    kept_keys: Iterable[str] | None = None,
    always_kept_keys: Iterable[str] = (),
    excluded_keys: Collection[str] = (),
    start: int = 0,
    is_training: bool = True,
) -> EpochPlan:
    """The epoch's order for ``world_size`` ranks.

    ``index_keys``: every key of the shard set in index order. ``kept_keys``:
    DRCDown's keep-set (None keeps everything); ``always_kept_keys`` (the
    upsampled samples) join it. ``excluded_keys``: samples dropped before
    planning (shards that failed verification under ``on_error=skip``).
    ``start``: samples already delivered over all ranks in this epoch, a
    multiple of ``world_size``. Evaluation plans (``is_training=False``) keep
    index order and pad instead of dropping.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    selected = _select(index_keys, kept_keys, always_kept_keys, excluded_keys)
    batch_size = config.batch_size
    if is_training:
        order = _shuffled(selected, seed, epoch, config.shuffle_block)
    else:
        order = selected
    if start < 0 or start % world_size or start > len(order):
        raise ValueError(
            f"start={start}: a resume offset must be a multiple of world_size={world_size}"
            f" within the epoch's {len(order)} samples"
        )
    remaining, num_dropped, num_padded = _cut(
        order, start, world_size, batch_size, is_whole=is_training and config.drop_last
    )
    plan = EpochPlan(
        keys=tuple(remaining),
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        batch_size=batch_size,
        start=start,
        num_selected=len(order),
        num_dropped=num_dropped,
        num_padded=num_padded,
    )
    log.info(
        "epoch %d plan: %d samples selected, resumed at %d, %d dropped, %d padded, %d batches per rank on %d rank(s)",
        epoch,
        len(order),
        start,
        num_dropped,
        num_padded,
        plan.num_batches,
        world_size,
    )
    return plan


def _cut(
    order: list[str], start: int, world_size: int, batch_size: int, *, is_whole: bool
) -> tuple[list[str], int, int]:
    """The samples after ``start`` cut to whole batches on every rank (``is_whole``), or padded by wrap-around
    repeats to a multiple of ``world_size``; also how many were dropped and padded."""
    remaining = order[start:]
    if is_whole:
        whole = len(remaining) // (world_size * batch_size) * (world_size * batch_size)
        if whole == 0 and start == 0 and order:
            raise ValueError(
                f"data.batch_size={batch_size}: the epoch's {len(order)} samples give no whole batch"
                f" on {world_size} rank(s);"
                " lower data.batch_size or set data.drop_last=false"
            )
        return remaining[:whole], len(remaining) - whole, 0
    if not remaining:
        return remaining, 0, 0
    num_padded = (-len(remaining)) % world_size
    return remaining + [order[i % len(order)] for i in range(num_padded)], 0, num_padded


def upsampled_keys(shard_set: ShardSet) -> list[str]:
    """Keys the sharding step recorded as DDCUp-upsampled (``origin == "upsampled"``), always kept."""
    keys = shard_set.keys()
    return [keys[row] for row in np.flatnonzero(shard_set.is_upsampled()).tolist()]


def _select(
    index_keys: Sequence[str],
    kept_keys: Iterable[str] | None,
    always_kept_keys: Iterable[str],
    excluded_keys: Collection[str],
) -> list[str]:
    if len(set(index_keys)) != len(index_keys):
        raise ValueError("index keys must be distinct")
    known = set(index_keys)
    excluded = set(excluded_keys)
    if kept_keys is None:
        return [key for key in index_keys if key not in excluded]
    wanted = set(kept_keys) | set(always_kept_keys)
    unknown = wanted - known
    if unknown:
        raise ValueError(f"{len(unknown)} kept key(s) are not in the shard set's index, e.g. {sorted(unknown)[0]!r}")
    return [key for key in index_keys if key in wanted and key not in excluded]


def _shuffled(keys: list[str], seed: int, epoch: int, block: int) -> list[str]:
    # Seeded from (seed, epoch) only: every rank, and a resumed run, computes the same order.
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), 0x10AD]))
    if block <= 0:
        return [keys[i] for i in rng.permutation(len(keys))]
    starts = np.arange(0, len(keys), block)
    order = []
    for block_start in starts[rng.permutation(len(starts))]:
        members = np.arange(block_start, min(block_start + block, len(keys)))
        order.extend(keys[i] for i in rng.permutation(members))
    return order
