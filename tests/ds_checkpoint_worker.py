"""Worker for the export tests: ``python -m tests.ds_checkpoint_worker OUT_DIR RUN [RUN ...]``.

Each RUN is a ZeRO stage, optionally with a precision (``0``, ``3``,
``0-bf16``: our bf16 autocast over fp32 weights, ``0-dsbf16``: DeepSpeed's own
16-bit weights, as checkpoints written by other tools carry them); all run one
after another in this one process. Each trains a tiny
ViT (one parameter frozen, two extra buffers that change every step) under
DeepSpeed on the CPU for two optimizer steps, saves a checkpoint under
``OUT_DIR/<RUN>/`` and writes beside it ``<RUN>-true.pt`` (the module's full
weights, gathered from the partitions under stage 3) and ``<RUN>-init.pt``
(the weights before training).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from dist_syndr import config
from dist_syndr.config import ModelConfig
from dist_syndr.features.model import build_model
from dist_syndr.train import deepspeed_engine


def tiny_model(seed: int):
    torch.manual_seed(seed)
    model = build_model(ModelConfig(backbone="vit_tiny_patch16_224", is_random_init=True, image_size=32))
    model.backbone.patch_embed.proj.bias.requires_grad_(False)  # a frozen parameter
    model.head.register_buffer("calibration", torch.zeros(3))  # a float buffer that training changes
    model.head.register_buffer("num_updates", torch.tensor(0, dtype=torch.int64))
    return model


def run_stage(out_dir: Path, run: str) -> None:
    import deepspeed

    stage, _, precision = run.partition("-")
    stage = int(stage)
    cfg = config.load(
        None,
        [
            f"train.zero_stage={stage}",
            f"train.precision={'bf16' if precision in ('bf16', 'dsbf16') else 'fp32'}",
            "data.batch_size=2",
            "train.learning_rate=1.0e-3",
        ],
    )
    model = tiny_model(stage)
    torch.save({name: tensor.clone() for name, tensor in model.state_dict().items()}, out_dir / f"{run}-init.pt")
    ds_config = deepspeed_engine.deepspeed_config(cfg.train, cfg.data, world_size=1, device="cpu")
    if precision == "dsbf16":  # DeepSpeed's bf16 mode: 16-bit module weights, fp32 masters in the optimizer
        ds_config |= {"bf16": {"enabled": True}, "torch_autocast": {"enabled": False}}
    model_engine, *_ = deepspeed.initialize(
        model=model, optimizer=deepspeed_engine.build_optimizer(model, cfg.train), config=ds_config
    )
    generator = torch.Generator().manual_seed(stage)
    for _ in range(2):
        images = torch.randn(2, 3, 32, 32, generator=generator).to(model_engine.module.head.weight.dtype)
        loss = deepspeed_engine.l1_loss(model_engine(images).float(), torch.tensor([1.0, 2.0]))
        model_engine.backward(loss)
        model_engine.step()
        model_engine.module.head.calibration.add_(0.25)
        model_engine.module.head.num_updates.add_(1)
    model_engine.save_checkpoint(str(out_dir / run), tag="epoch0000", client_state={"epoch": 0})
    module = model_engine.module
    if stage == 3:
        with deepspeed.zero.GatheredParameters(list(module.parameters()), modifier_rank=None):
            true_state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    else:
        true_state = {name: tensor.detach().clone() for name, tensor in module.state_dict().items()}
    torch.save(true_state, out_dir / f"{run}-true.pt")


def main(out_dir: str, runs: list[str]) -> None:
    for run in runs:
        run_stage(Path(out_dir), run)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
