"""The embedded default pool: real photographs that ship inside installed packages.

scikit-image, scikit-learn and matplotlib bundle a few photographs that load
offline. They are split by content into training contents (distorted by our
engine at 5 levels, weakly labelled), DDCUp candidate contents, and held-out
test contents whose images carry random compositions of 2-4 distortions (a
shift towards "authentic" mixed degradations), labelled the same way.
**The labels are full-reference metric estimates, not human opinion scores.**

Shapes: photographs ``(H, W, 3)`` uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dist_syndr.sharding import WorkItem, item_seed

TRAIN_CONTENTS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins", "brick", "moon")
CANDIDATE_CONTENTS = ("hubble_deep_field", "retina", "immunohistochemistry", "gravel", "grass", "cell")
TEST_CONTENTS = ("china", "flower", "grace_hopper", "motorcycle", "clock")


def load_photo(name: str) -> np.ndarray:
    """One bundled photograph as RGB uint8 (grayscale ones repeated over 3 channels)."""
    if name in ("china", "flower"):
        from sklearn.datasets import load_sample_image

        pixels = load_sample_image(f"{name}.jpg")
    elif name == "grace_hopper":
        from matplotlib import cbook
        from PIL import Image

        with cbook.get_sample_data("grace_hopper.jpg") as handle:
            pixels = np.asarray(Image.open(handle).convert("RGB"))
    else:
        import skimage.data

        if name == "motorcycle":
            pixels = skimage.data.stereo_motorcycle()[0]
        elif hasattr(skimage.data, name):
            pixels = getattr(skimage.data, name)()
        else:
            raise ValueError(f"unknown embedded photograph {name!r}")
    pixels = np.asarray(pixels)
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[:, :, None], 3, axis=2)
    return np.ascontiguousarray(pixels[:, :, :3].astype(np.uint8))


def write_pristine(folder: Path, names: tuple[str, ...], size: int) -> list[Path]:
    """Centre square crops of ``names`` resized to ``size`` px, as PNGs in ``folder`` (kept when present)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in names:
        path = folder / f"{name}.png"
        if not path.is_file():
            pixels = load_photo(name)
            side = min(pixels.shape[:2])
            top, left = (pixels.shape[0] - side) // 2, (pixels.shape[1] - side) // 2
            square = Image.fromarray(pixels[top : top + side, left : left + side])
            temporary = path.with_name(f".{path.name}.tmp")
            square.resize((size, size), Image.BICUBIC).save(temporary, format="PNG")
            temporary.replace(path)
        paths.append(path)
    return paths


def composite_items(references: list[Path], types: tuple[int, ...], *, per_content: int, seed: int, source: str = "test") -> list[WorkItem]:
    """``per_content`` images per reference, each with 2-4 distinct random types at random levels, weakly labelled."""
    rng = np.random.default_rng(seed)
    items = []
    for reference in references:
        for index in range(per_content):
            count = int(rng.integers(2, min(4, len(types)) + 1))
            chain = [[int(t), int(rng.integers(1, 6))] for t in rng.choice(types, size=count, replace=False)]
            key = f"{source}/{reference.stem}_mix{index:02d}"
            meta = {"ref": f"{source}/{reference.stem}", "type": None, "level": None, "chain": chain, "origin": "composite", "source": source}
            items.append(WorkItem(key=key, ref_path=str(reference), is_engine=True, seed=item_seed(seed, key), wants_weak_label=True, meta=meta))
    return items
