"""The runtime seam: backend choice, launcher environment, collectives (single and 2-process gloo)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from dist_syndr import collectives, runtime
from dist_syndr.config import RuntimeConfig
from dist_syndr.reshape import drcdown
from tests.conftest import PROJECT_ROOT, TORCH_EXTENSIONS_DIR, has_gpu, run_ranks, straddling_pool, tf32_switches


def test_forced_cpu_choice():
    backends = runtime.choose_backends(RuntimeConfig(device="cpu", faiss="cpu", dali="off"))
    assert (backends.device, backends.dist_backend, backends.faiss, backends.dali) == ("cpu", "gloo", "cpu", "off")
    assert (backends.rank, backends.world_size) == (0, 1)
    assert runtime.faiss_gpu_count() == 0


def test_auto_choice_on_this_machine():
    backends = runtime.choose_backends(RuntimeConfig())
    assert backends.device == ("cuda" if has_gpu() else "cpu")
    assert backends.dali in ("gpu", "cpu", "off")


@pytest.mark.skipif(has_gpu(), reason="checks the error raised without a GPU")
def test_forcing_missing_hardware_is_a_clear_error():
    with pytest.raises(ValueError, match="runtime.device=cuda"):
        runtime.choose_backends(RuntimeConfig(device="cuda"))
    with pytest.raises(ValueError, match="nccl"):
        runtime.choose_backends(RuntimeConfig(dist_backend="nccl"))
    with pytest.raises(ValueError, match=r"dist_syndr\[gpu-cu12\]"):
        runtime.choose_backends(RuntimeConfig(faiss="gpu"))


def test_launcher_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert runtime.env_rank_world() == (1, 4, 1)
    assert runtime.rank_world() == (1, 4)
    monkeypatch.setenv("RANK", "9")
    with pytest.raises(ValueError, match="inconsistent"):
        runtime.env_rank_world()


def test_collectives_are_identity_without_a_group():
    array = np.arange(5)
    assert [a.tolist() for a in collectives.all_gather_array(array)] == [array.tolist()]
    assert collectives.broadcast_array(array) is array
    with pytest.raises(ValueError, match="needs the array"):
        collectives.broadcast_array(None)


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_two_process_gloo_drcdown_matches_single_process(tmp_path):
    run_ranks([sys.executable, "-m", "tests.dist_worker", str(tmp_path)], timeout_s=150)
    features, labels = straddling_pool(3)
    single = drcdown.run(features, labels, cap=5, seed=11)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"kept-{rank}.npy"), single.kept)
        np.testing.assert_array_equal(np.load(tmp_path / f"members-{rank}.npy"), np.concatenate(single.clusters))


def test_deterministic_mode_sets_the_torch_switches(monkeypatch):
    import torch

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32)
    try:
        runtime.set_deterministic(False)
        assert not torch.are_deterministic_algorithms_enabled()
        runtime.set_deterministic(True)
        assert torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.deterministic
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert not torch.backends.cudnn.allow_tf32 and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[:2]
        torch.backends.cuda.matmul.allow_tf32 = saved[2]
        torch.backends.cudnn.allow_tf32 = True


def test_checkpointed_rng_states_include_every_gpu(monkeypatch):
    """CUDA's generators travel with the CPU ones (checked with torch.cuda's state calls standing in)."""
    import torch

    from dist_syndr.train import state as train_state

    devices = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(runtime, "has_cuda", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: [d.clone() for d in devices])
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: len(devices))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(state))
    captured = train_state.capture_rng()
    assert [s.tolist() for s in captured["cuda"]] == [[1, 2], [3, 4]]
    torch.manual_seed(123)
    expected = torch.rand(3)
    train_state.restore_rng(train_state.capture_rng() | {"cuda": captured["cuda"]})
    assert [s.tolist() for s in restored] == [[1, 2], [3, 4]]
    monkeypatch.setattr(runtime, "has_cuda", lambda: False)
    assert train_state.capture_rng()["cuda"] is None
    torch.manual_seed(123)
    assert torch.equal(torch.rand(3), expected)


def test_the_collective_timeout_comes_from_the_config(monkeypatch):
    import datetime

    import torch.distributed as dist

    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "init_process_group", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(runtime, "_has_process_group", lambda: False)
    monkeypatch.setattr(runtime, "_share_cores_between_local_ranks", lambda: None)
    runtime.init(RuntimeConfig(device="cpu", faiss="cpu", dali="off", collective_timeout_s=42.0))
    assert seen["timeout"] == datetime.timedelta(seconds=42) and seen["backend"] == "gloo"
    runtime.init(RuntimeConfig(device="cpu", faiss="cpu", dali="off"), timeout_s=7)
    assert seen["timeout"] == datetime.timedelta(seconds=7)
    with pytest.raises(ValueError, match="collective_timeout_s"):
        RuntimeConfig(collective_timeout_s=0)


def _run_alone(code: str, *, timeout_s: float = 240, env: dict | None = None) -> dict:
    """``code`` in a fresh interpreter from the project root; the JSON object its last output line prints."""
    clean = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")}
    clean.update(PYTHONPATH=str(PROJECT_ROOT), TORCH_EXTENSIONS_DIR=TORCH_EXTENSIONS_DIR, **(env or {}))
    command = [sys.executable, "-c", code]
    completed = subprocess.run(command, cwd=PROJECT_ROOT, env=clean, capture_output=True, text=True, timeout=timeout_s)
    assert completed.returncode == 0, completed.stdout[-2000:] + completed.stderr[-3000:]
    return json.loads(completed.stdout.strip().splitlines()[-1])


WITHOUT_FAISS = """
import json, sys
sys.modules["faiss"] = None  # as on the GPU machine and under the gpu-cu13 extra: no FAISS at all
import numpy as np
from dist_syndr import runtime
from dist_syndr.config import RuntimeConfig
from dist_syndr.reshape import drcdown
from tests.conftest import straddling_pool
backends = runtime.init(RuntimeConfig(device="cpu"))
features, labels = straddling_pool(3)
kept = drcdown.run(features, labels, cap=5, seed=11).kept
try:
    runtime.choose_backends(RuntimeConfig(faiss="gpu"))
    forced = "no error"
except ValueError as error:
    forced = str(error)
print(json.dumps({"faiss": backends.faiss, "gpus": backends.faiss_gpus, "count": runtime.faiss_gpu_count(),
                  "kept": kept.tolist(), "forced": forced}))
"""


def test_auto_runs_without_faiss_installed():
    """runtime.faiss: auto means FAISS GPUs if FAISS is there: without it every launcher starts and DRCDown runs."""
    found = _run_alone(WITHOUT_FAISS)
    assert (found["faiss"], found["gpus"], found["count"]) == ("none", 0, 0)
    features, labels = straddling_pool(3)
    assert found["kept"] == drcdown.run(features, labels, cap=5, seed=11).kept.tolist()
    assert "runtime.faiss=gpu" in found["forced"]


WITHOUT_DALI = """
import json, sys
sys.modules["nvidia.dali"] = None  # a GPU machine without DALI
from dist_syndr import runtime
plain = runtime.worker_start_method()
mode = runtime.dali_mode("auto")
runtime.has_cuda = lambda: True  # a GPU is visible
print(json.dumps({"plain": plain, "with_gpu": runtime.worker_start_method(), "dali": mode}))
"""


def test_worker_start_method_needs_no_dali():
    """The scorer's PIL decoding workers take their start method from runtime, with or without DALI installed."""
    assert _run_alone(WITHOUT_DALI) == {"plain": "fork", "with_gpu": "spawn", "dali": "off"}


def test_resume_with_fewer_gpus_restores_what_fits_and_warns_once(monkeypatch, caplog):
    """Two GPUs saved, one visible at resume: the first state goes back, the second is reported, nothing raises."""
    import torch

    visible, restored = 1, []

    def set_rng_state(state, device):
        if device >= visible:  # as torch's own call fails for a device it does not see
            raise IndexError("tuple index out of range")
        restored.append((device, state.tolist()))

    monkeypatch.setattr(runtime, "has_cuda", lambda: True)
    monkeypatch.setattr(runtime, "cuda_device_count", lambda: visible)
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    saved = [torch.tensor([1, 2], dtype=torch.uint8), torch.tensor([3, 4], dtype=torch.uint8)]
    with caplog.at_level("WARNING", logger="dist_syndr.runtime"):
        runtime.restore_cuda_rng_states(saved)
    assert restored == [(0, [1, 2])]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "of 2 GPU(s), 1 visible: RNG states of 1 restored" in warnings[0]


@pytest.mark.parametrize("before", ["defaults", "legacy-tf32", "new-api-tf32", "medium"])
def test_exact_fp32_math_turns_tf32_off_inside_and_restores_the_callers_choice(before, tf32_on):
    """No TF32 for cuBLAS or cuDNN inside, both of torch's switch sets agreeing (a mix raises in torch); afterwards
    exactly the caller's switches, whichever API set them."""
    import torch

    if before == "defaults":
        torch.set_float32_matmul_precision("highest")
        torch.backends.cuda.matmul.fp32_precision = "none"
    elif before == "new-api-tf32":
        torch.backends.fp32_precision = "tf32"
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    elif before == "medium":  # also bf16 for oneDNN's fp32 matrix products on CPUs
        torch.set_float32_matmul_precision("medium")
        torch.backends.mkldnn.conv.fp32_precision = "bf16"
    outside = tf32_switches()
    with runtime.exact_fp32_math():
        inside = tf32_switches()
    assert tf32_switches() == outside
    assert (
        inside["matmul"]
        == inside["conv"]
        == inside["rnn"]
        == inside["onednn_matmul"]
        == inside["onednn_conv"]
        == "ieee"
    )
    assert inside["legacy_matmul"] == "highest" and inside["legacy_cudnn"] is False
    assert inside["bf16_reduction"] is False
