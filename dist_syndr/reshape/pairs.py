"""Edge lists of a cosine neighbour graph and the float64 decisions every search ends with.

Every search (FAISS CPU and GPU, IVF, the label-banded torch search) finds
candidate pairs with a coarse similarity, then :func:`decide_edges` settles each
one: pairs clearly above the threshold are kept, pairs within the search's
error bound of it are re-decided in float64 with SciPy's cosine formula, so the
graph never depends on the backend or its precision.

Shapes: ``N`` rows, ``D`` feature dimension, ``E`` edges.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

PairFilter = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""Takes edge endpoint arrays ``(rows, cols)`` and returns a boolean keep-mask."""

_PAIR_CHUNK = 1 << 16
_GEMM_RECHECK_RATIO = 128
"""A distinct-rows GEMM re-checks pairs when it computes at most this many dots per pair asked for
(measured here: a GEMM dot costs about 10 ns, a gathered pair about 2 us)."""
_GEMM_RECHECK_MAX = 1 << 24


@dataclass
class Pairs:
    """Edges ``rows[e] < cols[e]`` with their cosine distance ``1 - cos``.

    ``distance`` is the float64 SciPy-formula value where ``is_exact`` says so
    (always for pairs near the threshold), else ``1 - coarse similarity``.
    """

    rows: np.ndarray
    cols: np.ndarray
    distance: np.ndarray
    is_exact: bool
    stats: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.rows.size)

    @staticmethod
    def concatenate(parts: list[Pairs], stats: dict | None = None, is_exact: bool = True) -> Pairs:
        """Join edge lists (in the order given)."""
        if not parts:
            pairs = empty_pairs(is_exact)
            pairs.stats.update(stats or {})
            return pairs
        rows = np.concatenate([p.rows for p in parts])
        cols = np.concatenate([p.cols for p in parts])
        distance = np.concatenate([p.distance for p in parts])
        merged_stats = dict(parts[0].stats) | (stats or {})
        return Pairs(rows, cols, distance, all(p.is_exact for p in parts), merged_stats)


def empty_pairs(is_exact: bool) -> Pairs:
    """An edge list without edges."""
    empty = np.empty(0, dtype=np.int64)
    return Pairs(empty, empty.copy(), np.empty(0, dtype=np.float64), is_exact)


def row_norms(features: np.ndarray) -> np.ndarray:
    """Float64 Euclidean norm of every row, computed in bounded chunks."""
    norms = np.empty(features.shape[0], dtype=np.float64)
    for start in range(0, features.shape[0], _PAIR_CHUNK):
        block = features[start : start + _PAIR_CHUNK].astype(np.float64)
        norms[start : start + block.shape[0]] = np.sqrt(np.einsum("ij,ij->i", block, block))
    return norms


def pair_cosine_distance(features: np.ndarray, norms: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Float64 cosine distance of the listed pairs with SciPy's formula.

    ``1 - dot(u, v) / (|u| |v|)``, the cosine clipped to [-1, 1] as
    ``scipy.spatial.distance.cdist(..., "cosine")`` does.
    """
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, _PAIR_CHUNK):
        r = rows[start : start + _PAIR_CHUNK]
        c = cols[start : start + _PAIR_CHUNK]
        dots = np.einsum("ij,ij->i", features[r].astype(np.float64), features[c].astype(np.float64))
        cosine = np.clip(dots / (norms[r] * norms[c]), -1.0, 1.0)
        out[start : start + r.size] = 1.0 - cosine
    return out


@dataclass(frozen=True)
class Decision:
    """How candidate pairs are settled: the float64 threshold and the coarse value above which no re-check is needed.

    ``accept_above`` must be proven: a coarse similarity above it implies a float64
    similarity above ``threshold`` (see docs/METHOD.md, "Exact search in low precision").
    """

    features: np.ndarray
    norms: np.ndarray
    threshold: float
    accept_above: float
    keep: PairFilter | None = None
    is_exact_distance: bool = False


def decide_edges(decision: Decision, rows: np.ndarray, cols: np.ndarray, coarse: np.ndarray) -> Pairs:
    """Keep the upper-triangle candidates that pass ``keep`` and the float64 threshold test.

    ``coarse`` is each candidate's similarity from the search; candidates at or
    below ``accept_above`` (and all of them with ``is_exact_distance``) are
    recomputed in float64 from the original features.
    """
    mask = cols > rows
    rows, cols, coarse = rows[mask], cols[mask], coarse[mask]
    if decision.keep is not None and rows.size:
        mask = decision.keep(rows, cols)
        rows, cols, coarse = rows[mask], cols[mask], coarse[mask]
    distance = 1.0 - coarse.astype(np.float64)
    if decision.is_exact_distance:
        recheck = np.ones(rows.size, dtype=bool)
    else:
        recheck = coarse <= decision.accept_above
    accept = ~recheck
    if recheck.any():
        accept[recheck] = _recheck(decision, rows[recheck], cols[recheck], distance, recheck)
    return Pairs(rows[accept], cols[accept], distance[accept], decision.is_exact_distance)


def _recheck(decision: Decision, rows: np.ndarray, cols: np.ndarray, distance: np.ndarray, where: np.ndarray):
    """Accept-mask of re-checked candidates; their ``distance`` entries are updated in place.

    Without ``is_exact_distance`` a float32 dot of the original rows settles the
    candidates farther than its own bound (``gamma_{2D+4}``) from the threshold, and
    only the rest pay for float64.
    """
    if decision.is_exact_distance:
        exact = pair_cosine_distance(decision.features, decision.norms, rows, cols)
        distance[where] = exact
        return (1.0 - exact) > decision.threshold
    cosine = pair_cosine_float32(decision.features, decision.norms, rows, cols)
    undecided = np.abs(cosine - decision.threshold) <= float32_pair_bound(decision.features.shape[1])
    accept = cosine > decision.threshold
    if undecided.any():
        exact = 1.0 - pair_cosine_distance(decision.features, decision.norms, rows[undecided], cols[undecided])
        cosine[undecided] = exact
        accept[undecided] = exact > decision.threshold
    distance[where] = 1.0 - cosine
    return accept


def float32_pair_bound(dim: int) -> float:
    """Error bound of :func:`pair_cosine_float32`: ``gamma_{2D+4}`` at float32's unit roundoff, plus float64 room."""
    product = (2 * dim + 4) * 2.0**-24
    return product / (1.0 - product) + 1e-9


def pair_cosine_float32(features: np.ndarray, norms: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Cosine of the listed pairs from a float32 dot of the original rows over their float64 norms.

    ``|error| <= gamma_D ||x|| ||y||`` for the dot (any summation order), plus the
    float32 cast of float64 inputs and the division: :func:`float32_pair_bound`.
    """
    out = np.empty(rows.size, dtype=np.float64)
    for start in range(0, rows.size, _PAIR_CHUNK):
        r = rows[start : start + _PAIR_CHUNK]
        c = cols[start : start + _PAIR_CHUNK]
        out[start : start + r.size] = _float32_dots(features, r, c) / (norms[r] * norms[c])
    return out


def _float32_dots(features: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """float32 dot products of the listed pairs.

    Near-duplicate pairs share their rows, so where the distinct rows are few a
    small GEMM over them (each row read once) replaces one gather per pair end.
    """
    unique_rows, row_at = np.unique(rows, return_inverse=True)
    unique_cols, col_at = np.unique(cols, return_inverse=True)
    num_dots = unique_rows.size * unique_cols.size
    if num_dots <= min(_GEMM_RECHECK_RATIO * rows.size, _GEMM_RECHECK_MAX):
        import torch  # its GEMM follows the calling thread's torch.set_num_threads; numpy's BLAS would not

        left = torch.from_numpy(features[unique_rows].astype(np.float32, copy=False))
        right = torch.from_numpy(features[unique_cols].astype(np.float32, copy=False))
        return torch.mm(left, right.T).numpy()[row_at, col_at]
    left = features[rows].astype(np.float32, copy=False)
    return np.einsum("ij,ij->i", left, features[cols].astype(np.float32, copy=False))


def spanning_forest(num_nodes: int, parts: list[Pairs]) -> Pairs:
    """Edges ``(root, member)`` with the same connected components as ``parts``: at most ``num_nodes - 1`` of them.

    Each component's root is its smallest node. Distances are dropped (NaN):
    this is for callers that need only the components (DRCDown).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    edges = Pairs.concatenate(parts, is_exact=False)
    if not len(edges):
        return edges
    graph = coo_matrix((np.ones(len(edges), dtype=np.int8), (edges.rows, edges.cols)), shape=(num_nodes, num_nodes))
    _, component = connected_components(graph, directed=False)
    is_touched = np.zeros(num_nodes, dtype=bool)
    is_touched[edges.rows] = True
    is_touched[edges.cols] = True
    touched = np.flatnonzero(is_touched)
    roots = np.full(component.max() + 1, num_nodes, dtype=np.int64)
    np.minimum.at(roots, component[touched], touched)
    members = touched[touched != roots[component[touched]]]
    rows = roots[component[members]]
    return Pairs(rows, members, np.full(members.size, np.nan), False, edges.stats)


def canonical_order(pairs: Pairs) -> Pairs:
    """The edges sorted by ``(rows, cols)``: the same arrays whatever backend, block size or rank split found them."""
    if len(pairs) < 2:
        return pairs
    order = np.lexsort((pairs.cols, pairs.rows))
    return Pairs(pairs.rows[order], pairs.cols[order], pairs.distance[order], pairs.is_exact, pairs.stats)
