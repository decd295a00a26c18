"""Clustering diagnostics on pools with planted structure, against brute-force definitions."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from dist_syndr.evaluate.diagnostics import measures
from dist_syndr.evaluate.diagnostics.clusters import (
    cluster_size_histogram,
    flat_metrics,
    format_table,
    restrict_clusters,
)
from dist_syndr.evaluate.diagnostics.measures import (
    MEASURES,
    before_after,
    cheap_measures,
    knn_label_consistency,
    silhouette_by,
)
from dist_syndr.evaluate.diagnostics.plots import embedding_plot, histogram_plot
from tests.conftest import PROJECT_ROOT, TORCH_EXTENSIONS_DIR


def planted_pool(
    seed: int, *, num_refs: int = 30, num_types: int = 8, per_pair: int = 3, by: str = "type", noise: float = 0.15
):
    """Features built to cluster by ``by`` (``type`` or ``ref``) with the other label uninformative."""
    rng = np.random.default_rng(seed)
    refs = np.repeat(np.arange(num_refs), num_types * per_pair)
    types = np.tile(np.repeat(np.arange(1, num_types + 1), per_pair), num_refs)
    dim = 24
    centres = rng.normal(size=((num_types if by == "type" else num_refs) + 1, dim))
    owner = types if by == "type" else refs
    features = centres[owner] + noise * rng.normal(size=(owner.size, dim))
    return features.astype(np.float32), refs, types


def dense_knn_consistency(features: np.ndarray, labels: np.ndarray, k: int) -> float:
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    neighbours = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return float((labels[neighbours] == labels[:, None]).mean())


# ---------------------------------------------------------------------------
# planted structure


@pytest.mark.timeout(60)
def test_planted_type_clusters_score_near_one_and_shuffled_near_zero():
    features, refs, types = planted_pool(0)
    assert silhouette_by(features, types) > 0.9
    assert knn_label_consistency(features, types) > 0.99
    shuffled = np.random.default_rng(1).permutation(types)
    assert abs(silhouette_by(features, shuffled)) < 0.05
    chance = 1 / 8
    assert abs(knn_label_consistency(features, shuffled) - chance) < 0.05


@pytest.mark.timeout(60)
def test_refs_and_types_are_told_apart():
    by_type = cheap_measures(*planted_pool(2, by="type"))
    by_ref = cheap_measures(*planted_pool(2, by="ref"))
    assert by_type["silhouette_type"] > 0.9 and by_type["knn_type"] > 0.99
    assert by_type["silhouette_ref"] < 0.05 and by_type["knn_ref"] < 0.2
    assert by_ref["silhouette_ref"] > 0.9 and by_ref["knn_ref"] > 0.99
    assert by_ref["silhouette_type"] < 0.05 and by_ref["knn_type"] < 0.3


@pytest.mark.timeout(60)
def test_silhouette_tracks_cluster_tightness():
    values = [
        silhouette_by(planted_pool(3, noise=noise)[0], planted_pool(3, noise=noise)[2]) for noise in (0.1, 0.5, 1.5)
    ]
    assert values[0] > values[1] > values[2]


# ---------------------------------------------------------------------------
# against the definitions


@pytest.mark.timeout(60)
def test_silhouette_equals_sklearn_with_string_labels(monkeypatch):
    from sklearn.metrics import silhouette_score

    monkeypatch.setattr(measures, "BLOCK_ROWS", 64)
    monkeypatch.setattr(measures, "LABEL_BLOCK", 4)  # the nearest other label found across label blocks

    rng = np.random.default_rng(4)
    features = rng.normal(size=(300, 12)) + np.eye(12)[rng.integers(0, 12, 300)] * 1.5
    labels = np.array([f"ref{v}" for v in rng.integers(0, 9, 300)])
    expected = silhouette_score(features, labels, metric="cosine")
    assert silhouette_by(features, labels) == pytest.approx(expected, abs=1e-6)


@pytest.mark.timeout(60)
def test_blocked_knn_equals_dense_search(monkeypatch):
    monkeypatch.setattr(measures, "BLOCK_ROWS", 37)  # many blocks, a ragged last one
    features, _, types = planted_pool(5, noise=1.0)
    expected = dense_knn_consistency(features, types, k=7)
    assert knn_label_consistency(features, types, k=7, max_queries=None) == pytest.approx(expected, abs=1e-12)


@pytest.mark.timeout(60)
def test_missing_labels_are_left_out_of_both_measures():
    from sklearn.metrics import silhouette_score

    features, _, types = planted_pool(6, noise=1.0)
    labels = types.astype(object)
    labels[::5] = None
    present = np.array([label is not None for label in labels])
    expected_silhouette = silhouette_score(features[present], types[present], metric="cosine")
    assert silhouette_by(features, labels, max_samples=None) == pytest.approx(expected_silhouette, abs=1e-6)
    expected_knn = dense_knn_consistency(features[present], types[present], k=10)
    assert knn_label_consistency(features, labels, max_queries=None) == pytest.approx(expected_knn, abs=1e-12)


@pytest.mark.timeout(60)
def test_sampled_queries_estimate_the_full_measure():
    features, _, types = planted_pool(7, num_refs=80, noise=1.2)
    full = silhouette_by(features, types, max_samples=None)
    sampled = [silhouette_by(features, types, max_samples=400, seed=s) for s in range(3)]
    assert all(abs(value - full) < 0.03 for value in sampled)
    assert len(set(sampled)) == 3  # really sampled
    assert silhouette_by(features, types, max_samples=400, seed=1) == sampled[1]  # seeded


@pytest.mark.timeout(30)
def test_fewer_than_two_labels_gives_nan_with_a_warning(caplog):
    features, _, _ = planted_pool(8)
    with caplog.at_level(logging.WARNING, logger="dist_syndr.evaluate.diagnostics.measures"):
        assert np.isnan(silhouette_by(features, ["only"] * len(features)))
        assert np.isnan(knn_label_consistency(features, [None] * len(features)))
    assert "undefined" in caplog.text


@pytest.mark.timeout(30)
def test_bad_inputs_are_named():
    features, _, types = planted_pool(9)
    features[17, 3] = np.nan
    with pytest.raises(ValueError, match="row 17"):
        silhouette_by(features, types)
    with pytest.raises(ValueError, match="labels: expected 720 labels"):
        knn_label_consistency(features[:, :2], types[:-1])
    with pytest.raises(ValueError, match="features: expected shape"):
        silhouette_by(features[0], types)


# ---------------------------------------------------------------------------
# cheap measures


@pytest.mark.timeout(120)
def test_cheap_measures_keys_and_speed_on_60k_by_768():
    rng = np.random.default_rng(10)
    features = rng.standard_normal((60_000, 768), dtype=np.float32)
    refs = [f"ref{i}" for i in rng.integers(0, 480, 60_000)]
    types = rng.integers(1, 26, 60_000).astype(object)
    types[:100] = None
    cheap_measures(features[:5000], refs[:5000], types[:5000])  # warm-up (BLAS threads)
    started = time.perf_counter()
    measures = cheap_measures(features, refs, types)
    seconds = time.perf_counter() - started
    assert set(measures) == set(MEASURES)
    assert all(abs(value) < 0.1 for value in measures.values())  # random features: no structure
    # About 0.5 s on an idle 2-core CPU, 2-5 s when other jobs share its cores; an N x N search
    # would need about 5.5 TFLOP here (minutes), so the loose bound still tells sampling apart.
    assert seconds < 15.0, f"cheap_measures took {seconds:.2f} s"


# ---------------------------------------------------------------------------
# clusters and before/after


@pytest.mark.timeout(30)
def test_cluster_size_histogram_counts():
    clusters = [np.array([0, 1]), np.array([2, 3, 4, 5, 6]), np.arange(10, 70), np.arange(70, 90)]
    histogram = cluster_size_histogram(clusters, 100)
    assert histogram["bins"] == ["1", "2-4", "5-9", "10-19", "20-49", "50+"]
    assert histogram["clusters"] == [13, 1, 1, 0, 1, 1]
    assert histogram["samples"] == [13, 2, 5, 0, 20, 60]
    assert sum(histogram["samples"]) == 100
    assert (histogram["num_clusters"], histogram["largest"]) == (4, 60)
    empty = cluster_size_histogram([], 5)
    assert empty["samples"] == [5, 0, 0, 0, 0, 0] and empty["largest"] == 1
    with pytest.raises(ValueError, match="more than one cluster"):
        cluster_size_histogram([np.array([0, 1]), np.array([1, 2])], 5)
    with pytest.raises(ValueError, match=">= 2"):
        cluster_size_histogram([np.array([3])], 5)


@pytest.mark.timeout(30)
def test_restrict_clusters_reindexes_into_the_kept_subset():
    clusters = [np.array([0, 1]), np.array([2, 3, 4, 5]), np.array([7, 8, 9])]
    kept = np.array([0, 2, 4, 5, 6, 9])
    restricted = restrict_clusters(clusters, kept)
    assert [c.tolist() for c in restricted] == [[1, 2, 3]]  # rows 2, 4, 5 sit at positions 1, 2, 3


@pytest.mark.timeout(60)
def test_before_after_measures_the_kept_subset():
    features, refs, types = planted_pool(11, noise=0.6)
    scores = np.random.default_rng(11).uniform(0, 10, len(features))
    # Thin type 1 (a dense cluster) to 2 of its members: type structure loosens for the rest to see.
    kept = np.flatnonzero((types != 1) | (np.arange(len(types)) % 40 == 0))
    result = before_after(features, refs, types, scores, kept)
    assert result["before"] == {
        **cheap_measures(features, refs, types, max_samples=5000, knn_queries=5000),
        "num_samples": float(len(features)),
        "score_mean": pytest.approx(scores.mean()),
        "score_std": pytest.approx(scores.std()),
    }
    direct = cheap_measures(features[kept], refs[kept], types[kept], max_samples=5000, knn_queries=5000)
    assert {k: result["after"][k] for k in MEASURES} == direct
    assert result["after"]["num_samples"] == kept.size
    flat = flat_metrics(result)
    assert flat["diag/knn_type/after"] == direct["knn_type"] and len(flat) == 14
    table = format_table(result)
    assert "silhouette_type" in table and str(kept.size) in table
    with pytest.raises(ValueError, match="kept_index"):
        before_after(features, refs, types, scores, np.array([0, len(features)]))


# ---------------------------------------------------------------------------
# plots


def _assert_real_png(path, size):
    from PIL import Image

    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == size
        assert image.mode in ("RGB", "RGBA")
        pixels = np.asarray(image.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert colours.shape[0] > 50, "the image looks blank"


@pytest.mark.timeout(60)
def test_embedding_plot_writes_one_valid_png(tmp_path):
    features, _, types = planted_pool(12)
    scores = np.linspace(0, 10, len(features))
    labels = types.astype(object)
    labels[:5] = None
    path = embedding_plot(
        features, scores, labels, tmp_path / "plots" / "embedding.png", max_points=500, title="planted"
    )
    _assert_real_png(path, (1300, 550))
    assert sorted(p.name for p in path.parent.iterdir()) == ["embedding.png"]  # no temporary left behind
    with pytest.raises(ValueError, match="method"):
        embedding_plot(features, scores, types, tmp_path / "x.png", method="umap")


@pytest.mark.timeout(120)
def test_tsne_embedding_plot(tmp_path):
    from threadpoolctl import threadpool_limits

    features, _, types = planted_pool(13, num_refs=6)
    with threadpool_limits(1):  # OpenMP spin-waits make t-SNE many times slower on an oversubscribed shared CPU
        path = embedding_plot(
            features, types.astype(float), types, tmp_path / "tsne.png", method="tsne", max_points=120
        )
    _assert_real_png(path, (1300, 550))


@pytest.mark.timeout(60)
def test_histogram_plot_writes_a_valid_png(tmp_path):
    before = cluster_size_histogram([np.arange(0, 30), np.array([40, 41])], 60)
    after = cluster_size_histogram([np.arange(0, 20)], 50)
    path = histogram_plot({"before": before, "after": after}, tmp_path / "clusters_hist.png")
    _assert_real_png(path, (800, 450))


# ---------------------------------------------------------------------------
# the launcher


def _launcher_env(tmp_path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(
        PYTHONPATH=str(PROJECT_ROOT),
        MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 'mlflow.db'}",
        MPLCONFIGDIR=str(PROJECT_ROOT / ".cache" / "matplotlib"),
        TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR,
    )
    return env


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_launcher_random_init_writes_outputs_and_logs_to_mlflow(tmp_path):
    import mlflow

    from dist_syndr.sharding.photos import photo_shard_set

    shard_dir = tmp_path / "shards" / "tiny"
    photo_shard_set(shard_dir, ("astronaut", "coffee"), (1, 16), size=64, seed=0, num_workers=1)
    out = tmp_path / "diag"
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "diagnose.py"),
        "--shard-set",
        str(shard_dir),
        "--random-init",
        "--out",
        str(out),
        "--experiment",
        "diag-test",
        "--max-points",
        "40",
    ]
    completed = subprocess.run(
        command, cwd=tmp_path, env=_launcher_env(tmp_path), timeout=360, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "silhouette_type" in completed.stdout and "before" in completed.stdout

    report = json.loads((out / "diagnostics.json").read_text())
    before, after = report["measures"]["before"], report["measures"]["after"]
    assert before["num_samples"] == 20 and 0 < after["num_samples"] <= 20  # 2 photos x 2 types x 5 levels
    assert all(np.isfinite(before[name]) for name in MEASURES)
    assert sum(report["clusters"]["before"]["samples"]) == 20
    assert sum(report["clusters"]["after"]["samples"]) == after["num_samples"]
    for name in ("clusters_hist.png", "embedding_before.png", "embedding_after.png"):
        _assert_real_png(out / name, (800, 450) if name == "clusters_hist.png" else (1300, 550))

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("diag-test").experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["diag/knn_type/before"] == pytest.approx(before["knn_type"])
    assert run.data.metrics["diag/num_samples/after"] == after["num_samples"]
    logged = {item.path for item in client.list_artifacts(run.info.run_id, "diagnostics")}
    assert logged == {
        f"diagnostics/{n}"
        for n in ("diagnostics.json", "clusters_hist.png", "embedding_before.png", "embedding_after.png")
    }

    # The same (seeded) random model saved as a checkpoint, diagnosed in-process into an open "training" run.
    _checkpoint_into_open_run(tmp_path, shard_dir, client, before)


def _checkpoint_into_open_run(tmp_path, shard_dir, client, expected_before):
    import torch

    from dist_syndr import config
    from dist_syndr.features.model import build_model
    from launchers import diagnose

    cfg = config.load(diagnose.DEFAULT_CONFIG)
    torch.manual_seed(cfg.seed)
    run_dir = tmp_path / "runs" / "fake"
    run_dir.mkdir(parents=True)
    torch.save(build_model(cfg.model).state_dict(), run_dir / "model.pt")
    config.dump(cfg, run_dir / "config.yaml")
    training_run = client.create_run(client.create_experiment("train-x")).info.run_id
    out = tmp_path / "diag-checkpoint"
    env = _launcher_env(tmp_path)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(tmp_path)
        patch.setenv("MLFLOW_TRACKING_URI", env["MLFLOW_TRACKING_URI"])
        patch.setenv("MPLCONFIGDIR", env["MPLCONFIGDIR"])
        code = diagnose.main(
            [
                "--shard-set",
                str(shard_dir),
                "--checkpoint",
                str(run_dir / "model.pt"),
                "--out",
                str(out),
                "--run-id",
                training_run,
                "--epoch",
                "2",
                "--max-points",
                "40",
            ]
        )
    assert code == 0
    report = json.loads((out / "diagnostics.json").read_text())
    for name in MEASURES:
        assert report["measures"]["before"][name] == pytest.approx(expected_before[name], abs=1e-4)
    run = client.get_run(training_run)
    assert run.info.status == "RUNNING"  # someone else's run is left open
    (point,) = client.get_metric_history(training_run, "diag/silhouette_ref/before")
    assert point.step == 2 and point.value == pytest.approx(report["measures"]["before"]["silhouette_ref"])


@pytest.mark.timeout(120)
def test_launcher_rejects_a_missing_shard_set(tmp_path):
    command = [
        sys.executable,
        str(PROJECT_ROOT / "launchers" / "diagnose.py"),
        "--shard-set",
        str(tmp_path / "nothing"),
        "--random-init",
    ]
    completed = subprocess.run(
        command, cwd=tmp_path, env=_launcher_env(tmp_path), timeout=100, capture_output=True, text=True
    )
    assert completed.returncode == 2
    assert completed.stderr.startswith("error: ") and "index.json" in completed.stderr
