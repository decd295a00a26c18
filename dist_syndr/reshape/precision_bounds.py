"""Proven error bounds for cosine similarities computed in bf16 or fp32.

docs/METHOD.md section 4, "Exact search in low precision", derives them.

The banded search computes a coarse similarity ``s~`` per pair: the rows
L2-normalised in float32, optionally rounded to bf16, multiplied in a GEMM that
accumulates in float32, and for bf16 rounded once more to bf16 on output. With
``s`` the exact cosine of the original rows and ``A`` the bound below,
``|fl32 sum - s| <= A``, and because rounding to the output format is monotone:

- ``s > t`` implies ``s~ >= down(t - A)``: every edge is among the candidates;
- ``s~ > up(t + A)`` implies ``s > t``: such a candidate is an edge without a re-check;

``down`` / ``up`` round to the output format towards -inf / +inf, so any faithful
rounding of the GEMM output (round-to-nearest, truncation) keeps both implications.
Candidates in between are re-decided in float64.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

Precision = Literal["bf16", "fp32"]

UNIT_ROUNDOFF = {"bf16": 2.0**-8, "fp32": 2.0**-24}
"""Round-to-nearest unit roundoff: 8 and 24 significant bits."""

_SMALLEST_NORMAL_FP32 = 2.0**-126
_FLOAT64_SLACK = 1e-9
"""Absolute room for the float64 definition's own rounding (of order D x 1e-16)."""


def gamma(count: int, unit_roundoff: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)``: relative error of a sum of ``n`` terms in any order."""
    product = count * unit_roundoff
    if product >= 1:
        raise ValueError(f"no error bound: {count} terms at unit roundoff {unit_roundoff}")
    return product / (1.0 - product)


def normalisation_error(dim: int) -> float:
    """Relative error of one element of a row normalised in float32 (input cast, squared norm, sqrt, divide)."""
    return gamma(math.ceil(dim / 2) + 5, UNIT_ROUNDOFF["fp32"])


def dot_error_bound(dim: int, precision: Precision) -> float:
    """``A``: a bound on ``|fl32(sum of products) - cos(x, y)|`` before any rounding of the GEMM output.

    Per element the search operand is ``u_i (1 + e_i)`` with ``|e_i| <= (1 + eta)(1 + r) - 1``
    (``eta`` from normalisation, ``r`` the bf16 input rounding or 0); products of bf16
    values are exact in float32; the float32 sum of ``D`` terms errs by at most
    ``gamma_2D`` times the sum of their magnitudes (``2D``: room for kernels that
    round twice per step); ``sum |u_i v_i| <= 1`` by Cauchy-Schwarz; products below
    the float32 normal range may be flushed to zero (``D 2^-126``).
    """
    eta = normalisation_error(dim)
    input_rounding = UNIT_ROUNDOFF["bf16"] if precision == "bf16" else 0.0
    rho = ((1.0 + eta) * (1.0 + input_rounding)) ** 2 - 1.0
    accumulation = gamma(2 * dim, UNIT_ROUNDOFF["fp32"]) * (1.0 + rho)
    return rho + accumulation + dim * _SMALLEST_NORMAL_FP32 + _FLOAT64_SLACK


@dataclass(frozen=True)
class DecisionBounds:
    """Coarse-similarity bounds of one search; ``candidate_at_least`` and ``accept_above`` are output-format values."""

    threshold: float
    precision: Precision
    margin: float  # A, or a larger configured margin
    candidate_at_least: float
    accept_above: float


def decision_bounds(threshold: float, dim: int, precision: Precision, margin: float = 0.0) -> DecisionBounds:
    """The proven candidate and accept bounds for ``cos > threshold`` at this precision.

    ``margin`` may only widen the derived bound, never narrow it.
    """
    bound = max(dot_error_bound(dim, precision), float(margin))
    low, high = threshold - bound, threshold + bound
    if precision == "bf16":
        return DecisionBounds(threshold, precision, bound, bf16_round_down(low), bf16_round_up(high))
    return DecisionBounds(threshold, precision, bound, fp32_round_down(low), fp32_round_up(high))


@functools.cache
def _bf16_grid() -> np.ndarray:
    """Every finite bf16 value, ascending, as float64 (bf16 = the upper 16 bits of a float32)."""
    bits = np.arange(1 << 16, dtype=np.uint32) << 16
    values = bits.view(np.float32)
    return np.unique(values[np.isfinite(values)].astype(np.float64))


def bf16_round_down(value: float) -> float:
    """The largest bf16 value ``<= value``."""
    grid = _bf16_grid()
    return float(grid[max(0, int(np.searchsorted(grid, value, side="right")) - 1)])


def bf16_round_up(value: float) -> float:
    """The smallest bf16 value ``>= value``."""
    grid = _bf16_grid()
    return float(grid[min(grid.size - 1, int(np.searchsorted(grid, value, side="left")))])


def fp32_round_down(value: float) -> float:
    """The largest float32 value ``<= value``."""
    rounded = np.float32(value)
    if float(rounded) > value:
        rounded = np.nextafter(rounded, np.float32(-np.inf))
    return float(rounded)


def fp32_round_up(value: float) -> float:
    """The smallest float32 value ``>= value``."""
    rounded = np.float32(value)
    if float(rounded) < value:
        rounded = np.nextafter(rounded, np.float32(np.inf))
    return float(rounded)
