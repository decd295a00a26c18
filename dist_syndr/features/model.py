"""The BIQA regression model: a timm backbone's pooled features and a linear head to one score.

``IQAModel.forward`` returns scores ``(B,)``; ``IQAModel.features`` returns the
pooled pre-head features ``(B, D)`` that DRCDown clusters. Backbone weights come
from a local file (never downloaded); random weights need ``is_random_init``.

Shapes: ``B`` images, ``D`` backbone feature dimension, crops ``(B, 3, S, S)``.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_syndr.config import FeaturesConfig, ModelConfig
from dist_syndr.features.backbone import build_backbone


class IQAModel(nn.Module):
    """A backbone without its classifier plus ``nn.Linear(D, 1)``."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(int(backbone.num_features), 1)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled features ``(B, D)``."""
        return self.backbone(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(images)).squeeze(-1)

    def parameter_groups(self, learning_rate: float, head_multiplier: float = 10.0) -> list[dict]:
        """Optimizer groups: backbone at ``learning_rate``, head at ``head_multiplier`` times it
        (docs/METHOD.md section 5).
        """
        return [
            {"params": list(self.backbone.parameters()), "lr": learning_rate, "name": "backbone"},
            {"params": list(self.head.parameters()), "lr": learning_rate * head_multiplier, "name": "head"},
        ]


def build_model(config: ModelConfig) -> IQAModel:
    """The model of ``config`` with its backbone weights loaded from the local file."""
    options = {"img_size": config.image_size} if config.backbone.startswith("vit_") else {}
    backbone = build_backbone(
        FeaturesConfig(backbone=config.backbone, weights=config.weights, is_random_init=config.is_random_init),
        **options,
    )
    if config.is_grad_checkpointing:
        if not hasattr(backbone, "set_grad_checkpointing"):
            raise ValueError(f"model.is_grad_checkpointing: {config.backbone} does not support gradient checkpointing")
        backbone.set_grad_checkpointing(True)
    return IQAModel(backbone.train())
