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

from dist_syndr import collectives
from dist_syndr import config as config_module
from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS, Config, label_column
from dist_syndr.features import weights as weight_sources
from dist_syndr.features.embed import embed_paths, load_named_features
from dist_syndr.pools import kadid, readers
from dist_syndr.pools.candidates import read_kadid_add81, read_reference_images
from dist_syndr.pools.generic import read_folder
from dist_syndr.pools.sample import Sample
from dist_syndr.pools.scores import fit_label_scale, minmax_to_ten
from dist_syndr.reshape import ddcup
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.sharding.writer import WorkItem, WriteOptions, item_seed

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Work items in write order and a few counts for the log."""

    items: list[WorkItem]
    num_original: int
    num_upsampled: int
    selected_candidates: list[str]
    is_upsampling_deferred: bool = (
        False  # weak labels: DDCUp runs once the originals are written (upsample_weakly_labelled)
    )
    label_scale: dict | None = None  # the dataset's own label scale (LabelScale.as_dict) where one map gives it


def build_plan(config: Config) -> Plan:
    """Read the pool (and candidates), apply the type/level filters and DDCUp."""
    pool = config.shard.pool
    samples = _read(pool.kind, pool.root, pool.on_missing)
    types = tuple(pool.types) or config.reshape.ddcup.distortion_types
    label_scale = None
    if pool.distort:
        originals = _engine_items(samples, types, pool.levels, config.seed, pool.labels == "weak", "distorted")
    else:
        kept = _filter(samples, pool.kind, types, pool.levels, pool.training_refs_only)
        originals = [_file_item(s, pool.labels) for s in kept]
        if pool.labels == "dataset":
            label_scale = _label_scale(kept)
    originals.sort(key=lambda item: item.key)
    upsampled, selected, is_deferred = [], [], False
    if config.shard.candidates.kind:
        if pool.labels == "none":
            raise ValueError("shard.candidates: DDCUp needs labels (shard.pool.labels=dataset or weak)")
        if pool.labels == "weak":
            is_deferred = True  # the training labels exist only once the originals are written
        else:
            # Every labelled reference of the pool, before the training-reference filter: the
            # published method measures the content distribution on all 81 KADID references.
            refs = sorted(
                {(s.ref, str(s.ref_path) if s.ref_path else None) for s in samples if s.ref and s.score is not None}
            )
            rows = [(s.ref, s.distortion_type, s.level, s.score) for s in samples if s.score is not None]
            upsampled, selected = _upsample(config, refs, rows, types)
    log.info(
        "plan: %d original and %d upsampled samples (%d contents selected)",
        len(originals),
        len(upsampled),
        len(selected),
    )
    return Plan(originals + upsampled, len(originals), len(upsampled), selected, is_deferred, label_scale)


def upsample_weakly_labelled(
    config: Config, originals: list[WorkItem], qualities: dict[str, float]
) -> tuple[list[WorkItem], list[str]]:
    """DDCUp for a weakly labelled pool, from the ensemble qualities of its written originals.

    The qualities get the same single min-max to [0, 10] as the index gives them, so
    the label table holds the scores the training samples carry.
    """
    labelled = [item for item in originals if item.key in qualities]
    if not labelled:
        raise ValueError("shard.candidates: no weakly labelled original sample to transfer labels from")
    scores = minmax_to_ten(np.array([qualities[item.key] for item in labelled]))
    refs = sorted({(item.meta["ref"], item.ref_path) for item in labelled})
    rows = [
        (item.meta["ref"], item.meta["type"], item.meta["level"], float(score))
        for item, score in zip(labelled, scores, strict=True)
    ]
    types = tuple(config.shard.pool.types) or config.reshape.ddcup.distortion_types
    return _upsample(config, refs, rows, types)


def _label_scale(samples: list[Sample]) -> dict | None:
    """The pool's own label scale, when its labelled samples all come from one min-max map."""
    labelled = [s for s in samples if s.score is not None]
    name = ",".join(sorted({s.source for s in labelled}))
    scale = fit_label_scale(name, [s.score for s in labelled], [s.raw_score for s in labelled])
    return None if scale is None else scale.as_dict()


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


def _engine_items(
    references: list[Sample], types, levels, run_seed: int, is_weak: bool, origin: str, scores=None
) -> list[WorkItem]:
    items = []
    for reference in references:
        stem = reference.key.rsplit("/", 1)[-1]
        for distortion_type in types:
            for level in levels:
                key = f"{reference.source or 'pool'}/{stem}_{distortion_type:02d}_{level:02d}"
                score = None if scores is None else scores[reference.key][label_column(distortion_type, level)]
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


def _upsample(config: Config, refs: list[tuple[str, str | None]], rows, types) -> tuple[list[WorkItem], list[str]]:
    """DDCUp over training references ``refs`` (key, path) labelled by ``rows`` (ref, type, level, score)."""
    shard, settings = config.shard, config.reshape.ddcup
    train_refs = _in_feature_order(sorted(dict(refs).items()), shard.features.train_names)
    if len(train_refs) < 2:
        raise ValueError("shard.candidates: DDCUp needs at least two training references in the pool")
    candidates = _candidate_references(shard.candidates.kind, shard.candidates.root)
    # The redundancy removal drops the earlier of two close candidates, so order matters:
    # precomputed features fix it by their names file, otherwise keys are sorted.
    candidates = [c for _, c in _in_feature_order([(c.key, c) for c in candidates], shard.features.candidate_names)]
    train_features = _reference_features([r for r, _ in train_refs], [p for _, p in train_refs], "train", config)
    candidate_features = _reference_features(
        [c.key for c in candidates], [str(c.path) for c in candidates], "candidate", config
    )
    table = _label_table(rows, [r for r, _ in train_refs], types, settings.levels)
    selected = ddcup.select_candidates(train_features, candidate_features, search=config.reshape.neighbors)
    labels = ddcup.transfer_labels(
        train_features,
        candidate_features,
        selected,
        table,
        top_k=settings.top_k,
        window=settings.window,
        weighting=settings.weighting,
        temperature=settings.temperature,
    )
    chosen = [candidates[i] for i in selected]
    scores = {c.key: row for c, row in zip(chosen, labels, strict=True)}
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
    references = read_reference_images(Path(root)) if kind == "kadid_add81" else read_folder(Path(root))
    if not references:
        raise ValueError(f"shard.candidates.root: no reference images under {root}")
    return sorted(references, key=lambda s: s.key)


def _reference_features(keys: list[str], paths: list[str], prefix: str, config: Config) -> np.ndarray:
    settings = config.shard.features
    precomputed = getattr(settings, f"{prefix}_features")
    if not precomputed:
        return embed_paths([Path(p) for p in paths], settings, max_pixels=config.shard.max_pixels)
    names, features = load_named_features(precomputed, getattr(settings, f"{prefix}_names"))
    row_of = {Path(name).stem: row for row, name in enumerate(names)}
    missing = [key for key in keys if key.rsplit("/", 1)[-1] not in row_of]
    if missing:
        raise ValueError(f"shard.features.{prefix}_features: no features for {missing[:3]} ({len(missing)} missing)")
    return features[[row_of[key.rsplit("/", 1)[-1]] for key in keys]]


def _label_table(rows, refs: list[str], types, levels) -> np.ndarray:
    """``(len(refs), 25 * 5)`` scores; the columns of ``types`` x ``levels`` (the ones DDCUp transfers)
    must all be known.
    """
    table = np.full((len(refs), NUM_DISTORTION_TYPES * NUM_LEVELS), np.nan)
    row_of = {ref: i for i, ref in enumerate(refs)}
    for ref, distortion_type, level, score in rows:
        if ref in row_of and distortion_type and level and score is not None:
            table[row_of[ref], label_column(distortion_type, level)] = score
    needed = [label_column(t, v) for t in types for v in levels]
    missing = np.argwhere(np.isnan(table[:, needed]))
    if missing.size:
        ref, column = missing[0][0], needed[missing[0][1]]
        distortion_type, level = divmod(column, NUM_LEVELS)
        raise ValueError(f"DDCUp label table: no score for {refs[ref]} type {distortion_type + 1} level {level + 1}")
    # Columns outside types x levels are never transferred (no upsampled image is made for them).
    return np.nan_to_num(table, nan=0.0)


def _on_disk_upsampled(chosen: list[Sample], scores, types, levels, root: str) -> list[WorkItem]:
    distorted = {(s.ref, s.distortion_type, s.level): s for s in read_kadid_add81(Path(root))}
    items = []
    for candidate in chosen:
        for distortion_type in types:
            for level in levels:
                sample = distorted.get((candidate.key, distortion_type, level))
                if sample is None:
                    raise ValueError(
                        f"{root}: no distorted image of {candidate.key} type {distortion_type} level {level}"
                    )
                score = float(scores[candidate.key][label_column(distortion_type, level)])
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


def run_shard_step(
    config: Config, out_dir: Path, options: WriteOptions, *, rank: int = 0, world_size: int = 1
) -> Plan:
    """Plan and write the shard set ``out_dir`` (resumable) under its lock, held by rank 0 for the whole step
    (:func:`dist_syndr.sharding.writer.writing`: a second job ends on every rank with one line naming the
    holder); returns the plan with every item written.

    For a weakly labelled pool with DDCUp candidates the originals are written
    first, their weak labels read back, and the upsampled samples written after
    them as further shards of the same set.
    """
    from dist_syndr.sharding import writer

    with writer.writing(out_dir, rank=rank, world_size=world_size):
        plan = build_plan(config)
        recorded = recorded_config(config)
        if plan.label_scale is not None:  # scoring maps predictions back to it (dist_syndr.scoring)
            recorded["label_scale"] = plan.label_scale
        split = {"rank": rank, "world_size": world_size}
        num_shards = writer.write_shards(plan.items, out_dir, options, **split)
        if plan.is_upsampling_deferred:
            if world_size > 1:
                collectives.barrier()
            qualities = writer.weak_qualities(out_dir, range(num_shards))
            upsampled, selected = upsample_weakly_labelled(config, plan.items, qualities)
            num_shards += writer.write_shards(upsampled, out_dir, options, first_shard=num_shards, **split)
            log.info("DDCUp on weak labels: %d contents selected, %d upsampled samples", len(selected), len(upsampled))
            plan = Plan(plan.items + upsampled, plan.num_original, len(upsampled), selected)
        writer.finish_index(out_dir, num_shards, recorded, **split)
    return plan


def recorded_config(cfg: Config) -> dict:
    """The config stored in ``index.json``, without execution-only settings (workers, backends, location),
    so the same data config gives the same bytes however it was run."""
    recorded = config_module.to_dict(cfg)
    recorded.pop("runtime")
    recorded["shard"].pop("num_workers")
    recorded["shard"].pop("output_root")
    features = cfg.shard.features
    if features.weights and not features.train_features:  # DDCUp embeds with these weights: say which they were
        found = weight_sources.resolve(features.backbone, features.weights, key="shard.features.weights")
        recorded["shard"]["features"] |= {"weights_source": found.source, "weights_sha256": found.sha256}
    return recorded


def summary(out_dir: Path, shard_set: ShardSet, plan: Plan) -> str:
    """What the step wrote, skipped and planned, each counted on its own."""
    upsampled = int(shard_set.is_upsampled().sum())
    written = f"{len(shard_set)} samples written ({len(shard_set) - upsampled} original, {upsampled} upsampled)"
    planned = f"of {len(plan.items)} planned ({plan.num_original} original, {plan.num_upsampled} upsampled)"
    skipped = f"{len(shard_set.skipped)} skipped as unreadable (listed under 'skipped' in the index)"
    return f"{out_dir}: {written} {planned} in {len(shard_set.shards)} shards; {skipped}"
