"""The one seam between the code and the machine.

Decides, once per process, which device, process group (nccl or gloo), FAISS build and DALI mode to use;
everything else asks here instead of probing CUDA itself (``tests/test_layout.py`` holds every other module to
it). FAISS and DALI are optional: ``auto`` runs without them. Heavy modules (torch, faiss, DALI) are imported lazily,
so importing this module costs nothing. The choice can be forced from :class:`~dist_syndr.config.RuntimeConfig`,
which is how tests exercise every fallback on a CPU-only machine.

Rank and world size: the process group's, else ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (launchers), else (0, 1).
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import socket
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from dist_syndr.config import RuntimeConfig

log = logging.getLogger(__name__)

_FAISS_HINT = (
    "FAISS is not installed: install the CPU build with `pip install dist_syndr[cpu]`"
    " or the CUDA 12 GPU build with `pip install dist_syndr[gpu-cu12]` (never both; CUDA 13: the site's build)"
)


@dataclass(frozen=True)
class Backends:
    """What this process runs on, as chosen by :func:`choose_backends`."""

    device: str  # cpu | cuda
    dist_backend: str  # gloo | nccl
    faiss: str  # cpu | gpu | none (not installed)
    faiss_gpus: int
    dali: str  # gpu | cpu | off
    rank: int
    world_size: int
    local_rank: int


# ---------------------------------------------------------------------------
# rank and world


def env_rank_world() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from the launcher environment, defaulting to one process."""
    try:
        rank = int(os.environ.get("RANK", 0))
        world_size = int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    except ValueError as error:
        raise ValueError(f"RANK / WORLD_SIZE / LOCAL_RANK must be integers: {error}") from None
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"inconsistent launcher environment: RANK={rank}, WORLD_SIZE={world_size}")
    return rank, world_size, local_rank


NODE_RANK_VARIABLES = ("CROSS_RANK", "GROUP_RANK", "NODE_RANK", "SLURM_NODEID")  # DeepSpeed, torchrun, -, Slurm


def local_world_size() -> int:
    """Ranks on this node: the launcher's ``LOCAL_WORLD_SIZE`` (torchrun) or ``LOCAL_SIZE`` (DeepSpeed), else 1."""
    return int(os.environ.get("LOCAL_WORLD_SIZE") or os.environ.get("LOCAL_SIZE") or 1)


def node_rank_and_label() -> tuple[int, str]:
    """This process's node rank, from the launcher (the first of :data:`NODE_RANK_VARIABLES` set) or else
    rank // ranks per node, and its label ``"node K (hostname)"`` for messages."""
    named = next((os.environ[name] for name in NODE_RANK_VARIABLES if os.environ.get(name)), None)
    node_rank = int(named) if named is not None else env_rank_world()[0] // local_world_size()
    return node_rank, f"node {node_rank} ({socket.gethostname()})"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now, for a rendezvous this process starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def rank_environment(rank: int, world_size: int, port: int, *, master_addr: str = "127.0.0.1") -> dict[str, str]:
    """This process's environment as a launcher hands it to rank ``rank`` of ``world_size`` on one node."""
    ranks = {
        "RANK": rank,
        "WORLD_SIZE": world_size,
        "LOCAL_RANK": rank,
        "MASTER_ADDR": master_addr,
        "MASTER_PORT": port,
    }
    return dict(os.environ) | {name: str(value) for name, value in ranks.items()}


def is_distributed() -> bool:
    """True when a torch process group is initialised with more than one rank."""
    return _has_process_group() and sys.modules["torch.distributed"].get_world_size() > 1


def rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process."""
    if is_distributed():
        import torch.distributed as dist

        return dist.get_rank(), dist.get_world_size()
    rank, world_size, _ = env_rank_world()
    return rank, world_size


def _loaded_modules() -> set[str]:
    return {name.partition(".")[0] for name in sys.modules}


# ---------------------------------------------------------------------------
# backend detection


def has_cuda() -> bool:
    """True when torch sees at least one CUDA device."""
    import torch

    return torch.cuda.is_available() and torch.cuda.device_count() > 0


def torch_device():
    """The torch device this process computes on: its current CUDA device when torch sees one, else the CPU."""
    import torch

    return torch.device("cuda", torch.cuda.current_device()) if has_cuda() else torch.device("cpu")


def has_fast_bf16(device="cpu") -> bool:
    """True where ``device`` multiplies bf16 fast: a GPU of compute capability 8.0 or newer, a CPU with bf16 matrix
    instructions (AMX-BF16, AVX512-BF16; bf16 inference is much faster there)."""
    if getattr(device, "type", device) == "cuda":
        import torch

        return torch.cuda.get_device_capability(device)[0] >= 8
    flags = Path("/proc/cpuinfo").read_text().split() if Path("/proc/cpuinfo").is_file() else []
    return "amx_bf16" in flags or "avx512_bf16" in flags


def is_cuda_initialised() -> bool:
    """True once this process has initialised CUDA (a forked child could then not use it)."""
    torch = sys.modules.get("torch")
    return torch is not None and torch.cuda.is_initialized()


def import_faiss():
    """The faiss module, or a ValueError naming the pip extra to install."""
    try:
        return importlib.import_module("faiss")
    except ImportError:
        raise ValueError(_FAISS_HINT) from None


def _is_installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a missing parent package; a module hidden as None
        return False


@functools.lru_cache(maxsize=1)
def _faiss_gpus_visible() -> int:
    """GPUs FAISS sees: 0 with its CPU build and without FAISS (``runtime.faiss: auto`` then runs without it)."""
    faiss = import_faiss() if _is_installed("faiss") else None
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


_forced: dict[str, str] = {}


def faiss_gpu_count() -> int:
    """GPUs FAISS may use in this process (0 when forced to CPU or without faiss-gpu)."""
    if _forced.get("faiss") == "cpu":
        return 0
    return _faiss_gpus_visible()


def faiss_index_to_gpus(cpu_index):
    """Copy a CPU index to the GPUs this process owns: all of them alone, its local one under a launcher."""
    faiss = import_faiss()
    _, world_size, local_rank = env_rank_world()
    if world_size > 1 or is_distributed():
        resources = faiss.StandardGpuResources()
        return faiss.index_cpu_to_gpu(resources, local_rank % faiss_gpu_count(), cpu_index)
    options = faiss.GpuMultipleClonerOptions()
    options.shard = True
    return faiss.index_cpu_to_all_gpus(cpu_index, co=options)


def dali_mode(requested: str = "auto") -> str:
    """``gpu``, ``cpu`` or ``off``: what the DALI loader can run here."""
    if requested == "off":
        return "off"
    if not _is_installed("nvidia.dali"):
        if requested in ("gpu", "cpu"):
            raise ValueError(
                f"runtime.dali={requested} but nvidia-dali is not installed (pip install nvidia-dali-cuda130)"
            )
        return "off"
    if requested == "auto":
        return "gpu" if has_cuda() else "cpu"
    if requested == "gpu" and not has_cuda():
        raise ValueError("runtime.dali=gpu but no CUDA device is visible")
    return requested


def worker_start_method() -> str:
    """How worker processes (DALI's, the scorer's PIL decoders) start, DALI installed or not: ``fork`` only where
    the CUDA driver cannot be initialised. A forked child cannot use its parent's driver and DALI refuses to fork
    then (``torch.cuda.is_available()`` and ``faiss.get_num_gpus()`` initialise it): a machine with a GPU spawns."""
    if has_cuda() or is_cuda_initialised():
        return "spawn"
    if not _is_installed("nvidia.dali"):
        return "fork"
    from nvidia.dali import backend

    return "spawn" if backend.IsDriverInitialized() else "fork"


def cuda_rng_states() -> list | None:
    """Every visible GPU's RNG state (``None`` without CUDA), for exact resume."""
    if not has_cuda():
        return None
    import torch

    return torch.cuda.get_rng_state_all()


def restore_cuda_rng_states(states: list | None) -> None:
    """Put back what :func:`cuda_rng_states` returned (nothing to do without CUDA or states); a resume that sees
    another number of GPUs than the checkpoint saved restores the states that fit, warning once."""
    if states is None or not has_cuda():
        return
    import torch

    count = cuda_device_count()
    if len(states) != count:
        kept = min(len(states), count)
        log.warning("checkpoint of %d GPU(s), %d visible: RNG states of %d restored", len(states), count, kept)
    for index, state in enumerate(states[:count]):
        torch.cuda.set_rng_state(state, index)


def set_deterministic(is_deterministic: bool) -> None:
    """``train.is_deterministic``: deterministic cuDNN and torch algorithms, TF32 off (a GPU run then resumes
    bit-exactly, at some speed). cuBLAS needs ``CUBLAS_WORKSPACE_CONFIG`` before its first use: set here."""
    if not is_deterministic:
        return
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


@contextlib.contextmanager
def exact_fp32_math():
    """Inside: float32 matrix products and convolutions in full float32 (no TF32, cuDNN's default on Ampere and
    newer; no bf16 in oneDNN on CPUs), bf16 products with float32 reductions; the caller's settings after. For the
    fp32 reshaping feature passes and the banded search, whose results must not depend on the device. Both of
    torch's switch sets are written, so neither reads as a mix of the two inside (torch raises then)."""
    import torch

    matmul, cudnn, onednn = torch.backends.cuda.matmul, torch.backends.cudnn, torch.backends.mkldnn
    switch_sets = (matmul, cudnn.conv, cudnn.rnn, onednn.matmul, onednn.conv, onednn.rnn)
    saved_bf16 = matmul.allow_bf16_reduced_precision_reduction
    saved = [switches.fp32_precision for switches in switch_sets]
    legacy = None
    with contextlib.suppress(RuntimeError):  # the legacy view of a mixed state cannot be read (nor written back)
        legacy = (torch.get_float32_matmul_precision(), cudnn.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    cudnn.allow_tf32 = matmul.allow_bf16_reduced_precision_reduction = False
    for switches in switch_sets:
        switches.fp32_precision = "ieee"
    try:
        yield
    finally:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy[0])
            cudnn.allow_tf32 = legacy[1]
        for switches, value in zip(switch_sets, saved, strict=True):
            switches.fp32_precision = value
        matmul.allow_bf16_reduced_precision_reduction = saved_bf16


def choose_backends(config: RuntimeConfig | None = None) -> Backends:
    """Resolve every ``auto`` in ``config`` against this machine (forced values are checked)."""
    config = config or RuntimeConfig()
    cuda = has_cuda()
    if config.device == "cuda" and not cuda:
        raise ValueError("runtime.device=cuda but torch sees no CUDA device")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and cuda) else "cpu"
    if config.dist_backend == "nccl" and device != "cuda":
        raise ValueError("runtime.dist_backend=nccl needs runtime.device=cuda")
    dist_backend = config.dist_backend if config.dist_backend != "auto" else ("nccl" if device == "cuda" else "gloo")
    _forced["faiss"] = config.faiss
    faiss_gpus = 0 if config.faiss == "cpu" else _faiss_gpus_visible()
    if config.faiss == "gpu" and faiss_gpus == 0:
        raise ValueError("runtime.faiss=gpu but FAISS sees no GPU (install dist_syndr[gpu-cu12] on a CUDA 12 machine)")
    rank, world_size, local_rank = env_rank_world()
    return Backends(
        device=device,
        dist_backend=dist_backend,
        faiss="gpu" if faiss_gpus else ("cpu" if _is_installed("faiss") else "none"),
        faiss_gpus=faiss_gpus,
        dali=dali_mode(config.dali),
        rank=rank,
        world_size=world_size,
        local_rank=local_rank,
    )


# ---------------------------------------------------------------------------
# process set-up


def setup_logging(level: str = "INFO", rank: int | None = None) -> None:
    """Install one handler on the package logger; ranks other than 0 show warnings only."""
    rank = env_rank_world()[0] if rank is None else rank
    package_logger = logging.getLogger("dist_syndr")
    package_logger.setLevel(level)
    if any(getattr(h, "_dist_syndr", False) for h in package_logger.handlers):
        return
    handler = logging.StreamHandler()
    handler._dist_syndr = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(f"%(asctime)s [rank {rank}] %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(lambda record: rank == 0 or record.levelno >= logging.WARNING)
    package_logger.addHandler(handler)


def init(
    config: RuntimeConfig | None = None, *, timeout_s: float | None = None, is_group_required: bool = False
) -> Backends:
    """Choose backends, set up logging and, under a launcher, the process group. Logged once.

    ``is_group_required`` makes a one-rank group for a single process too (torch DDP and DeepSpeed need one).
    One rank needs no rendezvous: its group's store lives in the process, so no port is bound (two single-process
    runs on one host never meet) and DeepSpeed, finding the group made, skips its own ``env://`` rendezvous.
    """
    config = config or RuntimeConfig()
    backends = choose_backends(config)
    setup_logging(config.log_level, backends.rank)
    if (backends.world_size > 1 or is_group_required) and not _has_process_group():
        import datetime

        import torch.distributed as dist

        if backends.device == "cuda":
            import torch

            torch.cuda.set_device(backends.local_rank % torch.cuda.device_count())
        # Every collective, gloo or NCCL, gives up after this: a lost peer ends the job instead of hanging it.
        seconds = timeout_s if timeout_s is not None else config.collective_timeout_s
        alone = {"store": dist.HashStore(), "rank": 0, "world_size": 1} if backends.world_size == 1 else {}
        dist.init_process_group(backend=backends.dist_backend, timeout=datetime.timedelta(seconds=seconds), **alone)
    if backends.device == "cpu":
        _share_cores_between_local_ranks()
    log.info("backends: %s", asdict(backends))
    return backends


def _share_cores_between_local_ranks() -> None:
    """CPU runs: each process of this node gets its share of the cores for torch's intra-op threads.

    Without it every rank starts one thread per core, and two ranks on two cores
    run many times slower than with one thread each. ``OMP_NUM_THREADS`` wins when set.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        return
    import torch

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, cores // local_world_size()))


def shutdown() -> None:
    """Destroy the process group if this process made one."""
    if _has_process_group():
        import torch.distributed as dist

        dist.destroy_process_group()


def _has_process_group() -> bool:
    if "torch" not in _loaded_modules():
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def synchronize(device) -> None:
    """Wait for the device's queued work (a no-op on the CPU); timings need it on a GPU."""
    if getattr(device, "type", device) == "cuda":
        import torch

        torch.cuda.synchronize(device)


def device_name(device) -> str:
    """The GPU's name (``""`` for the CPU)."""
    if getattr(device, "type", device) != "cuda":
        return ""
    import torch

    return torch.cuda.get_device_name(device)


def cuda_device_count() -> int:
    """CUDA devices torch sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if has_cuda() else 0


def collective_device():
    """The device a collective's tensors live on: this process's CUDA device under NCCL, else the CPU."""
    import torch
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


# GPU timing for benchmarks
def cuda_event_seconds(device, work) -> float:
    """Seconds between CUDA events recorded around ``work()`` on ``device`` (its queue drained first)."""
    import torch

    with torch.cuda.device(device):
        torch.cuda.synchronize()
        events = [torch.cuda.Event(enable_timing=True) for _ in range(2)]
        events[0].record()
        work()
        events[1].record()
        events[1].synchronize()
    return events[0].elapsed_time(events[1]) / 1000.0
