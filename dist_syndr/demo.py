"""The embedded demo: both reshaping operations on generated data (and real fixture features when present).

Later stages (sharding, training, evaluation) join here as they land; the demo
never needs anything outside the repository and the installed packages.
"""

from __future__ import annotations

import collections
import csv
import logging
import time
from pathlib import Path

import numpy as np

from dist_syndr.config import Config
from dist_syndr.pools import kadid, synthetic
from dist_syndr.reshape import ddcup, drcdown

log = logging.getLogger(__name__)


DEMO_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
DEMO_TYPES = (1, 3, 10, 11, 16)


def run(config: Config, fixtures_dir: Path | None, work_dir: Path | None = None) -> str:
    """Run every demo stage and return the printed report."""
    sections = [_drcdown_stage(config), _ddcup_stage(config)]
    if work_dir is not None:
        sections.append(_shard_and_load_stage(config, work_dir))
    if fixtures_dir is not None and (fixtures_dir / "refset").is_dir():
        sections.append(_fixture_stage(config, fixtures_dir))
    else:
        sections.append("DDCUp on real features: skipped (no ../shared/fixtures/refset here)")
    return "\n\n".join(sections)


def _drcdown_stage(config: Config) -> str:
    pool = synthetic.pool_from_config(config.synthetic_pool, config.seed)
    settings = config.reshape.drcdown
    started = time.perf_counter()
    result = drcdown.run(
        pool.features,
        pool.labels,
        cap=settings.cap,
        sim_threshold=settings.sim_threshold,
        label_threshold=settings.label_threshold,
        seed=drcdown.epoch_seed(config.seed, 0),
        search=config.reshape.neighbors,
    )
    seconds = time.perf_counter() - started
    sizes = sorted((c.size for c in result.clusters), reverse=True)
    return "\n".join(
        [
            f"== DRCDown on a generated pool: {pool.features.shape[0]:,} samples x {pool.features.shape[1]} dims ==",
            f"redundant clusters: {len(result.clusters)} (largest {sizes[0] if sizes else 0}, "
            f"five largest {sizes[:5]})",
            f"kept {result.kept.size:,} of {result.num_samples:,} samples "
            f"({100 * result.kept.size / result.num_samples:.1f}%) in {seconds:.1f} s "
            f"[{result.search_stats.get('backend')}, {result.search_stats.get('num_edges'):,} edges]",
        ]
    )


def _ddcup_stage(config: Config) -> str:
    pool_config = config.synthetic_pool
    sets = synthetic.reference_sets(pool_config.num_train_refs, pool_config.num_candidate_refs, pool_config.dim, config.seed)
    settings = config.reshape.ddcup
    selected = ddcup.select_candidates(sets.train, sets.candidates, search=config.reshape.neighbors)
    labels = ddcup.transfer_labels(
        sets.train,
        sets.candidates,
        selected,
        sets.train_labels,
        top_k=settings.top_k,
        window=settings.window,
        weighting=settings.weighting,
        temperature=settings.temperature,
    )
    names = [f"candidate{i:05d}.png" for i in range(len(sets.candidate_kind))]
    records = ddcup.upsampled_records(names, selected, labels, settings.distortion_types, settings.levels)
    offered = collections.Counter(sets.candidate_kind)
    chosen = collections.Counter(sets.candidate_kind[i] for i in selected)
    breakdown = ", ".join(f"{kind} {chosen[kind]}/{offered[kind]}" for kind in sorted(offered))
    sample = "\n".join(f"  {name}  score {score:.3f}" for name, _, _, _, score in records[:4])
    return "\n".join(
        [
            f"== DDCUp on generated references: {sets.train.shape[0]} training refs, {len(names)} candidates ==",
            f"selected {selected.size} candidates (selected/offered by kind: {breakdown})",
            f"{len(records)} pseudo-labelled samples for types {list(settings.distortion_types)}, levels {settings.levels}:",
            sample,
        ]
    )


def _shard_and_load_stage(config: Config, work_dir: Path) -> str:
    """Shard real photographs (engine distortions, weak labels), then read one epoch through the loader."""
    from dist_syndr.loader import make_loader, plan_epoch, verify_shard_set
    from dist_syndr.photo_pools import photo_shard_set

    started = time.perf_counter()
    shard_set = photo_shard_set(work_dir / "shards" / "demo-photos", DEMO_PHOTOS, DEMO_TYPES, size=256, seed=config.seed)
    shard_seconds = time.perf_counter() - started
    data = config.data
    excluded = verify_shard_set(shard_set, data)
    epoch = plan_epoch(shard_set.keys(), data, seed=config.seed, epoch=0, excluded_keys=excluded)
    started, images = time.perf_counter(), 0
    with make_loader(shard_set, data, is_training=True, dali=config.runtime.dali) as loader:
        for batch in loader.batches(epoch.for_rank(0)):
            images += batch.images.shape[0]
        loader_name = type(loader).__name__
    load_seconds = time.perf_counter() - started
    scores = shard_set.scores()
    return "\n".join(
        [
            f"== Sharding {len(DEMO_PHOTOS)} photographs x types {list(DEMO_TYPES)} x 5 levels (engine + weak labels) ==",
            f"{len(shard_set)} samples in {len(shard_set.shards)} shards under {shard_set.root} in {shard_seconds:.1f} s"
            " (a rerun reuses finished shards)",
            f"weak-label scores (full-reference ensemble, not human scores): {scores.min():.1f} .. {scores.max():.1f}",
            f"one training epoch through {loader_name}: {images} random {data.crop}x{data.crop} crops in {load_seconds:.1f} s",
        ]
    )


def _fixture_stage(config: Config, fixtures_dir: Path) -> str:
    refset = fixtures_dir / "refset"
    train = np.load(refset / "train_ref_features.npy")
    candidates = np.load(refset / "additional_ref_features.npy")
    train_names = (refset / "train_ref_names.txt").read_text().split()
    candidate_names = (refset / "additional_ref_names.txt").read_text().split()
    selected = ddcup.select_candidates(train, candidates, search=config.reshape.neighbors)
    lines = [
        "== DDCUp on real ResNet-50 features (KADID-10k references vs 81 candidate contents) ==",
        f"selected {selected.size} contents: {', '.join(candidate_names[i] for i in selected)}",
    ]
    dmos = fixtures_dir / "kadid10k" / "dmos.csv"
    expected_path = refset / "expected_upsampled_bid.csv"
    if dmos.is_file():
        table = kadid.label_table(kadid.read_dmos_csv(dmos), train_names)
        settings = config.reshape.ddcup
        labels = ddcup.transfer_labels(train, candidates, selected, table, top_k=settings.top_k, window=settings.window)
        records = ddcup.upsampled_records(candidate_names, selected, labels, settings.distortion_types, settings.levels)
        lines.append(f"{len(records)} pseudo-labelled samples for target {settings.target}")
        if expected_path.is_file() and settings.target == "bid" and list(settings.levels) == [1, 3, 5]:
            with expected_path.open() as handle:
                expected = {row["dist_img"]: float(row["score"]) for row in csv.DictReader(handle)}
            produced = {name: score for name, _, _, _, score in records}
            if set(produced) == set(expected):
                gap = max(abs(produced[k] - expected[k]) for k in expected)
                lines.append(f"matches the published release: {len(expected)} samples, largest score gap {gap:.1e}")
            else:
                lines.append("DIFFERS from the published release (sample names do not match)")
    return "\n".join(lines)
