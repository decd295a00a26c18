"""The one forward pass that turns images into rows: reference embeddings for DDCUp, sample features
for DRCDown, predictions for evaluation.

:func:`forward_rows` runs a module (or one of its methods) on a batch in eval
mode without gradients, with the inputs cast to the module's own dtype (a bf16
engine's module wants bf16 inputs), and returns float32 rows. :func:`gather_rows`
joins each rank's rows in rank order. :func:`embed_paths` embeds image files
with a timm backbone (DDCUp's reference contents) in fp32 without TF32
(:func:`dist_syndr.runtime.exact_fp32_math`, so the rows do not depend on the GPU),
decoded upright through :mod:`dist_syndr.imaging` (refused above ``max_pixels``
before decoding): each rank embeds a contiguous slice of the paths and every rank
receives all rows.
``dist_syndr.evaluate.predict`` drives the same two functions over shard sets
through the loader.

Shapes: ``N`` images, ``D`` feature dimension, crops ``(B, 3, C, C)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import collectives, imaging, runtime
from dist_syndr.config import DEFAULT_MAX_PIXELS, FeaturesConfig
from dist_syndr.features.precision import Precision, autocast
from dist_syndr.features.preprocess import centre_crop, normalise

if TYPE_CHECKING:  # torch is imported lazily: importing this module stays light
    import torch


def input_dtype(module) -> torch.dtype:
    """The dtype of the module's first floating parameter (float32 for a module without any)."""
    import torch

    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


@contextlib.contextmanager
def evaluating(module) -> Iterator[None]:
    """Eval mode and no gradients inside; the module's training flag is restored after."""
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        module.train(was_training)


def forward_rows(forward: Callable, images_batch, *, device, dtype, precision: Precision = "fp32") -> torch.Tensor:
    """``forward(images)`` with the images moved to ``device`` as ``dtype``, under the ``precision``
    policy (:mod:`dist_syndr.features.precision`); float32 rows."""
    with autocast(device, precision):
        return forward(images_batch.to(device=device, dtype=dtype, non_blocking=True)).float()


def gather_rows(parts: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    """This rank's rows joined, then every rank's in rank order (the local rows without a process group)."""
    local = np.concatenate(parts) if parts else np.zeros(empty_shape, np.float32)
    return np.concatenate(collectives.all_gather_array(local))


def embed_paths(
    paths: list[Path], config: FeaturesConfig, model=None, *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """``(N, D)`` float32 features of the centre crops of the images at ``paths``, computed across ranks;
    an unreadable image or one declaring more than ``max_pixels`` pixels is an ImageError naming its file."""
    import torch

    rank, world_size = runtime.rank_world()
    bounds = np.linspace(0, len(paths), world_size + 1).astype(int)
    mine = paths[bounds[rank] : bounds[rank + 1]]
    from dist_syndr.features.model import build_feature_extractor

    model = model if model is not None else build_feature_extractor(config)
    device = runtime.torch_device()
    model = model.to(device)
    dtype = input_dtype(model)
    parts = []
    batches = range(0, len(mine), config.batch_size)
    with evaluating(model), runtime.exact_fp32_math():
        for start in tqdm(batches, desc="features", unit="batch", disable=len(batches) < 4):
            batch = mine[start : start + config.batch_size]
            pixels = [imaging.decode_file(path, max_pixels=max_pixels, name=str(path)) for path in batch]
            crops = [centre_crop(image, config.crop) for image in pixels]
            tensor = torch.from_numpy(np.stack([normalise(crop) for crop in crops]))
            parts.append(forward_rows(model, tensor, device=device, dtype=dtype).cpu().numpy())
    return gather_rows(parts, (0, int(model.num_features)))


def load_named_features(features_path: str, names_path: str) -> tuple[list[str], np.ndarray]:
    """Precomputed ``(N, D)`` features (.npy) with one name per line in a text file."""
    features_file, names_file = Path(features_path), Path(names_path)
    for path in (features_file, names_file):
        if not path.is_file():
            raise ValueError(f"{path}: precomputed feature file not found")
    features = np.load(features_file, allow_pickle=False)
    names = names_file.read_text().split()
    if features.ndim != 2 or features.shape[0] != len(names):
        raise ValueError(
            f"{features_file}: shape {features.shape} does not match the {len(names)} names in {names_file}"
        )
    return names, features.astype(np.float32)
