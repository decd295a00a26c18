"""Worker for the 2-process engine test: ``python -m tests.engine_worker OUT_DIR``.

Trains the same tiny model for three steps under DeepSpeed ZeRO-0 on gloo twice:
through :func:`dist_syndr.train.deepspeed_engine.initialize` (torch DDP's overlapped reducer) and
through plain ``deepspeed.initialize`` (DeepSpeed's own all-reduce after the
backward pass); then checkpoints the first and loads it into a fresh plain
deepspeed_engine. Rank 0 writes ``OUT_DIR/result.json``.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from dist_syndr import collectives, runtime
from dist_syndr.config import RuntimeConfig, load
from dist_syndr.features.model import IQAModel
from dist_syndr.train import deepspeed_engine
from tests.ds_checkpoint_worker import tiny_model


def _train(model_engine, rank: int) -> None:
    generator = torch.Generator().manual_seed(100 + rank)  # different data on each rank
    for _ in range(3):
        images = torch.randn(2, 3, 32, 32, generator=generator)
        loss = deepspeed_engine.l1_loss(model_engine(images).float(), torch.tensor([1.0, 2.0]))
        model_engine.backward(loss)
        model_engine.step()


def _weights(model_engine) -> dict[str, torch.Tensor]:
    return {
        name: tensor.detach().clone()
        for name, tensor in deepspeed_engine.bare_module(model_engine).state_dict().items()
    }


def main(out_dir: str) -> None:
    import deepspeed

    out = Path(out_dir)
    backends = runtime.init(RuntimeConfig(device="cpu", faiss="cpu"), timeout_s=120)
    rank, world_size = backends.rank, backends.world_size
    cfg = load(None, ["train.zero_stage=0", "train.precision=fp32", "data.batch_size=2", "train.learning_rate=1.0e-3"])
    model = tiny_model(0)
    model.backbone.patch_embed.proj.bias.requires_grad_(True)  # DDP needs every parameter in the graph

    overlapped, ds_config = deepspeed_engine.initialize(
        copy.deepcopy(model), cfg.train, cfg.data, world_size=world_size, device="cpu"
    )
    plain_model = copy.deepcopy(model)
    plain, *_ = deepspeed.initialize(
        model=plain_model, optimizer=deepspeed_engine.build_optimizer(plain_model, cfg.train), config=ds_config
    )
    _train(overlapped, rank)
    _train(plain, rank)
    trained = _weights(overlapped)
    gap = max(float((trained[name] - tensor).abs().max()) for name, tensor in _weights(plain).items())
    on_ranks = collectives.all_gather_objects({name: float(tensor.double().sum()) for name, tensor in trained.items()})

    overlapped.save_checkpoint(str(out / "checkpoints"), tag="step3")
    collectives.barrier()
    fresh_model = copy.deepcopy(model)
    fresh, *_ = deepspeed.initialize(
        model=fresh_model, optimizer=deepspeed_engine.build_optimizer(fresh_model, cfg.train), config=ds_config
    )
    fresh.load_checkpoint(str(out / "checkpoints"), tag="step3")
    is_loaded_equal = all(torch.equal(tensor, trained[name]) for name, tensor in _weights(fresh).items())
    if rank == 0:
        saved = torch.load(
            out / "checkpoints" / "step3" / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False
        )["module"]
        result = {
            "is_wrapped": deepspeed_engine.is_reducer_overlapped(cfg.train, world_size=world_size, device="cpu")
            and not isinstance(overlapped.module, IQAModel),
            "is_bare_model": isinstance(deepspeed_engine.bare_module(overlapped), IQAModel),
            "max_gap_to_deepspeed_reduction": gap,
            "is_same_on_ranks": on_ranks[0] == on_ranks[1],
            "checkpoint_keys": list(saved),
            "model_keys": list(model.state_dict()),
            "is_loaded_equal": is_loaded_equal,
            "has_trained": any(not torch.equal(tensor, model.state_dict()[name]) for name, tensor in trained.items()),
        }
        (out / "result.json").write_text(json.dumps(result))
    runtime.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
