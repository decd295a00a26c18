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
    for photo, crop in zip(photos, photo_crops(rng, len(photos), size, size, photos)):
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


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "immunohistochemistry")
"""Colour photographs bundled with scikit-image (no download)."""


def photo_crops(
    rng: np.random.Generator, count: int, width: int, height: int, photos: tuple[str, ...] = PHOTOS
) -> list[np.ndarray]:
    """``count`` random ``width x height`` crops (some flipped), cycling through ``photos``."""
    import skimage.data
    from PIL import Image

    sources = []
    for name in photos:
        photo = Image.fromarray(getattr(skimage.data, name)())
        scale = max(width / photo.width, height / photo.height, 1.0)
        sources.append(np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC)))
    crops = []
    for i in range(count):
        photo = sources[i % len(sources)]
        top = int(rng.integers(0, photo.shape[0] - height + 1))
        left = int(rng.integers(0, photo.shape[1] - width + 1))
        crop = photo[top : top + height, left : left + width]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops
