"""DDCUp against the published samples, against the dense definition, and on bad input."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from dist_syndr.config import TARGET_TYPES, NeighborsConfig
from dist_syndr.pools import kadid
from dist_syndr.reshape import ddcup
from dist_syndr.reshape.reference import dense_select_candidates
from tests.conftest import fixture_file


def _refset():
    train = np.load(fixture_file("refset/train_ref_features.npy"))
    candidates = np.load(fixture_file("refset/additional_ref_features.npy"))
    train_names = fixture_file("refset/train_ref_names.txt").read_text().split()
    candidate_names = fixture_file("refset/additional_ref_names.txt").read_text().split()
    return train, candidates, train_names, candidate_names


def test_fixture_selection_counts_match_spec(fixtures_dir):
    train, candidates, _, _ = _refset()
    spread = ddcup.training_spread(train)
    nearest, farthest = ddcup.candidate_extremes(train, candidates)
    inside = (nearest > spread.redundancy_radius) & (farthest < spread.outer_radius)
    assert int(inside.sum()) == 29
    selected = ddcup.select_candidates(train, candidates)
    assert selected.size == 24
    assert selected.dtype == np.int64 and np.all(np.diff(selected) > 0)
    np.testing.assert_array_equal(selected, dense_select_candidates(train, candidates))


def test_fixture_pseudo_labels_reproduce_published_bid_samples(fixtures_dir):
    train, candidates, train_names, candidate_names = _refset()
    table = kadid.label_table(kadid.read_dmos_csv(fixture_file("kadid10k/dmos.csv")), train_names)
    selected = ddcup.select_candidates(train, candidates)
    labels = ddcup.transfer_labels(train, candidates, selected, table)
    assert labels.shape == (24, 125)
    records = ddcup.upsampled_records(candidate_names, selected, labels, TARGET_TYPES["bid"], (1, 3, 5))
    with fixture_file("refset/expected_upsampled_bid.csv").open() as handle:
        expected = {row["dist_img"]: float(row["score"]) for row in csv.DictReader(handle)}
    produced = {name: score for name, _, _, _, score in records}
    assert len(records) == 432
    assert set(produced) == set(expected)
    worst = max(abs(produced[name] - expected[name]) for name in expected)
    assert worst < 1e-4, f"largest pseudo-label gap {worst}"


def _clouds(seed: int, num_train: int, num_candidates: int, dim: int, duplicate: bool):
    rng = np.random.default_rng(seed)
    train = rng.normal(size=(num_train, dim)) + 2.0
    candidates = rng.normal(size=(num_candidates, dim)) + 2.0
    if duplicate and num_candidates >= 4:
        # Exact duplicates give exactly equal distances: ties the removal order must break.
        candidates[1] = candidates[0]
        candidates[3] = candidates[2]
    return train, candidates


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("dim", [3, 8, 32])
def test_selection_equals_dense_definition(seed, dim):
    train, candidates = _clouds(seed, 30, 160, dim, duplicate=True)
    expected = dense_select_candidates(train, candidates)
    got = ddcup.select_candidates(train, candidates, search=NeighborsConfig(database_block=37, query_block=11))
    np.testing.assert_array_equal(got, expected)


@settings(max_examples=60, deadline=None)
@given(
    train=arrays(np.float64, st.tuples(st.integers(2, 12), st.just(4)), elements=st.integers(-3, 3).map(float)),
    candidates=arrays(np.float64, st.tuples(st.integers(1, 25), st.just(4)), elements=st.integers(-3, 3).map(float)),
)
def test_selection_property_integer_features_with_ties(train, candidates):
    """Small integer features make many exactly equal distances; both forms must agree."""
    train = train[np.any(train != 0, axis=1)]
    candidates = candidates[np.any(candidates != 0, axis=1)]
    if train.shape[0] < 2 or candidates.shape[0] < 1:
        return
    np.testing.assert_array_equal(
        ddcup.select_candidates(train, candidates), dense_select_candidates(train, candidates)
    )


def test_transfer_labels_weightings():
    train = np.eye(4, dtype=np.float32) + 0.01
    candidates = np.array([[1.0, 0.9, 0.0, 0.0]], dtype=np.float32)
    table = np.arange(4 * 125, dtype=np.float64).reshape(4, 125) % 10
    reference = ddcup.transfer_labels(train, candidates, np.array([0]), table)
    # Refs 0 and 1 are equally near (within the window), refs 2 and 3 are far away.
    distances = 1 - (train @ candidates[0]) / (np.linalg.norm(train, axis=1) * np.linalg.norm(candidates[0]))
    near = np.argsort(distances, kind="stable")[:5]
    near = near[distances[near] - distances[near][0] < 0.05]
    weights = np.exp(distances[near] - distances[near].max())
    weights /= weights.sum()
    np.testing.assert_allclose(reference[0], weights @ table[near])
    sharp = ddcup.transfer_labels(train, candidates, np.array([0]), table, weighting="similarity", temperature=1e-3)
    np.testing.assert_allclose(sharp[0], table[near[0]], atol=1e-6)


def test_top_k_one_copies_the_nearest_reference():
    rng = np.random.default_rng(3)
    train = rng.normal(size=(10, 6)).astype(np.float32)
    candidates = rng.normal(size=(5, 6)).astype(np.float32)
    table = rng.uniform(0, 10, size=(10, 125))
    labels = ddcup.transfer_labels(train, candidates, np.arange(5), table, top_k=1)
    nearest = np.argmax(
        (candidates / np.linalg.norm(candidates, axis=1, keepdims=True))
        @ (train / np.linalg.norm(train, axis=1, keepdims=True)).T,
        axis=1,
    )
    np.testing.assert_allclose(labels, table[nearest])


@pytest.mark.parametrize(
    "train, candidates, message",
    [
        (np.ones((3, 4), np.float32), np.ones((2, 5), np.float32), "dimension"),
        (np.ones((3, 4), np.float32), np.array([[np.nan, 1, 1, 1]], np.float32), "NaN or inf"),
        (np.ones((3, 4), np.float32), np.zeros((2, 4), np.float32), "all-zero"),
        (np.ones((1, 4), np.float32), np.ones((2, 4), np.float32), "at least 2 row"),
        (np.ones((3, 4), np.int64), np.ones((2, 4), np.float32), "floating dtype"),
        (np.ones((3,), np.float32), np.ones((2, 4), np.float32), "shape"),
        (np.ones((3, 4), np.float32), np.ones((0, 4), np.float32), "at least 1 row"),
        ([[1.0, 2.0]], np.ones((2, 2), np.float32), "numpy array"),
    ],
)
def test_select_candidates_rejects_bad_input(train, candidates, message):
    with pytest.raises(ValueError, match=message):
        ddcup.select_candidates(train, candidates)


def test_transfer_labels_rejects_bad_table_and_selection():
    train = np.eye(3, dtype=np.float32) + 0.1
    candidates = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="train_label_table"):
        ddcup.transfer_labels(train, candidates, np.array([0]), np.ones((2, 125)))
    with pytest.raises(ValueError, match="selected"):
        ddcup.transfer_labels(train, candidates, np.array([5]), np.ones((3, 125)))
    with pytest.raises(ValueError, match="weighting"):
        ddcup.transfer_labels(train, candidates, np.array([0]), np.ones((3, 125)), weighting="mean")


def test_large_candidate_pool_never_builds_a_square_matrix():
    """5,000 candidates run through the edge-list path and agree with the dense form on a subset."""
    train, candidates = _clouds(11, 40, 5000, 16, duplicate=False)
    selected = ddcup.select_candidates(train, candidates)
    subset = candidates[:600]
    np.testing.assert_array_equal(ddcup.select_candidates(train, subset), dense_select_candidates(train, subset))
    assert selected.size > 0
