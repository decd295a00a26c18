"""timm backbones that return pooled features, with weights resolved by :mod:`dist_syndr.features.weights`.

Any timm model name works, with or without a pretrained tag; the pooled feature
size (``num_features``), whether the model takes an input size (its
``pretrained_cfg``'s ``fixed_input_size``, as ViTs) and its input statistics come
from the model itself. Random weights need ``is_random_init: true`` and are the
same in every process (a fixed seed). Hub weights load through timm's own
pretrained loader (its checkpoint filters resample ViT position embeddings to
the input size); a local file loads as a state dict without the classifier.

Shapes: crops ``(B, 3, C, C)`` in, features ``(B, D)`` out.
"""

from __future__ import annotations

from pathlib import Path

from dist_syndr.config import FeaturesConfig
from dist_syndr.features import weights as weight_sources
from dist_syndr.features.preprocess import IMAGENET_MEAN, IMAGENET_STD

RANDOM_INIT_SEED = 0


def build_backbone(config: FeaturesConfig, *, image_size: int | None = None, key: str = "features"):
    """A timm model returning pooled features, with the weights ``config.weights`` names (``key``: the config
    section named in errors)."""
    import timm
    import torch

    weight_sources.check_backbone(config.backbone, f"{key}.backbone")
    resolved = weight_sources.resolve(config.backbone, config.weights, key=f"{key}.weights")
    if resolved is None and not config.is_random_init:
        raise ValueError(
            f"{key}.weights: no pretrained weights given; set a local .safetensors/.pth file, 'timm' or "
            f"'hf-hub:<org>/<repo>', or set {key}.is_random_init=true to use random weights"
        )
    if resolved is not None and config.weights_sha256 and resolved.sha256 != config.weights_sha256:
        raise ValueError(
            f"{key}.weights_sha256: {resolved.source} has sha256 {resolved.sha256}, "
            f"not the pinned {config.weights_sha256}"
        )
    options = {"num_classes": 0, **input_size_options(config.backbone, image_size)}
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)  # random weights are the same in every process and every rerun
            if resolved is not None and resolved.is_hub:
                overlay = {"file": str(resolved.path)}
                model = timm.create_model(config.backbone, pretrained=True, pretrained_cfg_overlay=overlay, **options)
            else:
                model = timm.create_model(config.backbone, pretrained=False, **options)
    except RuntimeError as error:  # timm raises RuntimeError for unknown names and unfitting weights
        raise ValueError(f"{key}.backbone: {' '.join(str(error).split())[:300]}") from None
    if resolved is not None and not resolved.is_hub:
        _load_weights(model, resolved.path, key)
    return model.eval()


def input_size_options(backbone: str, image_size: int | None) -> dict:
    """``{"img_size": image_size}`` for models built for one input size (their ``fixed_input_size``), else {}."""
    if image_size is None or not weight_sources.pretrained_cfg(backbone).get("fixed_input_size"):
        return {}
    return {"img_size": image_size}


def input_statistics(
    backbone: str, weights: str, mean: list[float], std: list[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` the backbone's weights expect on [0, 1] pixels: ``mean``/``std`` where given, else the
    pretrained config's (of the hub repo for ``hf-hub:`` weights) for pretrained weights, ImageNet's otherwise."""
    if mean and std:
        return tuple(map(float, mean)), tuple(map(float, std))
    return weight_sources.expected_statistics(backbone, weights) or (IMAGENET_MEAN, IMAGENET_STD)


def _load_weights(model, path: Path, key: str) -> None:
    import torch

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
            f"{key}.weights: {path} does not fit {type(model).__name__}: "
            f"missing {missing[:3]}, unexpected {[k for k in unexpected if k not in head][:3]}"
        )
