"""The label-banded search in bf16 and fp32: its proven bounds attacked, every precision and split against float64."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist, squareform

from dist_syndr.config import NeighborsConfig
from dist_syndr.reshape import banded_search, drcdown, neighbors, precision_bounds
from dist_syndr.reshape.reference import dense_redundant_clusters
from tests.conftest import straddling_pool

PRECISIONS = ("bf16", "fp32")


def _near_threshold_pool(seed: int, dim: int = 64, threshold: float = 0.9, step: float = 3e-4, count: int = 40):
    """Pairs ``(a_k, v_k)`` whose cosine is ``threshold + k step`` for ``0 < |k| <= count``, plus exact ties.

    Every pair lies inside the bf16 bound of the threshold. A random pair built at
    exactly the threshold would be decided by float64 summation order (1 ulp), so
    the ties are integer vectors whose float64 cosine is exactly 9/10, scaled by
    powers of two and permuted.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for offset in [k for k in range(-count, count + 1) if k]:
        cosine = threshold + offset * step
        anchor = rng.normal(size=dim)
        anchor /= np.linalg.norm(anchor)
        direction = rng.normal(size=dim)
        direction -= direction @ anchor * anchor
        direction /= np.linalg.norm(direction)
        rows += [anchor, cosine * anchor + np.sqrt(1 - cosine**2) * direction]
    for scale in (0.5, 1.0, 4.0):
        for _ in range(4):
            columns = rng.choice(dim, size=4, replace=False)
            tie, base = np.zeros(dim), np.zeros(dim)
            tie[columns] = np.array([9.0, 3.0, 3.0, 1.0]) * scale
            base[columns[0]] = 2.0
            rows += [base, tie]
    return np.array(rows)


def _adversarial_pool(seed: int, dim: int = 4, count: int = 30):
    """Pairs within 0.007 of cos 0.9 chosen for their large bf16 error: half just under it that bf16 rounds to
    at least the next bf16 value above 0.9, half just over it with the largest error downwards."""
    rng = np.random.default_rng(seed)
    anchors = rng.normal(size=(20_000, dim))
    anchors /= np.linalg.norm(anchors, axis=1, keepdims=True)
    directions = rng.normal(size=anchors.shape)
    directions -= (directions * anchors).sum(axis=1, keepdims=True) * anchors
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    cosine = rng.uniform(0.893, 0.907, size=anchors.shape[0])
    others = cosine[:, None] * anchors + np.sqrt(1 - cosine[:, None] ** 2) * directions
    order = np.arange(anchors.shape[0])
    coarse = (
        (
            banded_search.sorted_unit_rows(anchors, order, "bf16")
            * banded_search.sorted_unit_rows(others, order, "bf16")
        )
        .float()
        .sum(dim=1)
        .bfloat16()
        .double()
        .numpy()
    )
    rounded_up = np.flatnonzero((cosine < 0.9) & (coarse > 0.9))[:count]
    error_down = np.flatnonzero(cosine > 0.9)
    error_down = error_down[np.argsort(coarse[error_down] - cosine[error_down])[:count]]
    chosen = np.concatenate([rounded_up, error_down])
    return np.stack([anchors[chosen], others[chosen]], axis=1).reshape(-1, dim)


def _dense_edges(features: np.ndarray, threshold: float) -> set[tuple[int, int]]:
    similarity = 1.0 - squareform(pdist(features.astype(np.float64), "cosine"))
    rows, cols = np.nonzero(np.triu(similarity > threshold, k=1))
    return set(zip(rows.tolist(), cols.tolist(), strict=True))


def _edges(pairs) -> set[tuple[int, int]]:
    return set(zip(pairs.rows.tolist(), pairs.cols.tolist(), strict=True))


def _search(features, precision, **settings):
    band = banded_search.LabelBand(np.zeros(features.shape[0]), 1.0)
    config = NeighborsConfig(precision=precision, database_block=17, query_block=9, **settings)
    return neighbors.similar_pairs(features, 0.9, settings=config, band=band)


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("seed", range(3))
def test_pairs_inside_the_bound_and_exact_ties_are_the_float64_graph(precision, seed):
    features = _near_threshold_pool(seed)
    adversarial = _adversarial_pool(seed)
    features = np.concatenate([features, np.pad(adversarial, ((0, 0), (0, features.shape[1] - adversarial.shape[1])))])
    expected = _dense_edges(features, 0.9)
    pairs = _search(features, precision)
    assert _edges(pairs) == expected
    assert pairs.stats["precision"] == precision and pairs.stats["backend"] == "torch-cpu"
    if precision == "bf16":
        assert pairs.stats["rechecked"] > 40  # the pool really sits inside the bf16 bound


def test_a_bound_narrower_than_the_proof_loses_or_invents_edges(monkeypatch):
    """The attack has teeth: trusting bf16 tiles up to their output rounding (no input-rounding term) is wrong."""
    features = _adversarial_pool(0)
    expected = _dense_edges(features, 0.9)

    def too_narrow(threshold, dim, precision, margin=0.0):
        fp32 = precision_bounds.decision_bounds(threshold, dim, "fp32", margin)
        low = precision_bounds.bf16_round_down(fp32.candidate_at_least)
        return precision_bounds.DecisionBounds(threshold, precision, fp32.margin, low, low)

    monkeypatch.setattr(banded_search, "decision_bounds", too_narrow)
    assert _edges(_search(features, "bf16")) != expected


@pytest.mark.parametrize("precision", PRECISIONS)
def test_observed_coarse_error_stays_inside_the_proven_bound(precision):
    """Coarse similarities computed exactly as the search does, against float64, on near-threshold and random rows."""
    rng = np.random.default_rng(4)
    features = np.concatenate([_near_threshold_pool(1, dim=256), rng.normal(size=(200, 256))])
    unit = banded_search.sorted_unit_rows(features, np.arange(features.shape[0]), precision)
    coarse = torch.mm(unit, unit.T).float().numpy().astype(np.float64)
    exact = 1.0 - squareform(pdist(features, "cosine"))
    np.fill_diagonal(exact, 1.0)
    bounds = precision_bounds.decision_bounds(0.9, features.shape[1], precision)
    error = np.abs(coarse - exact)
    output_rounding = 2.0**-8 if precision == "bf16" else 0.0  # one rounding of the output, |s| <= 1
    assert error.max() <= bounds.margin + output_rounding
    if precision == "bf16":
        assert error.max() > 1e-3  # bf16 really is coarse: a float32 bound would not hold
    # The decision rule itself: no float64 edge below the candidate bound, no non-edge above the accept bound.
    assert not np.any((exact > 0.9) & (coarse < bounds.candidate_at_least))
    assert not np.any((exact <= 0.9) & (coarse > bounds.accept_above))


def test_bounds_are_values_of_the_output_format_around_the_threshold():
    for precision in PRECISIONS:
        for threshold in (-0.5, 0.0, 0.5, 0.9, 0.99):
            bounds = precision_bounds.decision_bounds(threshold, 768, precision)
            assert bounds.candidate_at_least <= threshold - bounds.margin < threshold + bounds.margin
            assert bounds.accept_above >= threshold + bounds.margin
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            for value in (bounds.candidate_at_least, bounds.accept_above):
                assert float(torch.tensor(value, dtype=torch.float64).to(dtype)) == value
    bf16 = precision_bounds.decision_bounds(0.9, 768, "bf16")
    assert 2 * 2.0**-8 < bf16.margin < 2 * 2.0**-8 + 2e-4  # the input rounding of both factors dominates
    assert precision_bounds.decision_bounds(0.9, 768, "bf16", margin=0.05).margin == 0.05  # only wider


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("seed", range(4))
def test_drcdown_equals_dense_definition_for_every_precision(precision, seed):
    features, labels = straddling_pool(seed)
    search = NeighborsConfig(precision=precision, database_block=23, query_block=7)
    got = drcdown.redundant_clusters(features, labels, search=search)
    expected = dense_redundant_clusters(features, labels)
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("precision", PRECISIONS)
def test_label_gaps_at_and_just_under_the_width(precision):
    rng = np.random.default_rng(3)
    centres = rng.normal(size=(6, 16))
    features = (np.repeat(centres, 40, axis=0) + 0.05 * rng.normal(size=(240, 16))).astype(np.float32)
    labels = rng.choice(np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 6.0, 9.5]), size=240)
    labels[::5] = np.nextafter(labels[::5] + 1.0, 0.0)
    search = NeighborsConfig(precision=precision, database_block=32, query_block=11)
    got = drcdown.redundant_clusters(features, labels, search=search)
    expected = dense_redundant_clusters(features, labels)
    assert [c.tolist() for c in got] == [c.tolist() for c in expected]


def test_several_devices_and_ranks_give_the_same_arrays(monkeypatch):
    """Blocks dealt over three workers (CPUs standing in for GPUs, one thread each) and over three ranks."""
    features, labels = straddling_pool(5, num_groups=20)
    band = banded_search.LabelBand(labels, 1.0)
    config = NeighborsConfig(precision="bf16", database_block=19, query_block=8)
    keep = _labels_close(labels)
    one = neighbors.similar_pairs(features, 0.9, settings=config, band=band, keep=keep)
    monkeypatch.setattr(banded_search, "resolve_devices", lambda backend: [torch.device("cpu")] * 3)
    two = neighbors.similar_pairs(features, 0.9, settings=config, band=band, keep=keep)
    assert two.stats["num_workers"] == 3 and one.stats["num_workers"] == torch.get_num_threads()
    shares = [
        neighbors.similar_pairs(features, 0.9, settings=config, band=band, keep=keep, rank=r, world_size=3)
        for r in range(3)
    ]
    merged = neighbors.canonical_order(neighbors.Pairs.concatenate(shares))
    for other in (two, merged):
        np.testing.assert_array_equal(other.rows, one.rows)
        np.testing.assert_array_equal(other.cols, one.cols)


def _labels_close(labels):
    return lambda rows, cols: np.abs(labels[rows] - labels[cols]) < 1.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("low", [0.890625, -0.25])
def test_gpu_hit_extraction_equals_the_cpu_one(dtype, low):
    """The torch-only hit path (what runs on a GPU) and the numpy one agree, bf16 bit compares included."""
    sims = (torch.rand(37, 53) * 2 - 1).to(dtype)
    sims[3, 5] = low  # exactly on the bound: a candidate
    cpu = banded_search._cpu_hits(sims, low)
    device = banded_search._device_hits(sims, low)
    order_cpu, order_device = np.lexsort(cpu[:2][::-1]), np.lexsort(device[:2][::-1])
    for a, b in zip(cpu, device, strict=True):
        np.testing.assert_array_equal(a[order_cpu], b[order_device])
    assert (3, 5) in set(zip(cpu[0].tolist(), cpu[1].tolist(), strict=True))


def test_torch_cuda_backend_without_a_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="torch sees no CUDA device"):
        neighbors.similar_pairs(np.eye(3, dtype=np.float32), 0.5, settings=NeighborsConfig(backend="torch-cuda"))


def test_the_search_runs_with_exact_fp32_math(monkeypatch):
    """Every tile GEMM runs inside runtime.exact_fp32_math (no TF32, float32 reductions of bf16 products)."""
    seen = []
    real_mm = torch.mm

    def recording_mm(a, b):
        seen.append(torch.backends.cuda.matmul.fp32_precision)
        return real_mm(a, b)

    monkeypatch.setattr(torch, "mm", recording_mm)
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        features = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
        labels = np.linspace(0, 10, 40)
        search = banded_search.BandedSearch(features, 0.9, banded_search.LabelBand(labels, 1.0), NeighborsConfig())
        search.run()
        assert seen and set(seen) == {"ieee"} and torch.backends.cuda.matmul.fp32_precision == "tf32"
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def test_block_plan_meets_only_rows_within_the_band():
    labels = np.sort(np.random.default_rng(0).uniform(0, 10, size=1000))
    plan = banded_search.plan_blocks(labels, 1.0, 50)
    for start, first in zip(plan.starts, plan.firsts, strict=True):
        assert labels[first] >= labels[start] - 1.0 and (first == 0 or labels[first - 1] < labels[start] - 1.0)
    share = plan.costs.sum() / (1000**2 / 2)
    assert 0.15 < share < 0.35  # about a fifth of all pairs for a uniform spread over 10 with width 1


def test_spanning_forests_keep_drcdown_clusters_with_bounded_edges(monkeypatch):
    """DRCDown asks for components only: edges folded into forests after every block, across two ranks too."""
    features, labels = straddling_pool(9, num_groups=16, group_size=12)
    expected = dense_redundant_clusters(features, labels)
    monkeypatch.setattr(banded_search, "_COMPACT_EDGES", 1)
    search = NeighborsConfig(database_block=13, query_block=5, split_across_ranks=True)
    result = drcdown.run(features, labels, search=search)
    assert [c.tolist() for c in result.clusters] == [c.tolist() for c in expected]
    assert result.search_stats["connectivity_only"]
    assert result.search_stats["num_edges"] == len(_dense_edges_with_labels(features, labels))
    band = banded_search.LabelBand(labels, 1.0)
    shares = [
        neighbors.similar_pairs(
            features,
            0.9,
            settings=search,
            band=band,
            keep=_labels_close(labels),
            rank=r,
            world_size=2,
            connectivity_only=True,
        )
        for r in range(2)
    ]
    assert all(len(share) < features.shape[0] for share in shares)
    merged = neighbors.Pairs.concatenate(shares)
    clusters = drcdown.clusters_from_edges(features.shape[0], merged.rows, merged.cols)
    assert [c.tolist() for c in clusters] == [c.tolist() for c in expected]


def _dense_edges_with_labels(features, labels):
    close = _labels_close(labels)
    return {(r, c) for r, c in _dense_edges(features, 0.9) if close(np.array([r]), np.array([c]))[0]}
