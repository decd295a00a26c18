"""DRCDown clusters and keep-lists against the dense definition of docs/METHOD.md section 4."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape import drcdown
from dist_syndr.reshape.reference import dense_keep_counts, dense_redundant_clusters
from tests.conftest import straddling_pool


def _assert_same_clusters(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        assert a.dtype == np.int64
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("seed", range(6))
def test_clusters_equal_dense_definition_on_straddling_pool(seed):
    features, labels = straddling_pool(seed)
    expected = dense_redundant_clusters(features, labels)
    assert expected, "the pool must contain clusters for the check to mean anything"
    got = drcdown.redundant_clusters(features, labels, search=NeighborsConfig(database_block=29, query_block=13))
    _assert_same_clusters(got, expected)


def test_pool_really_straddles_both_thresholds():
    features, labels = straddling_pool(0)
    unit = features.astype(np.float64) / np.linalg.norm(features.astype(np.float64), axis=1, keepdims=True)
    similarity = unit @ unit.T
    gaps = np.abs(labels[:, None] - labels[None, :])
    near_sim = (similarity > 0.85) & (similarity < 0.95)
    assert ((similarity > 0.9) & near_sim).sum() > 20 and ((similarity <= 0.9) & near_sim).sum() > 20
    assert ((gaps < 1.0) & (similarity > 0.9)).sum() > 20 and ((gaps >= 1.0) & (similarity > 0.9)).sum() > 20


@settings(max_examples=60, deadline=None)
@given(
    features=arrays(np.float64, st.tuples(st.integers(2, 40), st.just(3)), elements=st.integers(-2, 2).map(float)),
    labels=st.lists(st.integers(0, 6).map(lambda v: v * 0.5), min_size=40, max_size=40),
    sim_threshold=st.sampled_from([0.5, 0.8, 0.9, 0.95]),
)
def test_clusters_property_with_exact_ties(features, labels, sim_threshold):
    """Integer features and half-step labels hit both thresholds exactly, often."""
    features = features[np.any(features != 0, axis=1)]
    if features.shape[0] < 2:
        return
    labels = np.array(labels[: features.shape[0]])
    expected = dense_redundant_clusters(features, labels, sim_threshold, 1.0)
    got = drcdown.redundant_clusters(features, labels, sim_threshold=sim_threshold)
    _assert_same_clusters(got, expected)
    tiny_blocks = NeighborsConfig(database_block=3, query_block=2)  # label banding across many blocks
    _assert_same_clusters(
        drcdown.redundant_clusters(features, labels, sim_threshold=sim_threshold, search=tiny_blocks), expected
    )


def test_downsample_keeps_singletons_small_clusters_and_half_of_large():
    rng = np.random.default_rng(5)
    centre = rng.normal(size=32)
    big = centre + 0.01 * rng.normal(size=(50, 32))
    small = -centre + 0.01 * rng.normal(size=(7, 32))
    loners = rng.normal(size=(20, 32)) * 5
    features = np.concatenate([big, small, loners]).astype(np.float32)
    labels = np.concatenate([np.full(50, 5.0), np.full(7, 2.0), rng.uniform(0, 10, 20)])
    result = drcdown.run(features, labels, cap=20, seed=1)
    clusters = dense_redundant_clusters(features, labels)
    counts = dense_keep_counts(clusters, cap=20)
    kept = set(result.kept.tolist())
    for cluster in clusters:
        assert len(kept & set(cluster.tolist())) == counts[int(cluster[0])]
    clustered = set(np.concatenate(clusters).tolist())
    assert set(range(features.shape[0])) - clustered <= kept
    assert counts[0] == 25 and result.largest_cluster == 50
    assert result.kept.dtype == np.int64 and np.all(np.diff(result.kept) > 0)


def test_downsample_is_seeded():
    features, labels = straddling_pool(1, num_groups=3, group_size=60)
    first = drcdown.downsample(features, labels, cap=10, seed=7)
    again = drcdown.downsample(features, labels, cap=10, seed=7)
    other = drcdown.downsample(features, labels, cap=10, seed=8)
    np.testing.assert_array_equal(first, again)
    assert first.size == other.size and not np.array_equal(first, other)
    assert drcdown.epoch_seed(0, 3) == drcdown.epoch_seed(0, 3) != drcdown.epoch_seed(0, 4)


def test_no_clusters_keeps_everything():
    features = np.eye(6, dtype=np.float32)
    labels = np.zeros(6)
    assert drcdown.redundant_clusters(features, labels) == []
    np.testing.assert_array_equal(drcdown.downsample(features, labels), np.arange(6))


@pytest.mark.parametrize(
    "features, labels, message",
    [
        (np.ones((3, 4), np.float32), np.ones(2), "does not match"),
        (np.ones((3, 4), np.float32), np.array([1.0, np.nan, 2.0]), "NaN or inf"),
        (np.array([[1, 2], [np.inf, 1]], np.float32), np.ones(2), "NaN or inf"),
        (np.array([[0, 0], [1, 1]], np.float32), np.ones(2), "all-zero"),
        (np.ones((0, 4), np.float32), np.ones(0), "at least 1 row"),
        (np.ones((3, 4), np.float32), np.array(["a", "b", "c"]), "numeric labels"),
        (np.ones((3, 4), np.float32), np.ones((3, 1)), "1-D"),
        (np.ones((3, 4, 1), np.float32), np.ones(3), "shape"),
        (np.ones((3, 4), np.complex64), np.ones(3), "floating dtype"),
    ],
)
def test_bad_input_is_a_clear_value_error(features, labels, message):
    with pytest.raises(ValueError, match=message):
        drcdown.downsample(features, labels)


def test_bad_parameters_are_rejected():
    features = np.ones((3, 4), np.float32)
    with pytest.raises(ValueError, match="cap"):
        drcdown.downsample(features, np.ones(3), cap=0)
    with pytest.raises(ValueError, match="label_threshold"):
        drcdown.redundant_clusters(features, np.ones(3), label_threshold=-1)
    with pytest.raises(ValueError, match="sim_threshold"):
        drcdown.redundant_clusters(features, np.ones(3), sim_threshold=1.5)


def test_float16_and_float64_inputs_match_float32():
    features, labels = straddling_pool(2)
    base = drcdown.redundant_clusters(features, labels)
    _assert_same_clusters(drcdown.redundant_clusters(features.astype(np.float64), labels), base)


def test_kept_keys_follow_keys_and_epoch_seed():
    from dist_syndr.config import DRCDownConfig

    features, labels = straddling_pool(8, num_groups=3, group_size=60)
    keys = [f"kadid/I{i:05d}" for i in range(features.shape[0])]
    config = DRCDownConfig(cap=10)
    kept, result = drcdown.kept_keys(keys, features, labels, config=config, run_seed=3, epoch=2)
    expected = drcdown.downsample(features, labels, cap=10, seed=drcdown.epoch_seed(3, 2))
    assert kept == [keys[i] for i in expected] and result is not None
    # The same samples in another order keep the same keys' count and membership rule.
    order = np.random.default_rng(0).permutation(len(keys))
    shuffled, _ = drcdown.kept_keys(
        [keys[i] for i in order], features[order], labels[order], config=config, run_seed=3, epoch=2
    )
    assert len(shuffled) == len(kept)
    assert drcdown.kept_keys(keys, features, labels, config=DRCDownConfig(enabled=False), run_seed=3, epoch=2) == (
        keys,
        None,
    )
    with pytest.raises(ValueError, match="duplicate"):
        drcdown.kept_keys(keys[:-1] + keys[:1], features, labels, config=config, run_seed=3, epoch=2)
    with pytest.raises(ValueError, match="keys"):
        drcdown.kept_keys(keys[:5], features, labels, config=config, run_seed=3, epoch=2)


@pytest.mark.parametrize("block", [7, 32, 4096])
def test_label_banded_blocks_find_the_dense_graph_at_the_label_edges(block):
    """Rows are searched in label order, each block only against the rows within the label band: with label
    gaps exactly at 1.0, just under it and far beyond it, the clusters are still the dense definition's."""
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    features = (np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(240, 16))).astype(np.float32)
    grid = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 9.5])
    labels = rng.choice(grid, size=240)
    labels[::5] = np.nextafter(labels[::5] + 1.0, 0.0)  # gaps just under 1.0 beside gaps of exactly 1.0
    search = NeighborsConfig(database_block=block, query_block=11)
    got = drcdown.redundant_clusters(features, labels, search=search)
    _assert_same_clusters(got, dense_redundant_clusters(features, labels))
    stats = drcdown.run(features, labels, search=search).search_stats
    if block < 240:
        assert stats["banded_pair_share"] < 0.8  # whole blocks were skipped before any arithmetic
