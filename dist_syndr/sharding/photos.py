"""Shard sets of the photographs that ship with installed packages (:mod:`dist_syndr.pools.embedded`).

:func:`photo_shard_set` writes small smoke and benchmark sets: photographs are
cropped, written as pristine PNGs, distorted by our engine and labelled with
weak full-reference labels (not human scores) through the normal sharding step,
so a rerun reuses the finished shards. :func:`composite_items` plans the demo's
held-out test images, each with 2-4 composed distortions.

Such a set is built once and then shared (the smoke sets of every training run of
``cpu-smoke``, a study's parallel runs among them): a job that finds another one
building it waits for that job's lock (``<set>/.lock``) and reuses the set it wrote.

Shapes: crops ``(size, size, 3)`` uint8.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import time
from pathlib import Path

import numpy as np

from dist_syndr import config as config_module
from dist_syndr import files
from dist_syndr.pools.embedded import photo_crops
from dist_syndr.sharding import writer
from dist_syndr.sharding.plan import build_plan
from dist_syndr.sharding.shard_set import INDEX_NAME, LOCK_NAME, ShardSet
from dist_syndr.sharding.writer import WorkItem, item_seed

log = logging.getLogger(__name__)

LOCK_WAIT_S = 300.0  # how long a job waits for another one building the same set (a smoke set takes seconds)
LOCK_POLL_S = 0.5


def photo_shard_set(
    out_dir: Path,
    photos: tuple[str, ...],
    types: tuple[int, ...],
    *,
    size: int = 256,
    seed: int = 0,
    num_workers: int = 2,
) -> ShardSet:
    """The shard set ``out_dir``: ``photos`` x ``types`` x 5 levels, built once (under the set's lock, waiting up
    to ``LOCK_WAIT_S`` for another job building it) and reused.

    The pristine crops go to ``<out_dir parent>/.pristine/<out_dir name>``. One process writes it: under a
    process group only the ranks that build call this.
    """
    if (out_dir / INDEX_NAME).is_file():
        return ShardSet(out_dir)
    with _lock_when_free(out_dir):
        if not (out_dir / INDEX_NAME).is_file():  # another job may have built it while this one waited
            _build(out_dir, photos, types, size=size, seed=seed, num_workers=num_workers)
    return ShardSet(out_dir)


@contextlib.contextmanager
def _lock_when_free(out_dir: Path):
    """The set's lock, waiting up to ``LOCK_WAIT_S`` while another job holds it; LockedError after that."""
    held = contextlib.ExitStack()
    deadline = time.monotonic() + LOCK_WAIT_S
    for attempt in itertools.count():
        try:
            held.enter_context(files.exclusive_lock(out_dir / LOCK_NAME, f"shard set {out_dir}"))
            break
        except files.LockUnsupportedError:
            raise  # no job holds it: waiting cannot help
        except files.LockedError as error:
            if time.monotonic() >= deadline:
                raise
            if attempt == 0:
                log.info("waiting up to %.0f s for the job building this set: %s", LOCK_WAIT_S, error)
            time.sleep(LOCK_POLL_S)
    with held:
        yield


def _build(out_dir: Path, photos: tuple[str, ...], types: tuple[int, ...], *, size: int, seed: int, num_workers: int):
    from PIL import Image

    pristine = out_dir.parent / ".pristine" / out_dir.name
    pristine.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for photo, crop in zip(photos, photo_crops(rng, len(photos), size, size, photos), strict=True):
        if not (pristine / f"{photo}.png").is_file():
            Image.fromarray(crop).save(pristine / f"{photo}.png")
    overrides = [
        f"seed={seed}",
        "shard.pool.kind=folder",
        f"shard.pool.root={pristine}",
        "shard.pool.distort=true",
        "shard.pool.labels=weak",
        f"shard.pool.types={list(types)}",
        "shard.samples_per_shard=25",
    ]
    cfg = config_module.load(None, overrides)
    options = writer.WriteOptions(samples_per_shard=25, num_workers=num_workers)
    num_shards = writer.write_shards(build_plan(cfg).items, out_dir, options)
    writer.finish_index(out_dir, num_shards, {"photos": list(photos), "types": list(types), "size": size})


def composite_items(
    references: list[Path], types: tuple[int, ...], *, per_content: int, seed: int, source: str = "test"
) -> list[WorkItem]:
    """``per_content`` images per reference, each with 2-4 distinct random types at random levels, weakly labelled."""
    rng = np.random.default_rng(seed)
    items = []
    for reference in references:
        for index in range(per_content):
            count = int(rng.integers(2, min(4, len(types)) + 1))
            chain = [[int(t), int(rng.integers(1, 6))] for t in rng.choice(types, size=count, replace=False)]
            key = f"{source}/{reference.stem}_mix{index:02d}"
            meta = {
                "ref": f"{source}/{reference.stem}",
                "type": None,
                "level": None,
                "chain": chain,
                "origin": "composite",
                "source": source,
            }
            items.append(
                WorkItem(
                    key=key,
                    ref_path=str(reference),
                    is_engine=True,
                    seed=item_seed(seed, key),
                    wants_weak_label=True,
                    meta=meta,
                )
            )
    return items
