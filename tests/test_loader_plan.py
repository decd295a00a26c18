"""Epoch plans: selection, seeded shuffle, block locality, equal disjoint rank lists, resume offsets."""

from __future__ import annotations

import collections

import pytest

from dist_syndr.config import DataConfig
from dist_syndr.loader.plan import plan_epoch

KEYS = [f"pool/img{i:04d}" for i in range(103)]


def _config(**overrides) -> DataConfig:
    return DataConfig(**({"batch_size": 4} | overrides))


def _rank_lists(plan) -> list[tuple[str, ...]]:
    return [plan.for_rank(rank).keys for rank in range(plan.world_size)]


def test_selection_is_the_keep_set_plus_the_upsampled_keys_in_a_seeded_order():
    kept = set(KEYS[::3])
    upsampled = KEYS[-5:]
    plan = plan_epoch(KEYS, _config(drop_last=False), seed=7, epoch=2, kept_keys=kept, always_kept_keys=upsampled)
    assert set(plan.keys) == kept | set(upsampled) and len(plan.keys) == len(kept | set(upsampled))
    again = plan_epoch(
        KEYS,
        _config(drop_last=False),
        seed=7,
        epoch=2,
        kept_keys=sorted(kept, reverse=True),
        always_kept_keys=upsampled,
    )
    assert again.keys == plan.keys  # keys, not list positions, identify samples
    next_epoch = plan_epoch(
        KEYS, _config(drop_last=False), seed=7, epoch=3, kept_keys=kept, always_kept_keys=upsampled
    )
    other_seed = plan_epoch(
        KEYS, _config(drop_last=False), seed=8, epoch=2, kept_keys=kept, always_kept_keys=upsampled
    )
    assert next_epoch.keys != plan.keys and other_seed.keys != plan.keys
    assert set(next_epoch.keys) == set(plan.keys)
    assert list(plan.keys) != sorted(plan.keys)


def test_excluded_keys_and_a_missing_keep_set_key():
    plan = plan_epoch(KEYS, _config(drop_last=False), seed=0, epoch=0, excluded_keys=set(KEYS[:10]))
    assert set(plan.keys) == set(KEYS[10:])
    with pytest.raises(ValueError, match="pool/nope"):
        plan_epoch(KEYS, _config(), seed=0, epoch=0, kept_keys=["pool/nope", KEYS[0]])


@pytest.mark.parametrize("world_size", [1, 2, 3, 8])
@pytest.mark.parametrize("batch_size", [1, 4, 5])
def test_drop_last_gives_disjoint_equal_whole_batches(world_size, batch_size):
    plan = plan_epoch(KEYS, _config(batch_size=batch_size), seed=1, epoch=0, world_size=world_size)
    lists = _rank_lists(plan)
    assert {len(keys) for keys in lists} == {plan.samples_per_rank}
    assert plan.samples_per_rank % batch_size == 0
    assert len({plan.for_rank(r).num_batches for r in range(world_size)}) == 1
    merged = [key for keys in lists for key in keys]
    assert len(merged) == len(set(merged)) and set(merged) == set(plan.keys)
    assert plan.num_dropped == len(KEYS) % (world_size * batch_size) < world_size * batch_size
    assert len(plan.keys) + plan.num_dropped == len(KEYS)


@pytest.mark.parametrize("world_size", [1, 3, 4, 8])
def test_padding_wraps_to_the_epochs_first_samples(world_size):
    plan = plan_epoch(KEYS, _config(drop_last=False), seed=1, epoch=0, world_size=world_size)
    lists = _rank_lists(plan)
    assert {len(keys) for keys in lists} == {plan.samples_per_rank}
    assert plan.num_padded == (-len(KEYS)) % world_size
    assert set(plan.keys) == set(KEYS)  # every sample at least once
    assert list(plan.keys[len(KEYS) :]) == list(plan.keys[: plan.num_padded])
    counts = collections.Counter(plan.keys)
    assert sum(count - 1 for count in counts.values()) == plan.num_padded


def test_evaluation_plans_keep_index_order_and_never_drop():
    plan = plan_epoch(KEYS, _config(batch_size=32), seed=1, epoch=0, world_size=2, is_training=False)
    assert list(plan.keys[: len(KEYS)]) == KEYS and plan.num_dropped == 0
    assert plan.for_rank(0).keys == tuple(plan.keys[0::2])


@pytest.mark.parametrize("drop_last", [True, False])
@pytest.mark.parametrize("world_size", [1, 3])
def test_resume_delivers_exactly_the_remaining_samples(drop_last, world_size):
    config = _config(batch_size=4, drop_last=drop_last)
    full = plan_epoch(KEYS, config, seed=5, epoch=4, world_size=world_size)
    for batches_done in range(full.num_batches):
        start = batches_done * config.batch_size * world_size
        resumed = plan_epoch(KEYS, config, seed=5, epoch=4, world_size=world_size, start=start)
        delivered = collections.Counter()
        for rank in range(world_size):
            whole, rest = full.for_rank(rank), resumed.for_rank(rank)
            consumed = whole.keys[: batches_done * config.batch_size]
            assert rest.keys == whole.keys[batches_done * config.batch_size :]
            assert rest.first_position == batches_done * config.batch_size
            delivered.update(consumed)
            delivered.update(rest.keys)
        assert delivered == collections.Counter(full.keys)  # nothing twice, nothing lost
        assert resumed.num_batches == full.num_batches - batches_done


def test_resume_offset_must_be_a_multiple_of_world_size():
    with pytest.raises(ValueError, match="start=3"):
        plan_epoch(KEYS, _config(), seed=0, epoch=0, world_size=2, start=3)


def test_too_few_samples_for_one_batch_names_the_setting():
    with pytest.raises(ValueError, match="data.batch_size=32"):
        plan_epoch(KEYS[:40], _config(batch_size=32), seed=0, epoch=0, world_size=2)


@pytest.mark.parametrize("block", [1, 8, 25])
def test_block_shuffle_keeps_index_neighbours_together(block):
    plan = plan_epoch(KEYS, _config(shuffle_block=block, drop_last=False), seed=3, epoch=1)
    blocks = [KEYS.index(key) // block for key in plan.keys]
    runs = [b for i, b in enumerate(blocks) if i == 0 or b != blocks[i - 1]]
    assert len(runs) == len(set(runs)) == -(-len(KEYS) // block)  # each block read in one run
    if block > 1:
        assert list(plan.keys) != KEYS  # shuffled inside blocks too
        assert runs != sorted(runs)
    global_order = plan_epoch(KEYS, _config(drop_last=False), seed=3, epoch=1)
    assert set(global_order.keys) == set(plan.keys)
