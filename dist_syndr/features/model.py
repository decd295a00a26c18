"""The BIQA regression model: a timm backbone's pooled features and a linear head to one score.

``IQAModel.forward`` returns scores ``(B,)``; ``IQAModel.features`` returns the
pooled pre-head features ``(B, D)`` that DRCDown clusters. Backbone weights come
from :mod:`dist_syndr.features.weights`; random weights need ``is_random_init``.

Every input pipeline (DALI, the torch loader, the scorer, exports) delivers
ImageNet-normalised crops. A backbone whose weights expect other statistics
(ViTs trained with mean = std = 0.5, CLIP-style models) gets an
:class:`InputAdapter` in front: a fixed per-channel affine map from ImageNet's
statistics to its own, exact and inside the model (exports carry it), with no
state-dict entries; the run's config records the statistics, so a checkpoint
always gets the adapter it was trained with.

Shapes: ``B`` images, ``D`` backbone feature dimension, crops ``(B, 3, S, S)``.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from dist_syndr.config import FeaturesConfig, ModelConfig
from dist_syndr.features import weights as weight_sources
from dist_syndr.features.backbone import build_backbone, input_statistics
from dist_syndr.features.preprocess import IMAGENET_MEAN, IMAGENET_STD


class InputAdapter(nn.Module):
    """ImageNet-normalised crops -> crops normalised with ``mean``/``std`` (on [0, 1] pixels), per channel."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        source_mean, source_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        target_mean, target_std = torch.tensor(mean), torch.tensor(std)
        # x = (p - m_in) / s_in  ->  (p - m) / s = x * (s_in / s) + (m_in - m) / s
        self.register_buffer("scale", (source_std / target_std).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((source_mean - target_mean) / target_std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images * self.scale.to(images.dtype) + self.shift.to(images.dtype)


def input_adapter(mean: tuple[float, ...], std: tuple[float, ...]) -> InputAdapter | None:
    """The adapter for a backbone expecting ``mean``/``std`` (None for ImageNet's own statistics)."""
    if tuple(mean) == tuple(IMAGENET_MEAN) and tuple(std) == tuple(IMAGENET_STD):
        return None
    return InputAdapter(mean, std)


class IQAModel(nn.Module):
    """A backbone without its classifier plus ``nn.Linear(D, 1)``, behind its input adapter (if any)."""

    def __init__(self, backbone: nn.Module, adapter: InputAdapter | None = None):
        super().__init__()
        self.input_adapter = adapter
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, D)``."""
        return self.backbone(self.input_adapter(images) if self.input_adapter is not None else images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images)).squeeze(-1)

    def parameter_groups(self, learning_rate: float, head_multiplier: float = 10.0) -> list[dict]:
        """Optimizer groups: backbone at ``learning_rate``, head at ``head_multiplier`` times it
        (docs/METHOD.md section 5).
        """
        return [
            {"params": list(self.backbone.parameters()), "lr": learning_rate, "name": "backbone"},
            {"params": list(self.head.parameters()), "lr": learning_rate * head_multiplier, "name": "head"},
        ]


def build_model(config: ModelConfig) -> IQAModel:
    """The model of ``config`` with its backbone weights (:mod:`dist_syndr.features.weights`) and the input adapter
    its statistics ask for."""
    features = FeaturesConfig(
        backbone=config.backbone,
        weights=config.weights,
        weights_sha256=config.weights_sha256,
        is_random_init=config.is_random_init,
    )
    backbone = build_backbone(features, image_size=config.image_size, key="model")
    adapter = input_adapter(*input_statistics(config.backbone, config.weights, config.mean, config.std))
    if config.is_grad_checkpointing:
        if not hasattr(backbone, "set_grad_checkpointing"):
            raise ValueError(f"model.is_grad_checkpointing: {config.backbone} does not support gradient checkpointing")
        backbone.set_grad_checkpointing(True)
    return IQAModel(backbone.train(), adapter)


def build_feature_extractor(config: FeaturesConfig) -> nn.Module:
    """DDCUp's reference embedder: the backbone of ``config`` behind its input adapter, with ``num_features``."""
    backbone = build_backbone(config, key="shard.features")
    adapter = input_adapter(*input_statistics(config.backbone, config.weights, [], []))
    if adapter is None:
        return backbone
    extractor = nn.Sequential(adapter, backbone)
    extractor.num_features = backbone.num_features
    return extractor.eval()


def resolved_config(config: ModelConfig) -> ModelConfig:
    """``config`` with what its weights resolve to filled in (source, sha256, input statistics): what a run
    records, so that the same model is rebuilt from its config alone."""
    found = weight_sources.resolve(config.backbone, config.weights, key="model.weights")
    mean, std = input_statistics(config.backbone, config.weights, config.mean, config.std)
    return dataclasses.replace(
        config,
        weights_source=found.source if found is not None else "",
        weights_sha256=found.sha256 if found is not None else config.weights_sha256,
        mean=list(mean),
        std=list(std),
    )
