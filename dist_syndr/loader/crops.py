"""Crop geometry shared by the DALI and torch paths: which anchors each sample's crops get.

Both loaders must cut the same pixels, so neither uses its own random
generator. A crop's top-left anchor is an absolute integer pair
(:mod:`dist_syndr.imaging.digest`) computed from the image size, which
:class:`~dist_syndr.loader.members.MemberReader` reads from the PNG/JPEG header
before decoding (cheap; it checks the signature and the pixel cap). DALI then
receives the anchors (``fn.decoders.image_slice`` / ``fn.slice`` with
``normalized_anchor=False``) and the torch path slices the same rows and
columns, so the two paths cannot disagree by a pixel, and an image too small for
the crop is caught before decoding.

Training crops are drawn from ``(seed, epoch, key, crop index)``: per-epoch
augmentation. Evaluation crops are drawn from ``(seed, pixel digest, crop
index)``: a function of the image's upright pixels, which the index records per
sample, so ``evaluate.py`` and ``score.py`` cut the same windows of one image
whatever it is called (sets written before pixel digests use the image member's
xxh3-64 instead; :mod:`dist_syndr.loader.members`).

Images smaller than the crop are refused (no resize, no padding: docs/METHOD.md
section 5 forbids changing the image's quality, and padding would feed the
model borders it never sees at test time).

Shapes: anchors ``(n, 2)`` int32 as ``[x, y]``; crops ``(C, C, 3)`` uint8 HWC or
``(3, C, C)`` float32 CHW after normalisation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dist_syndr.config import DataConfig
from dist_syndr.imaging.digest import CROP_MODES, cut, evaluation_anchors, hashed_anchors

__all__ = ["CROP_MODES", "CropSpec", "crop_anchors", "cut"]


@dataclass(frozen=True)
class CropSpec:
    """How many crops of which side each image gives, and how their anchors are chosen."""

    size: int
    num_crops: int
    mode: str  # random | centre
    is_keyed_by_content: bool = False  # evaluation: anchors from the pixel digest, not the key and epoch

    @staticmethod
    def from_config(config: DataConfig, *, is_training: bool) -> CropSpec:
        """Training: one random crop keyed by sample and epoch. Evaluation: ``eval_crops`` random crops keyed by
        the image's pixel digest, or one centre crop (``n`` identical centre crops would average to the same
        prediction)."""
        if is_training:
            return CropSpec(config.crop, 1, "random")
        if config.eval_crop_mode == "centre":
            return CropSpec(config.crop, 1, "centre", is_keyed_by_content=True)
        return CropSpec(config.crop, config.eval_crops, "random", is_keyed_by_content=True)

    def anchors(self, key: str, digest: int, width: int, height: int, *, seed: int, epoch: int) -> np.ndarray:
        """``(num_crops, 2)`` int32 anchors of sample ``key`` whose pixel digest is ``digest``."""
        if self.is_keyed_by_content:
            options = {"seed": seed, "num_crops": self.num_crops, "mode": self.mode}
            return evaluation_anchors(digest, width, height, self.size, **options)
        return crop_anchors(
            key, width, height, self.size, seed=seed, epoch=epoch, num_crops=self.num_crops, mode=self.mode
        )


def crop_anchors(
    key: str, width: int, height: int, crop: int, *, seed: int, epoch: int, num_crops: int, mode: str
) -> np.ndarray:
    """``(num_crops, 2)`` int32 top-left ``[x, y]`` of the training crops of sample ``key`` in ``epoch``, drawn from
    ``(seed, epoch, key, crop index)``; ValueError if the image is smaller than ``crop``."""
    return hashed_anchors(f"{seed}:{epoch}:{key}", width, height, crop, num_crops=num_crops, mode=mode)
