"""Consolidated fp32 weights from DeepSpeed checkpoints of every ZeRO stage, and checksummed state dict files."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from dist_syndr.runs import consolidate, weights
from dist_syndr.sharding.shard_set import sha256_file
from tests.conftest import PROJECT_ROOT, TORCH_EXTENSIONS_DIR, free_port

RUNS = ("0", "1", "2", "3", "0-bf16", "2-bf16", "0-dsbf16")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """One worker process trains under every stage in turn and saves checkpoints plus the true weights."""
    out = tmp_path_factory.mktemp("ds_checkpoints")
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(
        RANK="0",
        WORLD_SIZE="1",
        LOCAL_RANK="0",
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_port()),
        TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR,
        PYTHONPATH=str(PROJECT_ROOT),
    )
    completed = subprocess.run(
        [sys.executable, "-m", "tests.ds_checkpoint_worker", str(out), *RUNS],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("stage", ["0", "1", "2", "3", "0-bf16", "2-bf16"])
def test_fp32_checkpoint_of_every_stage_consolidates_to_the_true_weights(checkpoints, stage):
    """fp32 runs, and bf16 runs (autocast over fp32 weights: the module's weights are the masters)."""
    true_state = torch.load(checkpoints / f"{stage}-true.pt")
    initial = torch.load(checkpoints / f"{stage}-init.pt")
    state = consolidate.consolidated_state_dict(checkpoints / stage)  # tag from DeepSpeed's `latest`
    assert list(state) == list(initial) == list(true_state)  # exactly the module's keys, in its order
    for name, tensor in true_state.items():
        assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
    # training happened, the frozen parameter stayed, the buffers carry their trained values
    assert not torch.equal(state["head.weight"], initial["head.weight"])
    assert torch.equal(state["backbone.patch_embed.proj.bias"], initial["backbone.patch_embed.proj.bias"])
    assert state["head.calibration"].tolist() == [0.5, 0.5, 0.5] and int(state["head.num_updates"]) == 2
    assert torch.equal(
        consolidate.consolidated_state_dict(checkpoints / stage, tag="epoch0000")["head.weight"], state["head.weight"]
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_deepspeed_bf16_stage0_exports_the_fp32_master_weights(checkpoints):
    module = torch.load(checkpoints / "0-dsbf16-true.pt")  # the engine's bf16 module
    state = consolidate.consolidated_state_dict(checkpoints / "0-dsbf16")
    assert list(state) == list(module)
    assert all(t.dtype in (torch.float32, torch.int64) for t in state.values())
    for name, tensor in module.items():
        assert torch.equal(state[name].to(tensor.dtype), tensor), name  # the bf16 weights are the masters rounded
    trained = [n for n in module if module[n].is_floating_point() and not torch.equal(state[n], module[n].float())]
    assert len(trained) > 100 and "head.weight" in trained  # masters carry more than bf16 precision
    assert torch.equal(
        state["backbone.patch_embed.proj.bias"], module["backbone.patch_embed.proj.bias"].float()
    )  # frozen


@pytest.mark.timeout(60)
@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_saved_state_dict_round_trips_and_detects_corruption(tmp_path, suffix):
    state = {"a.weight": torch.randn(4, 3), "a.count": torch.tensor(5, dtype=torch.int64)}
    path = weights.save_state_dict(state, tmp_path / "export" / f"model_fp32{suffix}")
    assert weights.checksum_path(path).read_text().split() == [sha256_file(path), path.name]
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []  # no temporary left behind
    loaded = weights.load_state_dict(path)
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    data = bytearray(path.read_bytes())
    data[-20] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="sha256 does not match"):
        weights.load_state_dict(path)


@pytest.mark.timeout(60)
def test_bad_checkpoint_folders_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        consolidate.consolidated_state_dict(tmp_path / "missing")
    (tmp_path / "ckpt" / "epoch0001").mkdir(parents=True)
    with pytest.raises(ValueError, match="no 'complete' or 'latest' pointer.*epoch0001"):
        consolidate.consolidated_state_dict(tmp_path / "ckpt")
    with pytest.raises(ValueError, match="tag 'epoch0009' not found"):
        consolidate.consolidated_state_dict(tmp_path / "ckpt", tag="epoch0009")
    with pytest.raises(ValueError, match="not a complete DeepSpeed checkpoint"):
        consolidate.consolidated_state_dict(tmp_path / "ckpt", tag="epoch0001")
    with pytest.raises(ValueError, match="end in"):
        weights.save_state_dict({}, tmp_path / "model.bin")
    with pytest.raises(ValueError, match="does not exist"):
        weights.load_state_dict(tmp_path / "nothing.pt")
