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

from dist_syndr import files

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
            with files.atomic_path(path) as temporary:
                square.resize((size, size), Image.BICUBIC).save(temporary, format="PNG")
        paths.append(path)
    return paths


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
        sources.append(
            np.asarray(photo.resize((round(photo.width * scale), round(photo.height * scale)), Image.BICUBIC))
        )
    crops = []
    for i in range(count):
        photo = sources[i % len(sources)]
        top = int(rng.integers(0, photo.shape[0] - height + 1))
        left = int(rng.integers(0, photo.shape[1] - width + 1))
        crop = photo[top : top + height, left : left + width]
        crops.append(np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop))
    return crops
