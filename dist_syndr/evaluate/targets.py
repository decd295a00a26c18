"""Evaluation targets: a shard set, or a raw dataset read by its pool reader and sharded once into a cache.

Shapes: none.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dist_syndr import collectives, runtime
from dist_syndr.config import DEFAULT_MAX_PIXELS, Config, OnError
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet

log = logging.getLogger(__name__)

# Target names that differ from the reader kind they mean.
READER_ALIASES = {"koniq": "koniq10k", "kadid": "kadid10k", "kadis": "kadis700k", "livechallenge": "livec"}


def parse_target(name: str, spec: str) -> tuple[str | None, Path]:
    """``(reader kind or None, path)`` of a target ``name=spec`` where spec is ``DIR`` or ``KIND:DIR``.

    The kind is explicit, or ``name`` when it names a reader (``koniq`` means
    ``koniq10k``), or ``csv`` for a ``.csv`` file; None means a shard set is expected.
    """
    from dist_syndr.pools.readers import READERS

    if not name or "/" in name or name.startswith(".") or "=" in name:
        raise ValueError(f"target name {name!r}: must be a plain name (it names files and metrics)")
    prefix, separator, rest = spec.partition(":")
    if separator and (prefix in READERS or prefix in READER_ALIASES):
        return READER_ALIASES.get(prefix, prefix), Path(rest)
    path = Path(spec)
    kind = READER_ALIASES.get(name, name)
    if kind in READERS:
        return kind, path
    if path.suffix.lower() == ".csv":
        return "csv", path
    return None, path


def target_shard_set(
    name: str,
    spec: str,
    cache_dir: Path,
    *,
    num_workers: int = 2,
    seed: int = 0,
    on_error: OnError = "error",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> ShardSet:
    """Target ``name=spec`` as a shard set: ``spec`` itself when it holds ``index.json``, otherwise the
    dataset read by its pools reader, sharded once into ``cache_dir/<name>`` (reused while its source is
    unchanged and its index records pixel digests). ``on_error``/``max_pixels``: as ``shard.on_error`` and
    ``shard.max_pixels`` (unreadable images and images above the cap are skipped and listed, or one error).
    Collective under a process group: ranks split the shards."""
    from dist_syndr.pools.readers import READERS

    kind, root = parse_target(name, spec)
    if (root / INDEX_NAME).is_file():
        return ShardSet(root)
    if not root.exists():
        raise ValueError(f"target {name}: {root} does not exist")
    if kind is None:
        raise ValueError(
            f"target {name}: {root} is not a shard set (no {INDEX_NAME}) and {name!r} names no dataset reader; "
            f"write it as {name}=KIND:{root} with KIND one of {', '.join(sorted(READERS))}"
        )
    out_dir = Path(cache_dir) / name
    recorded = {"target": name, "kind": kind, "root": str(root.resolve())}
    if (out_dir / INDEX_NAME).is_file():
        cached = ShardSet(out_dir)
        if cached.config == recorded and cached.has_pixel_digests:
            log.info("target %s: reusing %s (%d samples)", name, out_dir, len(cached))
            return cached
        if cached.config == recorded:
            log.warning("target %s: %s was sharded before pixel digests; re-sharding it", name, out_dir)
        else:
            source = cached.config.get("root")
            log.warning("target %s: %s was sharded from %s; re-sharding from %s", name, out_dir, source, root)
    options = {"num_workers": num_workers, "on_error": on_error, "max_pixels": max_pixels}
    _shard_raw_target(kind, root, out_dir, recorded, seed=seed, **options)
    return ShardSet(out_dir)


def _shard_raw_target(kind: str, root: Path, out_dir: Path, recorded: dict, *, seed: int, **write_options) -> None:
    from dist_syndr.config import PoolConfig, ShardConfig
    from dist_syndr.sharding import writer
    from dist_syndr.sharding.plan import build_plan

    # Every image the dataset labels: all distortion types and levels, every reference.
    pool = PoolConfig(kind=kind, root=str(root), types=list(range(1, 26)), training_refs_only=False, labels="dataset")
    plan = build_plan(Config(seed=seed, shard=ShardConfig(name=out_dir.name, pool=pool)))
    if not plan.items:
        raise ValueError(f"target {recorded['target']}: the {kind} reader found no images under {root}")
    rank, world_size = runtime.rank_world()
    options = writer.WriteOptions(**write_options)
    writer.write_shard_set(plan.items, out_dir, options, recorded, rank=rank, world_size=world_size)
    collectives.barrier()  # rank 0 writes index.json after the others finished their shards


def parse_targets(entries: list[str]) -> dict[str, str]:
    """``{name: spec}`` from ``NAME=DIR`` / ``NAME=KIND:DIR`` entries, each name once and each path existing."""
    if not entries:
        raise ValueError("no targets: give --target NAME=DIR (or set train.targets in the config)")
    targets: dict[str, str] = {}
    for entry in entries:
        name, separator, spec = entry.partition("=")
        if not separator or not name or not spec:
            raise ValueError(f"--target {entry!r}: expected NAME=DIR or NAME=KIND:DIR")
        if name in targets:
            raise ValueError(f"--target {name}: given twice")
        _, root = parse_target(name, spec)  # checks the name
        if not root.exists():
            raise ValueError(f"target {name}: {root} does not exist")
        targets[name] = spec
    return targets
