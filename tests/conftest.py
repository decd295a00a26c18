"""Shared test fixtures: the real-data fixture folder and seeded feature pools."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dist_syndr import runtime

PROJECT_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = PROJECT_ROOT.parent / "shared" / "fixtures"
# The running interpreter's environment (.venv, or .venv-compat under make compat) and its compiled-ops cache.
VENV_BIN = Path(sys.executable).parent
TORCH_EXTENSIONS_DIR = os.environ.get("TORCH_EXTENSIONS_DIR") or str(PROJECT_ROOT / ".cache" / "torch_extensions")


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """``../shared/fixtures``; tests that need it skip, naming the path, where it is absent."""
    if not FIXTURES.is_dir():
        pytest.skip(f"real-data fixtures not found at {FIXTURES}")
    return FIXTURES


def fixture_file(relative: str) -> Path:
    path = FIXTURES / relative
    if not path.is_file():
        pytest.skip(f"fixture file {path} is absent")
    return path


@pytest.fixture(autouse=True)
def _single_process_env(monkeypatch):
    """Tests run as one process unless they set a launcher environment themselves."""
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    yield


@pytest.fixture(scope="session")
def zero2_bf16_two_rank_run(tmp_path_factory) -> Path:
    """One smoke training of two ranks under ``deepspeed --num_gpus 2`` (gloo), ZeRO-2, bf16 autocast, ViT-tiny:
    its run folder (read-only: tests that change it copy it first)."""
    from tests.training_runs import two_rank_run

    root = tmp_path_factory.mktemp("zero2-bf16")
    extra = {"train.precision": "bf16", "model.backbone": "vit_tiny_patch16_224", "train.zero_stage": 2}
    return two_rank_run(root, 29593, **extra)


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def pytest_collection_modifyitems(config, items):
    if has_gpu():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU; none is visible on this machine")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


def straddling_pool(seed: int, num_groups: int = 12, group_size: int = 8, dim: int = 16):
    """Features and labels built to sit on both sides of both DRCDown thresholds.

    Groups of near-parallel vectors (some just above, some just below cos 0.9 to
    their centre) with labels spread around the 1.0 gap, plus exact duplicates.
    """
    rng = np.random.default_rng(seed)
    rows, labels = [], []
    for _ in range(num_groups):
        centre = rng.normal(size=dim)
        centre /= np.linalg.norm(centre)
        base_label = rng.uniform(0, 10)
        for _ in range(group_size):
            direction = rng.normal(size=dim)
            direction -= direction @ centre * centre
            direction /= np.linalg.norm(direction)
            angle = np.arccos(rng.uniform(0.86, 0.99))
            rows.append(np.cos(angle) * centre + np.sin(angle) * direction)
            labels.append(base_label + rng.uniform(-1.2, 1.2))
    features = np.array(rows)
    labels = np.array(labels)
    duplicates = rng.choice(len(rows), size=len(rows) // 6, replace=False)
    features = np.concatenate([features, features[duplicates]])
    labels = np.concatenate([labels, labels[duplicates]])
    order = rng.permutation(len(features))
    return features[order].astype(np.float32), labels[order]


free_port = runtime.free_port  # a TCP port on 127.0.0.1 that nothing listens on right now


def run_ranks(
    command: list[str], *, timeout_s: float, world_size: int = 2, extra_env: dict[str, str] | None = None
) -> list[str]:
    """Run ``command`` as ``world_size`` ranks of one gloo group from the project root; their outputs.

    Fails the test (with every rank's output tail) unless all ranks exit 0 in time; kills them all in any case.
    """
    port = free_port()
    workers = [
        subprocess.Popen(
            command,
            cwd=PROJECT_ROOT,
            env=runtime.rank_environment(rank, world_size, port) | (extra_env or {}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for rank in range(world_size)
    ]
    try:
        outputs = [worker.communicate(timeout=timeout_s)[0] for worker in workers]
    finally:
        for worker in workers:
            worker.kill()
    assert all(worker.returncode == 0 for worker in workers), "\n".join(output[-3000:] for output in outputs)
    return outputs


def index_as_format_1(root: Path) -> dict:
    """A written set's index as one format-1 document (every sample a JSON record), for tests that edit it."""
    import json

    from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet

    header = json.loads((root / INDEX_NAME).read_text())
    samples = list(ShardSet(root).records())
    return {key: header[key] for key in ("config", "shards", "skipped")} | {"version": 1, "samples": samples}


def write_format_1(root: Path, index: dict) -> None:
    """Replace a set's index with the format-1 document ``index`` (as sets written before format 2 hold it)."""
    import json

    for columns in root.glob("index-*.columns"):
        columns.unlink()
    (root / "index.json").write_text(json.dumps(index, indent=1, sort_keys=True))


@contextlib.contextmanager
def mlflow_tracking_at(uri: str):
    """``mlflow.set_tracking_uri(uri)`` inside the block only: it also sets ``MLFLOW_TRACKING_URI`` for the whole
    process, which later tests (and their subprocesses) would otherwise inherit."""
    import mlflow

    previous = os.environ.get("MLFLOW_TRACKING_URI")
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(None)
        if previous is not None:
            os.environ["MLFLOW_TRACKING_URI"] = previous


def tf32_switches() -> dict:
    """torch's TF32 switches as its new API and its legacy one read them ("raises" where a mix cannot be read)."""
    import torch

    readers = {
        "matmul": lambda: torch.backends.cuda.matmul.fp32_precision,
        "conv": lambda: torch.backends.cudnn.conv.fp32_precision,
        "rnn": lambda: torch.backends.cudnn.rnn.fp32_precision,
        "generic": lambda: torch.backends.fp32_precision,
        "onednn_matmul": lambda: torch.backends.mkldnn.matmul.fp32_precision,
        "onednn_conv": lambda: torch.backends.mkldnn.conv.fp32_precision,
        "legacy_matmul": lambda: torch.get_float32_matmul_precision(),
        "legacy_cudnn": lambda: torch.backends.cudnn.allow_tf32,
        "bf16_reduction": lambda: torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction,
    }
    switches = {}
    for name, read in readers.items():
        try:
            switches[name] = read()
        except RuntimeError:
            switches[name] = "raises"
    return switches


@pytest.fixture
def tf32_on():
    """TF32 on for matrix products and cuDNN convolutions (a fast training set-up); torch's defaults after."""
    import torch

    torch.set_float32_matmul_precision("high")
    torch.backends.cudnn.allow_tf32 = True
    yield tf32_switches()
    # torch's defaults: cuBLAS in full fp32, cuDNN convolutions in TF32, bf16 reductions in bf16 allowed
    torch.backends.fp32_precision = "none"
    torch.set_float32_matmul_precision("highest")
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.fp32_precision = torch.backends.mkldnn.matmul.fp32_precision = "none"
    torch.backends.mkldnn.conv.fp32_precision = torch.backends.mkldnn.rnn.fp32_precision = "none"
    torch.backends.cudnn.conv.fp32_precision = torch.backends.cudnn.rnn.fp32_precision = "tf32"
    torch.backends.cuda.matmul.allow_bf16_reduced_precision_reduction = True
