"""What the sharding step writes: pool samples -> work items, with DDCUp's upsampled contents.

The plan is a pure function of the configuration and the files on disk, so a
rerun or another rank computes the same plan. Original samples come first,
sorted by key, then the upsampled ones; engine-made images are grouped by
reference so each reference is decoded once per shard.

Shapes: ``T`` training references, ``A`` candidates, ``D`` feature dimension.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr import features as feature_extraction
from dist_syndr.config import NUM_LEVELS, Config
from dist_syndr.pools import kadid, readers
from dist_syndr.pools.sample import Sample
from dist_syndr.reshape import ddcup
from dist_syndr.sharding import WorkItem, item_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Work items in write order and a few counts for the log."""

    items: list[WorkItem]
    num_original: int
    num_upsampled: int
    selected_candidates: list[str]


def build_plan(config: Config) -> Plan:
    """Read the pool (and candidates), apply the type/level filters and DDCUp."""
    pool = config.shard.pool
    samples = _read(pool.kind, pool.root, pool.on_missing)
    types = tuple(pool.types) or config.reshape.ddcup.distortion_types
    if pool.distort:
        originals = _engine_items(samples, types, pool.levels, config.seed, pool.labels == "weak", "distorted")
    else:
        kept = _filter(samples, pool.kind, types, pool.levels, pool.training_refs_only)
        originals = [_file_item(s, pool.labels) for s in kept]
    originals.sort(key=lambda item: item.key)
    upsampled, selected = ([], [])
    if config.shard.candidates.kind:
        if pool.distort or pool.labels != "dataset":
            raise ValueError("shard.candidates: DDCUp needs a labelled pool (pool.labels=dataset, pool.distort=false)")
        upsampled, selected = _upsample(config, samples, types)
    log.info("plan: %d original and %d upsampled samples (%d contents selected)", len(originals), len(upsampled), len(selected))
    return Plan(originals + upsampled, len(originals), len(upsampled), selected)


def _read(kind: str, root: str, on_missing: str) -> list[Sample]:
    if not root:
        raise ValueError(f"shard.pool.root: no folder given for pool kind {kind}")
    if not Path(root).exists():
        raise ValueError(f"shard.pool.root: {root} does not exist")
    options = {} if kind in ("folder", "kadid_add81") else {"on_missing": on_missing}
    return readers.read_pool(kind, Path(root), **options)


def _filter(samples: list[Sample], kind: str, types, levels, training_refs_only: bool) -> list[Sample]:
    allowed_refs = None
    if kind == "kadid10k" and training_refs_only:
        allowed_refs = {f"kadid10k/{Path(name).stem}" for name in kadid.kadid_training_refs()}
    kept = []
    for sample in samples:
        if allowed_refs is not None and sample.ref not in allowed_refs:
            continue
        if sample.distortion_type is not None and kind in ("kadid10k", "kadis700k"):
            if sample.distortion_type not in types or sample.level not in levels:
                continue
        kept.append(sample)
    return kept


def _file_item(sample: Sample, labels: str) -> WorkItem:
    return WorkItem(
        key=sample.key,
        source_path=str(sample.path),
        ref_path=str(sample.ref_path) if sample.ref_path else None,
        score=sample.score if labels == "dataset" else None,
        wants_weak_label=labels == "weak",
        meta=_meta(sample.ref, sample.distortion_type, sample.level, sample.origin, sample.source),
    )


def _engine_items(references: list[Sample], types, levels, run_seed: int, is_weak: bool, origin: str, scores=None) -> list[WorkItem]:
    items = []
    for reference in references:
        stem = reference.key.rsplit("/", 1)[-1]
        for distortion_type in types:
            for level in levels:
                key = f"{reference.source or 'pool'}/{stem}_{distortion_type:02d}_{level:02d}"
                score = None if scores is None else scores[reference.key][(distortion_type - 1) * NUM_LEVELS + level - 1]
                items.append(
                    WorkItem(
                        key=key,
                        ref_path=str(reference.path),
                        is_engine=True,
                        seed=item_seed(run_seed, key),
                        score=None if score is None else float(score),
                        wants_weak_label=is_weak,
                        meta=_meta(reference.key, distortion_type, level, origin, reference.source),
                    )
                )
    return items


def _meta(ref, distortion_type, level, origin, source) -> dict:
    return {"ref": ref, "type": distortion_type, "level": level, "origin": origin, "source": source}


# ---------------------------------------------------------------------------
# DDCUp


def _upsample(config: Config, pool_samples: list[Sample], types) -> tuple[list[WorkItem], list[str]]:
    shard, settings = config.shard, config.reshape.ddcup
    # Every labelled reference of the pool, before the training-reference filter: the
    # published method measures the content distribution on all 81 KADID references.
    refs = {s.ref: str(s.ref_path) if s.ref_path else None for s in pool_samples if s.ref and s.score is not None}
    train_refs = _in_feature_order(sorted(refs.items()), shard.features.train_names)
    if len(train_refs) < 2:
        raise ValueError("shard.candidates: DDCUp needs at least two training references in the pool")
    candidates = _candidate_references(shard.candidates.kind, shard.candidates.root)
    # The redundancy removal drops the earlier of two close candidates, so order matters:
    # precomputed features fix it by their names file, otherwise keys are sorted.
    candidates = [c for _, c in _in_feature_order([(c.key, c) for c in candidates], shard.features.candidate_names)]
    train_features = _reference_features([r for r, _ in train_refs], [p for _, p in train_refs], "train", config)
    candidate_features = _reference_features([c.key for c in candidates], [str(c.path) for c in candidates], "candidate", config)
    table = _label_table(pool_samples, [r for r, _ in train_refs])
    selected = ddcup.select_candidates(train_features, candidate_features, search=config.reshape.neighbors)
    labels = ddcup.transfer_labels(
        train_features, candidate_features, selected, table,
        top_k=settings.top_k, window=settings.window, weighting=settings.weighting, temperature=settings.temperature,
    )
    chosen = [candidates[i] for i in selected]
    scores = {c.key: row for c, row in zip(chosen, labels)}
    if shard.candidates.kind == "kadid_add81":
        items = _on_disk_upsampled(chosen, scores, types, settings.levels, shard.candidates.root)
    else:
        items = _engine_items(chosen, types, settings.levels, config.seed, False, "upsampled", scores)
    return sorted(items, key=lambda item: item.key), [c.key for c in chosen]


def _in_feature_order(keyed: list[tuple[str, object]], names_path: str) -> list[tuple[str, object]]:
    if not names_path:
        return keyed
    position = {Path(name).stem: i for i, name in enumerate(Path(names_path).read_text().split())}
    return sorted(keyed, key=lambda pair: (position.get(pair[0].rsplit("/", 1)[-1], len(position)), pair[0]))


def _candidate_references(kind: str, root: str) -> list[Sample]:
    if not root or not Path(root).exists():
        raise ValueError(f"shard.candidates.root: {root!r} does not exist")
    references = readers.read_reference_images(Path(root)) if kind == "kadid_add81" else readers.read_folder(Path(root))
    if not references:
        raise ValueError(f"shard.candidates.root: no reference images under {root}")
    return sorted(references, key=lambda s: s.key)


def _reference_features(keys: list[str], paths: list[str], prefix: str, config: Config) -> np.ndarray:
    settings = config.shard.features
    precomputed = getattr(settings, f"{prefix}_features")
    if not precomputed:
        return feature_extraction.embed_paths([Path(p) for p in paths], settings)
    names, features = feature_extraction.load_named_features(precomputed, getattr(settings, f"{prefix}_names"))
    row_of = {Path(name).stem: row for row, name in enumerate(names)}
    missing = [key for key in keys if key.rsplit("/", 1)[-1] not in row_of]
    if missing:
        raise ValueError(f"shard.features.{prefix}_features: no features for {missing[:3]} ({len(missing)} missing)")
    return features[[row_of[key.rsplit("/", 1)[-1]] for key in keys]]


def _label_table(samples: list[Sample], refs: list[str]) -> np.ndarray:
    table = np.full((len(refs), 25 * NUM_LEVELS), np.nan)
    row_of = {ref: i for i, ref in enumerate(refs)}
    for sample in samples:
        if sample.ref in row_of and sample.distortion_type and sample.level and sample.score is not None:
            table[row_of[sample.ref], (sample.distortion_type - 1) * NUM_LEVELS + sample.level - 1] = sample.score
    if np.isnan(table).any():
        ref, column = np.argwhere(np.isnan(table))[0]
        raise ValueError(f"DDCUp label table: no score for {refs[ref]} type {column // 5 + 1} level {column % 5 + 1}")
    return table


def _on_disk_upsampled(chosen: list[Sample], scores, types, levels, root: str) -> list[WorkItem]:
    distorted = {(s.ref, s.distortion_type, s.level): s for s in readers.read_kadid_add81(Path(root))}
    items = []
    for candidate in chosen:
        for distortion_type in types:
            for level in levels:
                sample = distorted.get((candidate.key, distortion_type, level))
                if sample is None:
                    raise ValueError(f"{root}: no distorted image of {candidate.key} type {distortion_type} level {level}")
                score = float(scores[candidate.key][(distortion_type - 1) * NUM_LEVELS + level - 1])
                items.append(
                    WorkItem(
                        key=sample.key,
                        source_path=str(sample.path),
                        ref_path=str(candidate.path),
                        score=score,
                        meta=_meta(candidate.key, distortion_type, level, "upsampled", sample.source),
                    )
                )
    return items
