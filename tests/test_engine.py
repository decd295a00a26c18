"""DeepSpeed config generation and the optimizer of docs/METHOD.md section 5."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from dist_syndr import config
from dist_syndr.config import ModelConfig
from dist_syndr.features.model import build_model
from dist_syndr.features.precision import resolve
from dist_syndr.train import deepspeed_engine
from tests.conftest import PROJECT_ROOT, TORCH_EXTENSIONS_DIR, free_port, run_ranks


def test_generated_config_follows_our_sections(tmp_path):
    cfg = config.load(
        None,
        [
            "train.zero_stage=3",
            "train.gradient_accumulation_steps=2",
            "train.gradient_clipping=1.0",
            "data.batch_size=8",
            "train.is_optimizer_offloaded=true",
        ],
    )
    generated = deepspeed_engine.deepspeed_config(cfg.train, cfg.data, world_size=4, device="cpu")
    assert generated["train_micro_batch_size_per_gpu"] == 8 and generated["train_batch_size"] == 64
    assert generated["zero_optimization"]["stage"] == 3
    assert generated["zero_optimization"]["stage3_gather_16bit_weights_on_model_save"] is True
    assert generated["zero_optimization"]["offload_optimizer"]["device"] == "cpu"
    assert generated["gradient_clipping"] == 1.0
    assert not generated["bf16"]["enabled"] and not generated["fp16"]["enabled"]  # auto on CPU: fp32
    assert not generated["torch_autocast"]["enabled"]
    on_gpu = deepspeed_engine.deepspeed_config(cfg.train, cfg.data, world_size=1, device="cuda")
    # auto on a GPU: bf16 autocast over fp32 weights, never DeepSpeed's 16-bit weights
    assert on_gpu["torch_autocast"] == {"enabled": True, "dtype": "bf16", "lower_precision_safe_modules": []}
    assert not on_gpu["bf16"]["enabled"]
    path = tmp_path / "run" / "deepspeed.json"
    deepspeed_engine.save_deepspeed_config(generated, path)
    assert path.is_file() and '"stage": 3' in path.read_text()


def test_clipping_is_explicit_and_unread_work_is_skipped():
    cfg = config.load(None, ["train.zero_stage=1"])
    generated = deepspeed_engine.deepspeed_config(cfg.train, cfg.data, world_size=2, device="cpu")
    assert generated["gradient_clipping"] == 0.0  # absent, DeepSpeed would clip at 1.0
    assert generated["zero_optimization"] == {"stage": 1, "contiguous_gradients": False, "compute_grad_norm": False}
    clipped = config.load(None, ["train.zero_stage=2", "train.gradient_clipping=0.5"])
    on_gpu = deepspeed_engine.deepspeed_config(clipped.train, clipped.data, world_size=2, device="cuda")[
        "zero_optimization"
    ]
    assert on_gpu == {"stage": 2}  # contiguous buffers on GPUs; the norm for clipping
    fp16_zero1 = config.load(None, ["train.zero_stage=1", "train.precision=fp16"])
    assert (
        "compute_grad_norm"  # the fp16 loss scaler's overflow check reads it
        not in deepspeed_engine.deepspeed_config(fp16_zero1.train, fp16_zero1.data, world_size=2, device="cuda")[
            "zero_optimization"
        ]
    )


def test_bad_combinations_name_the_key():
    with pytest.raises(ValueError, match="train.is_optimizer_offloaded"):
        config.load(None, ["train.is_optimizer_offloaded=true"])
    with pytest.raises(ValueError, match="train.zero_stage"):
        config.load(None, ["train.zero_stage=4"])
    with pytest.raises(ValueError, match="fp16 needs a CUDA"):
        resolve(config.load(None, ["train.precision=fp16"]).train.precision, "cpu")


def test_optimizer_uses_reference_rates_and_l1():
    model = build_model(ModelConfig(backbone="resnet18", is_random_init=True))
    optimizer = deepspeed_engine.build_optimizer(model, config.load().train)
    rates = {group["name"]: group["lr"] for group in optimizer.param_groups}
    assert rates == {"backbone": 2e-5, "head": pytest.approx(2e-4)}
    assert all(group["weight_decay"] == 5e-4 and group["fused"] for group in optimizer.param_groups)
    assert deepspeed_engine.l1_loss(torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])).item() == pytest.approx(1.5)


OFFLOADED_STEP = """
import torch
from dist_syndr import config
from dist_syndr.train import deepspeed_engine
from dist_syndr.config import ModelConfig
from dist_syndr.features.model import build_model
cfg = config.load(None, ["train.zero_stage=2", "train.is_optimizer_offloaded=true", "data.batch_size=2"])
model = build_model(ModelConfig(backbone="vit_tiny_patch16_224", is_random_init=True, image_size=32))
before = model.head.weight.detach().clone()
model_engine, _ = deepspeed_engine.initialize(model, cfg.train, cfg.data, world_size=1, device="cpu")
loss = deepspeed_engine.l1_loss(model_engine(torch.randn(2, 3, 32, 32)).float(), torch.tensor([1.0, 2.0]))
model_engine.backward(loss)
model_engine.step()
assert not torch.equal(before, deepspeed_engine.bare_module(model_engine).head.weight.detach())
print("stepped with", type(model_engine.optimizer.optimizer).__name__)
"""


@pytest.mark.timeout(240)
def test_offloaded_optimizer_steps_with_our_adam(tmp_path):
    env = {
        **os.environ,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    env.update(TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR, PYTHONPATH=str(PROJECT_ROOT))
    completed = subprocess.run(
        [sys.executable, "-c", OFFLOADED_STEP], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=200
    )
    assert completed.returncode == 0 and "stepped with Adam" in completed.stdout, (
        completed.stdout[-2000:] + completed.stderr[-3000:]
    )


def test_only_cpu_fp32_zero0_data_parallel_runs_through_the_ddp_reducer():
    def is_overlapped(overrides, world_size=2, device="cpu"):
        return deepspeed_engine.is_reducer_overlapped(
            config.load(None, overrides).train, world_size=world_size, device=device
        )

    assert is_overlapped(["train.zero_stage=0"])
    assert not is_overlapped(["train.zero_stage=0"], world_size=1)
    assert not is_overlapped(["train.zero_stage=1"])
    assert not is_overlapped(["train.zero_stage=0", "train.gradient_accumulation_steps=2"])
    assert not is_overlapped(["train.zero_stage=0"], device="cuda")  # bf16 there; DeepSpeed's own path


@pytest.mark.dist
@pytest.mark.timeout(300)
def test_zero0_on_gloo_trains_as_deepspeed_does_and_checkpoints_the_models_own_keys(tmp_path):
    env = {"TORCH_EXTENSIONS_DIR": TORCH_EXTENSIONS_DIR, "PYTHONPATH": str(PROJECT_ROOT)}
    run_ranks([sys.executable, "-m", "tests.engine_worker", str(tmp_path)], timeout_s=240, extra_env=env)
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["is_wrapped"] and result["is_bare_model"] and result["has_trained"]
    assert result["max_gap_to_deepspeed_reduction"] < 1e-6  # the same averaged gradients, summed in another order
    assert result["is_same_on_ranks"]
    assert result["checkpoint_keys"] == result["model_keys"]  # no "module." prefix from the wrapper
    assert result["is_loaded_equal"]  # a plain engine resumes from it


REDUCTION_DTYPES = """
import json
from deepspeed.runtime.torch_autocast import get_comm_dtype
from dist_syndr import runtime
from dist_syndr.config import RuntimeConfig, load
from dist_syndr.train import deepspeed_engine
from tests.ds_checkpoint_worker import tiny_model
runtime.init(RuntimeConfig(device="cpu", faiss="cpu", dali="off"), is_group_required=True)
seen = {}
for stage in (1, 2, 3):
    cfg = load(None, [f"train.zero_stage={stage}", "train.precision=bf16", "data.batch_size=2"])
    model = tiny_model(0)
    engine, _ = deepspeed_engine.initialize(model, cfg.train, cfg.data, world_size=1, device="cpu")
    # The dtype ZeRO buckets and reduces each gradient in, and the dtype autocast tagged on each parameter.
    reduced = {str(engine.optimizer.get_param_comm_dtype(p)) for p in model.parameters()}
    tagged = {str(get_comm_dtype(p)) for p in model.parameters()}
    buckets = sorted(str(dtype) for dtype in engine.optimizer.ipg_buckets)
    seen[stage] = {"autocast": engine.torch_autocast_enabled(), "reduced": sorted(reduced), "tagged": sorted(tagged),
                   "buckets": buckets}
print(json.dumps(seen))
"""


@pytest.mark.timeout(300)
def test_bf16_autocast_reduces_gradients_in_fp32_at_every_zero_stage():
    """DeepSpeed's torch_autocast would reduce Linear/Conv gradients in bf16 across ranks; the generated config keeps
    every gradient's reduction in fp32 (read from real ZeRO 1-3 engines on the CPU, one gloo process)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    env.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR)
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    completed = subprocess.run(
        [sys.executable, "-c", REDUCTION_DTYPES],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=280,
    )
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    seen = json.loads(completed.stdout.strip().splitlines()[-1])
    assert sorted(seen) == ["1", "2", "3"]
    for stage, found in seen.items():
        assert found["autocast"], stage  # the forward pass still runs in bf16
        assert found["reduced"] == found["tagged"] == ["torch.float32"], (stage, found)
        assert found["buckets"] == ["torch.float32"], (stage, found)
