"""The regression model: backbones, local weights, features for DRCDown, parameter groups."""

from __future__ import annotations

import pytest
import torch

from dist_syndr.config import ModelConfig
from dist_syndr.features.model import build_model


@pytest.mark.parametrize("backbone, dim", [("resnet18", 512), ("vit_tiny_patch16_224", 192)])
def test_scores_and_features(backbone, dim):
    model = build_model(
        ModelConfig(
            backbone=backbone, is_random_init=True, image_size=32, is_grad_checkpointing=backbone.startswith("vit")
        )
    )
    images = torch.rand(3, 3, 32, 32)
    scores = model(images)
    assert scores.shape == (3,)
    assert model.features(images).shape == (3, dim)
    scores.sum().backward()
    assert model.head.weight.grad is not None


def test_parameter_groups_put_the_head_at_ten_times():
    model = build_model(ModelConfig(backbone="resnet18", is_random_init=True))
    backbone, head = model.parameter_groups(2e-5)
    assert backbone["lr"] == 2e-5 and head["lr"] == pytest.approx(2e-4)
    assert len(head["params"]) == 2
    count = sum(p.numel() for p in model.parameters())
    assert count == sum(p.numel() for group in (backbone, head) for p in group["params"])


def test_weights_are_required_unless_random_init_is_asked_for():
    with pytest.raises(ValueError, match="is_random_init"):
        build_model(ModelConfig(backbone="resnet18"))
    with pytest.raises(ValueError, match="model.backbone: 'alexnet' is not a timm model"):
        build_model(ModelConfig(backbone="alexnet", is_random_init=True))
