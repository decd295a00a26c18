"""Validation of the arrays that enter the reshaping operations.

Every public reshaping function funnels its inputs through here, so a bad array
fails early with a message that names the argument and what is wrong with it,
never with a stack trace from deep inside FAISS or BLAS.

Shapes: ``N`` samples, ``D`` feature dimension.
"""

from __future__ import annotations

import numpy as np


def check_features(features: object, name: str, *, min_rows: int = 1) -> np.ndarray:
    """Return ``features`` as a C-contiguous ``(N, D)`` floating array, or raise ValueError.

    Accepts float16/32/64 arrays; rejects other dtypes, wrong ranks, empty arrays,
    non-finite values and all-zero rows (their cosine is undefined).
    """
    if not isinstance(features, np.ndarray):
        raise ValueError(f"{name}: expected a numpy array of shape (N, D), got {type(features).__name__}")
    if features.dtype.kind != "f":
        raise ValueError(f"{name}: expected a floating dtype (float32 or float64), got {features.dtype}")
    if features.ndim != 2:
        raise ValueError(f"{name}: expected shape (N, D), got shape {features.shape}")
    num_rows, dim = features.shape
    if num_rows < min_rows or dim == 0:
        raise ValueError(f"{name}: expected at least {min_rows} row(s) and 1 column, got shape {features.shape}")
    finite, zero = _row_flags(features)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise ValueError(f"{name}: rows {_preview(bad)} contain NaN or inf ({bad.size} row(s))")
    if zero.any():
        bad = np.flatnonzero(zero)
        raise ValueError(f"{name}: rows {_preview(bad)} are all-zero vectors; cosine similarity is undefined")
    if features.dtype == np.float16:
        features = features.astype(np.float32)
    return np.ascontiguousarray(features)


def _row_flags(features: np.ndarray, chunk: int = 1 << 15) -> tuple[np.ndarray, np.ndarray]:
    """Per row: all finite, all zero; in chunks, so no N x D boolean array is built."""
    finite = np.empty(features.shape[0], dtype=bool)
    zero = np.empty(features.shape[0], dtype=bool)
    for start in range(0, features.shape[0], chunk):
        block = features[start : start + chunk]
        finite[start : start + block.shape[0]] = np.isfinite(block).all(axis=1)
        zero[start : start + block.shape[0]] = ~np.any(block != 0, axis=1)
    return finite, zero


def check_labels(labels: object, name: str, num_rows: int) -> np.ndarray:
    """Return ``labels`` as a finite float64 vector of length ``num_rows``, or raise ValueError."""
    array = np.asarray(labels) if not isinstance(labels, np.ndarray) else labels
    if array.dtype.kind not in "fiu":
        raise ValueError(f"{name}: expected numeric labels, got dtype {array.dtype}")
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if array.shape[0] != num_rows:
        raise ValueError(f"{name}: length {array.shape[0]} does not match the {num_rows} feature rows")
    array = array.astype(np.float64)
    if not np.isfinite(array).all():
        bad = np.flatnonzero(~np.isfinite(array))
        raise ValueError(f"{name}: entries {_preview(bad)} are NaN or inf")
    return array


def check_same_dim(first: np.ndarray, second: np.ndarray, first_name: str, second_name: str) -> None:
    """Raise ValueError unless both feature arrays have the same column count."""
    if first.shape[1] != second.shape[1]:
        raise ValueError(f"{first_name} has dimension {first.shape[1]} but {second_name} has {second.shape[1]}")


def check_threshold(value: float, name: str, low: float, high: float) -> float:
    """Return ``value`` as float if ``low <= value <= high``, else raise ValueError."""
    value = float(value)
    if not (low <= value <= high) or not np.isfinite(value):
        raise ValueError(f"{name}: expected a value in [{low}, {high}], got {value}")
    return value


def _preview(indices: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(i)) for i in indices[:limit])
    return f"[{shown}{', ...' if indices.size > limit else ''}]"
