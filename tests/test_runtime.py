"""The runtime seam: backend choice, launcher environment, collectives (single and 2-process gloo)."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from dist_syndr import runtime
from dist_syndr.config import RuntimeConfig
from dist_syndr.reshape import drcdown
from tests.conftest import has_gpu, run_ranks, straddling_pool


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
    with pytest.raises(ValueError, match=r"dist_syndr\[gpu\]"):
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
    assert [a.tolist() for a in runtime.all_gather_array(array)] == [array.tolist()]
    assert runtime.broadcast_array(array) is array
    with pytest.raises(ValueError, match="needs the array"):
        runtime.broadcast_array(None)


@pytest.mark.dist
@pytest.mark.timeout(180)
def test_two_process_gloo_drcdown_matches_single_process(tmp_path):
    run_ranks([sys.executable, "-m", "tests.dist_worker", str(tmp_path)], timeout_s=150)
    features, labels = straddling_pool(3)
    single = drcdown.run(features, labels, cap=5, seed=11)
    for rank in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"kept-{rank}.npy"), single.kept)
        np.testing.assert_array_equal(np.load(tmp_path / f"members-{rank}.npy"), np.concatenate(single.clusters))
