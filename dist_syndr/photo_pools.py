"""Small shard sets of real photographs that ship with scikit-image, for the demo and smoke runs.

Photographs are cropped, written as pristine PNGs, distorted by our engine and
labelled with weak full-reference labels (not human scores) through the normal
sharding step, so a rerun reuses the finished shards.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_syndr import config as config_module
from dist_syndr import sharding
from dist_syndr.shard_plan import build_plan
from dist_syndr.shardset import INDEX_NAME, ShardSet


def photo_shard_set(
    out_dir: Path, photos: tuple[str, ...], types: tuple[int, ...], *, size: int = 256, seed: int = 0, num_workers: int = 2
) -> ShardSet:
    """The shard set ``out_dir``: ``photos`` x ``types`` x 5 levels, built once and reused.

    The pristine crops go to ``<out_dir parent>/.pristine/<out_dir name>``.
    """
    from PIL import Image

    if (out_dir / INDEX_NAME).is_file():
        return ShardSet(out_dir)
    pristine = out_dir.parent / ".pristine" / out_dir.name
    pristine.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for photo, crop in zip(photos, photo_crops_for(photos, rng, size)):
        if not (pristine / f"{photo}.png").is_file():
            Image.fromarray(crop).save(pristine / f"{photo}.png")
    overrides = [
        f"seed={seed}", "shard.pool.kind=folder", f"shard.pool.root={pristine}", "shard.pool.distort=true",
        "shard.pool.labels=weak", f"shard.pool.types={list(types)}", "shard.samples_per_shard=25",
    ]
    cfg = config_module.load(None, overrides)
    options = sharding.WriteOptions(samples_per_shard=25, num_workers=num_workers)
    sharding.write_shard_set(build_plan(cfg).items, out_dir, options, {"photos": list(photos), "types": list(types), "size": size})
    return ShardSet(out_dir)


def photo_crops_for(photos: tuple[str, ...], rng, size: int) -> list[np.ndarray]:
    """One ``size`` x ``size`` crop of each named scikit-image photograph."""
    import skimage.data
    from PIL import Image

    out = []
    for photo in photos:
        image = Image.fromarray(getattr(skimage.data, photo)())
        scale = max(size / image.width, size / image.height, 1.0)
        image = np.asarray(image.resize((round(image.width * scale), round(image.height * scale)), Image.BICUBIC))
        top = int(rng.integers(0, image.shape[0] - size + 1))
        left = int(rng.integers(0, image.shape[1] - size + 1))
        out.append(np.ascontiguousarray(image[top : top + size, left : left + size]))
    return out
