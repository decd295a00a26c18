"""PNG plots of the clustered feature pattern for MLflow: a 2-D embedding by score and by distortion
type, and DRCDown's cluster-size histogram. scikit-learn and matplotlib are imported inside the
functions, so importing this module is cheap.

Shapes: ``N`` samples, ``D`` feature dimension.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from dist_syndr import files
from dist_syndr.evaluate.diagnostics.measures import (
    check_features,
    encode_labels,
    labels_array,
    sample_rows,
    unit_rows,
)


def embedding_plot(
    features: np.ndarray,
    scores: Sequence[float],
    types: Sequence,
    path: str | Path,
    *,
    method: str = "pca",
    max_points: int = 3000,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Write one PNG with a 2-D embedding of the unit feature rows in two panels:
    coloured by score (with a colour bar) and by distortion type (legend).

    ``method`` is ``pca`` or ``tsne`` (scikit-learn, cosine metric); up to
    ``max_points`` rows are drawn, sampled with ``seed``. Written atomically.
    """
    features, scores_array, types_array = _checked_inputs(features, scores, types, method, max_points)
    num_rows = features.shape[0]
    rows = sample_rows(np.arange(num_rows), max_points, np.random.default_rng(seed))
    unit = unit_rows(features, rows).numpy()
    points = _embed_2d(unit, method, seed)

    from matplotlib.figure import Figure

    figure = Figure(figsize=(13, 5.5), dpi=100, layout="constrained")
    by_score, by_type = figure.subplots(1, 2)
    chosen_scores = scores_array[rows]
    has_score = np.isfinite(chosen_scores)
    by_score.scatter(points[~has_score, 0], points[~has_score, 1], s=6, c="lightgrey", label="no score")
    drawn = by_score.scatter(
        points[has_score, 0], points[has_score, 1], s=6, c=chosen_scores[has_score], cmap="viridis"
    )
    figure.colorbar(drawn, ax=by_score, label="score")
    by_score.set_title("coloured by score")
    codes, names = encode_labels(types_array[rows], rows.size, "types")
    colours = _discrete_colours(len(names))
    for code, name in enumerate(names):
        members = codes == code
        by_type.scatter(points[members, 0], points[members, 1], s=6, color=colours[code], label=str(name))
    if (codes < 0).any():
        by_type.scatter(points[codes < 0, 0], points[codes < 0, 1], s=6, c="lightgrey", label="none")
    by_type.legend(
        title="type",
        fontsize=6,
        title_fontsize=7,
        markerscale=2,
        loc="center left",
        bbox_to_anchor=(1.0, 0.5),
        ncols=1 + len(names) // 20,
    )
    by_type.set_title("coloured by distortion type")
    for axes in (by_score, by_type):
        axes.set_xlabel(f"{method} 1")
        axes.set_ylabel(f"{method} 2")
    figure.suptitle(title or f"{method.upper()} of {rows.size} of {num_rows} samples")
    return _save(figure, Path(path))


def _checked_inputs(
    features, scores, types, method: str, max_points: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if method not in ("pca", "tsne"):
        raise ValueError(f"method: expected pca or tsne, got {method!r}")
    features = check_features(features)
    num_rows = features.shape[0]
    scores_array = np.asarray(scores, dtype=np.float64)
    types_array = labels_array(types, num_rows, "types")
    if scores_array.shape != (num_rows,):
        raise ValueError(f"scores: expected {num_rows} scores, got shape {scores_array.shape}")
    if num_rows < 3:
        raise ValueError(f"features: an embedding plot needs at least 3 samples, got {num_rows}")
    if int(max_points) != max_points or max_points < 3:
        raise ValueError(f"max_points: expected an integer >= 3, got {max_points!r}")
    return features, scores_array, types_array


def histogram_plot(histograms: dict[str, dict], path: str | Path, *, title: str = "DRCDown cluster sizes") -> Path:
    """Write a grouped bar chart PNG of :func:`cluster_size_histogram` results (samples per bin),
    one bar colour per entry of ``histograms`` (e.g. ``before`` and ``after``). Written atomically."""
    if not histograms:
        raise ValueError("histograms: nothing to plot")
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 4.5), dpi=100, layout="constrained")
    axes = figure.subplots()
    bins = next(iter(histograms.values()))["bins"]
    width = 0.8 / len(histograms)
    for i, (name, histogram) in enumerate(histograms.items()):
        positions = np.arange(len(bins)) + (i - (len(histograms) - 1) / 2) * width
        bars = axes.bar(
            positions, histogram["samples"], width=width, label=f"{name} ({histogram['num_clusters']} clusters)"
        )
        axes.bar_label(bars, fontsize=7)
    axes.set_xticks(np.arange(len(bins)), bins)
    axes.set_xlabel("cluster size (1 = in no redundant cluster)")
    axes.set_ylabel("samples")
    axes.legend()
    axes.set_title(title)
    return _save(figure, Path(path))


def _embed_2d(unit: np.ndarray, method: str, seed: int) -> np.ndarray:
    if method == "pca":
        from sklearn.decomposition import PCA

        if unit.shape[1] == 1:  # one feature: the second axis carries no information
            return np.concatenate([unit - unit.mean(), np.zeros_like(unit)], axis=1)
        return PCA(n_components=2, random_state=seed).fit_transform(unit)
    from sklearn.manifold import TSNE

    perplexity = float(min(30.0, max(1.0, (unit.shape[0] - 1) / 3)))
    return TSNE(n_components=2, metric="cosine", init="pca", perplexity=perplexity, random_state=seed).fit_transform(
        unit
    )


def _discrete_colours(count: int) -> list:
    from matplotlib import colormaps

    if count <= 10:
        return [colormaps["tab10"](i) for i in range(count)]
    palette = [colormaps[name](i) for name in ("tab20", "tab20b", "tab20c") for i in range(20)]
    if count <= len(palette):
        return palette[:count]
    return [colormaps["hsv"](i / count) for i in range(count)]


def _save(figure, path: Path) -> Path:
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    return path
