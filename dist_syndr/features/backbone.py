"""timm backbones that return pooled features, with weights from a local file only.

The backbone's pooled pre-head features (``num_classes=0``). There is no
download at run time; random weights need ``is_random_init: true`` and are the
same in every process (a fixed seed).

Shapes: crops ``(B, 3, C, C)`` in, features ``(B, D)`` out.
"""

from __future__ import annotations

from pathlib import Path

from dist_syndr.config import FeaturesConfig

RANDOM_INIT_SEED = 0


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
