"""One diagnostics run: a model's features of a shard set's original samples, DRCDown on them, and the
clustering measures, cluster tables and plots before and after it (``launchers/diagnose.py``), logged to
MLflow as ``diag/<measure>/before|after``.

Shapes: ``N`` original samples, ``D`` feature dimension.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

import numpy as np

from dist_syndr import files, source
from dist_syndr.config import Config
from dist_syndr.evaluate.diagnostics import clusters, measures, plots
from dist_syndr.evaluate.predict import embed
from dist_syndr.features.passes import PassOptions
from dist_syndr.loader import upsampled_keys
from dist_syndr.reshape import drcdown
from dist_syndr.runs.folder import RunFolder
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.tracking.journal import Journal
from dist_syndr.tracking.tracker import LOCAL_DIR_NAME, make_tracker

log = logging.getLogger(__name__)

MIN_SAMPLES = 3


@dataclasses.dataclass(frozen=True)
class Originals:
    """The original (not upsampled) samples of a shard set with what the measures group them by."""

    keys: list[str]
    scores: np.ndarray  # (N,) float64
    refs: np.ndarray  # (N,) object
    types: np.ndarray  # (N,) object


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What :func:`diagnose` measured and wrote."""

    report: dict  # also written as diagnostics.json
    num_clusters: int
    largest_cluster: int
    num_kept: int
    files: list[Path]  # diagnostics.json and the PNGs

    def summary(self) -> str:
        """One line on DRCDown's clusters and what it kept."""
        total = self.report["clusters"]["before"]["num_samples"]
        clusters_found = f"{self.num_clusters} redundant clusters (largest {self.largest_cluster})"
        return f"DRCDown: {clusters_found}; kept {self.num_kept} of {total}"

    @property
    def metrics(self) -> dict[str, float]:
        """``diag/<measure>/<before|after>`` and the cluster counts, for MLflow."""
        values = clusters.flat_metrics(self.report["measures"])
        for side, histogram in self.report["clusters"].items():
            values[f"diag/num_clusters/{side}"] = float(histogram["num_clusters"])
            values[f"diag/largest_cluster/{side}"] = float(histogram["largest"])
        return values


def original_samples(shard_set: ShardSet) -> Originals:
    """The samples DRCDown acts on; ValueError when there are too few or one has no score."""
    upsampled = set(upsampled_keys(shard_set))
    entries = [entry for entry in shard_set.samples if entry.key not in upsampled]
    if len(entries) < MIN_SAMPLES:
        raise ValueError(f"{shard_set.root}: {len(entries)} original samples; diagnostics need at least {MIN_SAMPLES}")
    unscored = [entry.key for entry in entries if entry.score is None]
    if unscored:
        raise ValueError(
            f"{shard_set.root}: {len(unscored)} original sample(s) have no score (e.g. {unscored[0]}); "
            "DRCDown needs labels"
        )
    return Originals(
        keys=[entry.key for entry in entries],
        scores=np.array([entry.score for entry in entries], dtype=np.float64),
        refs=np.array([entry.ref for entry in entries], dtype=object),
        types=np.array([entry.distortion_type for entry in entries], dtype=object),
    )


def check_out_dir(out_dir: Path) -> None:
    """ValueError when ``out_dir`` is a training run's folder (diagnostics would replace its journal)."""
    if RunFolder.is_run_folder(out_dir):
        raise ValueError(
            f"--out {out_dir} is a training run's folder; diagnostics would replace its tracking journal. "
            f"Use a folder of its own, e.g. {Path(out_dir) / 'diagnostics'}"
        )


def diagnose(
    model,
    shard_set: ShardSet,
    cfg: Config,
    out_dir: Path,
    *,
    device,
    model_name: str,
    epoch: int = 0,
    method: str = "pca",
    max_points: int = 3000,
) -> Diagnosis:
    """Embed, run DRCDown (always, whatever ``reshape.drcdown.enabled`` says), measure, plot and write the report.

    ValueError when ``out_dir`` is a training run's folder: its files (the tracking journal above all) are the
    run's own and must not be replaced."""
    check_out_dir(out_dir)
    samples = original_samples(shard_set)
    features = embed(model, shard_set, cfg.data, samples.keys, PassOptions(device=device, dali=cfg.runtime.dali))
    drcdown_cfg = dataclasses.replace(cfg.reshape.drcdown, enabled=True)
    kept, result = drcdown.kept_keys(
        samples.keys,
        features,
        samples.scores,
        config=drcdown_cfg,
        run_seed=cfg.seed,
        epoch=epoch,
        search=cfg.reshape.neighbors,
    )
    position = {key: i for i, key in enumerate(samples.keys)}
    kept_index = np.array(sorted(position[key] for key in kept), dtype=np.int64)
    before_after = measures.before_after(
        features, samples.refs, samples.types, samples.scores, kept_index, seed=cfg.seed
    )
    histograms = {
        "before": clusters.cluster_size_histogram(result.clusters, len(samples.keys)),
        "after": clusters.cluster_size_histogram(
            clusters.restrict_clusters(result.clusters, kept_index), kept_index.size
        ),
    }
    pictures = _plots(
        features, samples, kept_index, histograms, out_dir, shard_set.root.name, method, max_points, cfg.seed
    )
    report = {
        "shard_set": str(shard_set.root),
        "model": model_name,
        "backbone": cfg.model.backbone,
        "epoch": epoch,
        "feature_dim": int(features.shape[1]),
        "drcdown": dataclasses.asdict(drcdown_cfg),
        "measures": before_after,
        "clusters": histograms,
    }
    report_path = files.write_text(out_dir / "diagnostics.json", json.dumps(report, indent=2, allow_nan=True) + "\n")
    return Diagnosis(
        report, len(result.clusters), result.largest_cluster, int(kept_index.size), [report_path, *pictures]
    )


def _plots(
    features, samples: Originals, kept_index, histograms, out_dir: Path, name: str, method, max_points, seed
) -> list[Path]:
    options = {"method": method, "max_points": max_points, "seed": seed}
    kept = kept_index
    return [
        plots.histogram_plot(histograms, out_dir / "clusters_hist.png", title=f"{name}: DRCDown cluster sizes"),
        plots.embedding_plot(
            features,
            samples.scores,
            samples.types,
            out_dir / "embedding_before.png",
            title=f"{name}: all {len(samples.keys)} original samples",
            **options,
        ),
        plots.embedding_plot(
            features[kept],
            samples.scores[kept],
            samples.types[kept],
            out_dir / "embedding_after.png",
            title=f"{name}: {kept.size} samples kept by DRCDown",
            **options,
        ),
    ]


def log_diagnosis(
    cfg: Config, diagnosis: Diagnosis, out_dir: Path, *, run_id: str | None, experiment: str | None, step: int
):
    """Log the measures and files into ``run_id`` (left open: it belongs to someone else) or a new run (closed).

    The journal is ``<out_dir>/tracking``: records a down server did not take are pushed later with
    ``python launchers/compare.py --sync <out_dir>/tracking``.
    """
    cfg = dataclasses.replace(cfg, run_name=f"{cfg.run_name}-diagnose-{out_dir.name}")
    tags = {
        "git_commit": source.git_commit(),
        "dist_syndr.kind": "diagnostics",
        "shard_set": diagnosis.report["shard_set"],
    }
    journal_dir = out_dir / LOCAL_DIR_NAME
    if Journal.exists(journal_dir) and Journal(journal_dir).num_pending() == 0:
        shutil.rmtree(journal_dir)  # delivered in full: this invocation is a run (or a visit to run_id) of its own
    experiment = experiment or cfg.train.experiment
    tracker = make_tracker(
        cfg, rank=0, experiment=experiment, root=Path("mlruns"), tags=tags, run_id=run_id, local_dir=journal_dir
    )
    tracker.log_metrics(diagnosis.metrics, step=step)
    for path in diagnosis.files:
        tracker.log_artifact(path, "diagnostics")
    if run_id is None:
        tracker.close()
        log.info("diagnostics logged as MLflow run %s", tracker.run_id)
    elif not tracker.flush(timeout_s=60.0):
        log.warning(
            "diagnostics not yet delivered to run %s; push them with `python launchers/compare.py --sync %s`",
            run_id,
            tracker.local_dir,
        )
