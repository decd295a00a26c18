"""The evidence behind the weak-label ensemble: what each metric costs and how it ranks KADID-10k's cells.

KADID-10k's human scores give every (type, level) cell a mean over its 81
references (:func:`kadid_cell_means`). Our engine makes the same 125 cells from
the photographs that ship with installed packages; the weak-label metrics score
them, and :func:`rank_agreement` says how well a set of metrics, averaged as the
ensemble averages them, ranks the cells like the humans do (Spearman over the
cells' means). :func:`subset_table` does this for every subset of the five
metrics beside each subset's measured cost, which is how the default ensemble
was chosen (README "Weak labels"). :func:`metric_costs` times each metric per
image, ours (reference side done once per reference) beside piq's.

Shapes: cell tables ``(25, 5)`` (type, level); photographs ``(H, W, 3)`` uint8.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np

from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS
from dist_syndr.pools import fr_metrics

CELLS = (NUM_DISTORTION_TYPES, NUM_LEVELS)


def kadid_cell_means(dmos_csv: Path) -> np.ndarray:
    """Mean human DMOS of every (type, level) cell ``(25, 5)`` of a KADID-10k ``dmos.csv`` (higher is better)."""
    from dist_syndr.pools import kadid

    sums, counts = np.zeros(CELLS), np.zeros(CELLS)
    for record in kadid.read_dmos_csv(dmos_csv):
        sums[record.distortion_type - 1, record.level - 1] += record.dmos
        counts[record.distortion_type - 1, record.level - 1] += 1
    if (counts == 0).any():
        missing = [(int(t) + 1, int(v) + 1) for t, v in np.argwhere(counts == 0)[:3]]
        raise ValueError(f"{dmos_csv}: no rows for (type, level) cells {missing}")
    return sums / counts


AGREEMENT_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "china", "flower", "grace_hopper")
"""The natural colour photographs among the embedded ones (no microscopy, no sky survey, no greyscale)."""


def photographs(width: int, height: int, names: tuple[str, ...] = AGREEMENT_PHOTOS) -> list[np.ndarray]:
    """Centre ``width x height`` crops of embedded photographs, scaled up (bicubic) where one is smaller."""
    from PIL import Image

    from dist_syndr.pools.embedded import load_photo

    crops = []
    for name in names:
        photo = Image.fromarray(load_photo(name))
        scale = max(width / photo.width, height / photo.height, 1.0)
        if scale > 1.0:
            photo = photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)
        left, top = (photo.width - width) // 2, (photo.height - height) // 2
        crops.append(np.array(photo.crop((left, top, left + width, top + height))))
    return crops


def engine_cell_qualities(
    photos: list[np.ndarray], metrics: tuple[str, ...] = fr_metrics.METRICS, seed: int = 0
) -> dict[str, np.ndarray]:
    """Metric -> quality ``(P, 25, 5)`` of our engine's every (type, level) of each of the ``P`` photos."""
    import torch

    from dist_syndr.pools import distortions, weak_labels

    cells = [(t, v) for t in range(1, NUM_DISTORTION_TYPES + 1) for v in range(1, NUM_LEVELS + 1)]
    tables: dict[str, np.ndarray] = {}
    for number, photo in enumerate(photos):
        reference = torch.from_numpy(np.array(photo, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).contiguous()
        seeds = [seed + len(cells) * number + i for i in range(len(cells))]
        distorted = torch.cat(
            [distortions.distort(reference, t, v, [s]) for (t, v), s in zip(cells, seeds, strict=True)]
        )
        labels = weak_labels.label_images(distorted, reference, [0] * len(cells), metrics)
        for (t, v), label in zip(cells, labels, strict=True):
            for name, quality in label["metrics"].items():
                tables.setdefault(name, np.zeros((len(photos), *CELLS)))[number, t - 1, v - 1] = quality
    return tables


def rank_agreement(
    cell_qualities: dict[str, np.ndarray], human: np.ndarray, metrics: tuple[str, ...], photos=None
) -> float:
    """Spearman correlation over the 125 cells between the ensemble of ``metrics``, averaged over the
    photos (``photos``: their row numbers, repeats allowed; all by default), and the human means."""
    from scipy import stats

    missing = [m for m in metrics if m not in cell_qualities]
    if missing:
        raise ValueError(f"no cell qualities for metric(s) {missing}")
    rows = slice(None) if photos is None else np.asarray(photos)
    ensemble = np.mean([cell_qualities[m][rows].mean(axis=0) for m in metrics], axis=0)
    return float(stats.spearmanr(ensemble.ravel(), human.ravel()).statistic)


def share_at_least_as_good(
    cell_qualities: dict[str, np.ndarray],
    human: np.ndarray,
    metrics: tuple[str, ...],
    baseline: tuple[str, ...],
    *,
    num_resamples: int = 1000,
    seed: int = 0,
) -> float:
    """In what share of bootstrap resamples of the photos ``metrics`` ranks the cells at least as well as
    ``baseline`` (paired: both on the same resample)."""
    rng = np.random.default_rng(seed)
    count = next(iter(cell_qualities.values())).shape[0]
    wins = 0
    for _ in range(num_resamples):
        rows = rng.integers(0, count, size=count)
        wins += rank_agreement(cell_qualities, human, metrics, rows) >= rank_agreement(
            cell_qualities, human, baseline, rows
        )
    return wins / num_resamples


def subset_table(
    cell_qualities: dict[str, np.ndarray], human: np.ndarray, costs: dict[str, float]
) -> list[tuple[tuple[str, ...], float, float]]:
    """(metrics, agreement, cost per image) of every non-empty subset, best agreement first."""
    names = tuple(m for m in fr_metrics.METRICS if m in cell_qualities)
    rows = []
    for size in range(1, len(names) + 1):
        for subset in itertools.combinations(names, size):
            rows.append((subset, rank_agreement(cell_qualities, human, subset), sum(costs[m] for m in subset)))
    return sorted(rows, key=lambda row: (-row[1], row[2]))


def metric_costs(reference: np.ndarray, distorted: list[np.ndarray], *, with_piq: bool = True) -> dict[str, dict]:
    """Milliseconds per image of every metric on one CPU thread: ours (the reference's side prepared once
    for all of ``distorted``, its cost shared out) and, with ``with_piq``, piq's own function on each pair."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.inference_mode():
            return {name: _metric_cost(name, reference, distorted, with_piq) for name in fr_metrics.METRICS}
    finally:
        torch.set_num_threads(previous)


def _metric_cost(name: str, reference: np.ndarray, distorted: list[np.ndarray], with_piq: bool) -> dict:
    import torch

    def tensor(pixels: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).unsqueeze(0).contiguous()

    ref, images = tensor(reference), torch.cat([tensor(image) for image in distorted])
    zero = torch.zeros(1, dtype=torch.int64)
    fr_metrics.qualities(images[:1], fr_metrics.prepare_references(ref, (name,)), zero)  # first-use costs
    started = time.perf_counter()
    prepared = fr_metrics.prepare_references(ref, (name,))
    for i in range(images.shape[0]):
        fr_metrics.qualities(images[i : i + 1], prepared, zero)
    cost = {"ours_ms": 1000 * (time.perf_counter() - started) / images.shape[0]}
    if with_piq:
        function = piq_function(name)
        x, y = images.float() / 255.0, ref.float() / 255.0
        function(x[:1], y, data_range=1.0)
        started = time.perf_counter()
        for i in range(images.shape[0]):
            function(x[i : i + 1], y, data_range=1.0)
        cost["piq_ms"] = 1000 * (time.perf_counter() - started) / images.shape[0]
    return cost


def piq_function(name: str):
    """piq's function for one of our metric names (``vif`` is piq's pixel-domain ``vif_p``)."""
    import piq

    return {
        "ssim": piq.ssim,
        "ms_ssim": piq.multi_scale_ssim,
        "gmsd": piq.gmsd,
        "vif": piq.vif_p,
        "fsim": piq.fsim,
    }[name]
