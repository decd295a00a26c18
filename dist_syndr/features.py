"""Batched image embeddings with a timm backbone, split across ranks.

The backbone's pooled pre-head features (``num_classes=0``) of a centre crop
of every image. Weights come from a local file only; there is no download at
run time, and random weights need ``is_random_init: true``. On a GPU the
forward pass runs in bf16 autocast. Each rank embeds a contiguous slice of the
images and the slices are gathered on every rank.

Shapes: ``N`` images, ``D`` feature dimension, crops ``(B, 3, C, C)``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import runtime
from dist_syndr.config import FeaturesConfig
from dist_syndr.pools import images

log = logging.getLogger(__name__)

RANDOM_INIT_SEED = 0
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


def build_backbone(config: FeaturesConfig, **timm_options):
    """A timm model returning pooled features, with weights from ``config.weights``."""
    import timm

    if not config.weights and not config.is_random_init:
        raise ValueError(
            "features.weights: no pretrained weights file given; set it to a local .safetensors/.pth file "
            "(weights are never downloaded) or set features.is_random_init=true to use random weights"
        )
    import torch

    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights are the same in every process and every rerun
            model = timm.create_model(config.backbone, pretrained=False, num_classes=0, **timm_options)
    except RuntimeError as error:  # timm raises RuntimeError for unknown model names
        raise ValueError(f"features.backbone: {error}") from None
    if config.weights:
        _load_weights(model, Path(config.weights))
    return model.eval()


def _load_weights(model, path: Path) -> None:
    import torch

    if not path.is_file():
        raise ValueError(f"features.weights: {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = [k for k in unexpected if k.startswith(("fc.", "head.", "classifier."))]
    if missing or len(unexpected) != len(head):
        raise ValueError(
            f"features.weights: {path} does not fit {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {[k for k in unexpected if k not in head][:3]}"
        )


def centre_crop(pixels: np.ndarray, crop: int) -> np.ndarray:
    """A ``crop x crop`` centre crop; an image with a side below ``crop`` is resized up first."""
    height, width = pixels.shape[:2]
    if min(height, width) < crop:
        from PIL import Image

        scale = crop / min(height, width)
        size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
        pixels = np.asarray(Image.fromarray(pixels).resize(size, Image.BICUBIC))
        height, width = pixels.shape[:2]
    top, left = (height - crop) // 2, (width - crop) // 2
    return pixels[top : top + crop, left : left + crop]


def embed_paths(paths: list[Path], config: FeaturesConfig, model=None) -> np.ndarray:
    """``(N, D)`` float32 features of the images at ``paths``, computed across ranks."""
    import torch

    rank, world_size = runtime.rank_world()
    bounds = np.linspace(0, len(paths), world_size + 1).astype(int)
    mine = paths[bounds[rank] : bounds[rank + 1]]
    model = model if model is not None else build_backbone(config)
    device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
    model = model.to(device)
    parts = []
    batches = range(0, len(mine), config.batch_size)
    for start in tqdm(batches, desc="features", unit="batch", disable=len(batches) < 4):
        batch = mine[start : start + config.batch_size]
        crops = np.stack([centre_crop(images.decode(images.read_bytes(p), str(p)), config.crop) for p in batch])
        normalised = (crops.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        tensor = torch.from_numpy(normalised).permute(0, 3, 1, 2).contiguous().to(device)
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            parts.append(model(tensor).float().cpu().numpy())
    dim = int(model.num_features)
    local = np.concatenate(parts) if parts else np.empty((0, dim), dtype=np.float32)
    return np.concatenate(runtime.all_gather_array(local.astype(np.float32)))


def save_features(path: Path, keys: list[str], features: np.ndarray) -> None:
    """Write ``keys`` and ``features`` to one ``.npz`` atomically."""
    if len(keys) != features.shape[0]:
        raise ValueError(f"{len(keys)} keys for {features.shape[0]} feature rows")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.tmp-{os.getpid()}.npz")
    np.savez(temporary, keys=np.array(keys), features=features.astype(np.float32))
    temporary.replace(path)


def load_features(path: Path) -> tuple[list[str], np.ndarray]:
    """The ``(keys, features)`` written by :func:`save_features`."""
    if not path.is_file():
        raise ValueError(f"{path}: feature file not found")
    with np.load(path, allow_pickle=False) as data:
        return data["keys"].tolist(), data["features"]


def load_named_features(features_path: str, names_path: str) -> tuple[list[str], np.ndarray]:
    """Precomputed ``(N, D)`` features (.npy) with one name per line in a text file."""
    features_file, names_file = Path(features_path), Path(names_path)
    for path in (features_file, names_file):
        if not path.is_file():
            raise ValueError(f"{path}: precomputed feature file not found")
    features = np.load(features_file, allow_pickle=False)
    names = names_file.read_text().split()
    if features.ndim != 2 or features.shape[0] != len(names):
        raise ValueError(f"{features_file}: shape {features.shape} does not match the {len(names)} names in {names_file}")
    return names, features.astype(np.float32)
