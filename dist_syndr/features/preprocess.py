"""Image preprocessing shared by every model input: ImageNet normalisation and centre crops.

One copy of the ImageNet statistics serves the DALI pipeline, the torch loader
and the DDCUp reference embeddings. :func:`normalise` matches DALI's
``crop_mirror_normalize`` to within one ulp (it multiplies by the float32
reciprocal of std, as DALI does).

Shapes: crops ``(C, C, 3)`` uint8 HWC in, ``(3, C, C)`` float32 CHW out.
"""

from __future__ import annotations

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The same statistics on the 0-255 pixel scale (what DALI and the loaders take).
IMAGENET_MEAN_255 = tuple(value * 255 for value in IMAGENET_MEAN)
IMAGENET_STD_255 = tuple(value * 255 for value in IMAGENET_STD)


def normalise(crop_hwc: np.ndarray) -> np.ndarray:
    """``(3, C, C)`` float32: ``(pixel - mean) / std`` with ImageNet statistics, as DALI's crop_mirror_normalize."""
    mean = np.asarray(IMAGENET_MEAN_255, dtype=np.float32)
    # DALI multiplies by a float32 reciprocal of std; doing the same keeps the paths within 1 ulp.
    inverse_std = np.float32(1.0) / np.asarray(IMAGENET_STD_255, dtype=np.float32)
    return np.ascontiguousarray(((crop_hwc.astype(np.float32) - mean) * inverse_std).transpose(2, 0, 1))


def normalise_batch(crops_bhwc: np.ndarray) -> np.ndarray:
    """``(B, 3, C, C)`` float32 of ``(B, C, C, 3)`` uint8 crops, element for element as :func:`normalise`."""
    mean = np.asarray(IMAGENET_MEAN_255, dtype=np.float32)
    inverse_std = np.float32(1.0) / np.asarray(IMAGENET_STD_255, dtype=np.float32)
    return np.ascontiguousarray(((crops_bhwc.astype(np.float32) - mean) * inverse_std).transpose(0, 3, 1, 2))


def resize_to_fit(pixels: np.ndarray, crop: int) -> tuple[np.ndarray, bool]:
    """``(pixels, was_resized)``: an image with a side below ``crop`` resized up (bicubic, aspect kept) until its
    shorter side is ``crop``; others unchanged."""
    height, width = pixels.shape[:2]
    if min(height, width) >= crop:
        return pixels, False
    from PIL import Image

    scale = crop / min(height, width)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    return np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC)), True


def centre_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """A ``crop x crop`` centre crop; an image with a side below ``crop`` is resized up first."""
    pixels, _ = resize_to_fit(pixels, crop)
    height, width = pixels.shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    return pixels[top : top + crop, left : left + crop]
