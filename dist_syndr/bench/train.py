"""``bench.py train``: images/s per process of our training step against a plain PyTorch DDP loop.

For each model (random init) these cases run in the same pair of processes,
on the same batches, one after the other:

- (a) baseline: ``torch.nn.parallel.DistributedDataParallel`` and
  :func:`~dist_syndr.train.deepspeed_engine.build_optimizer`'s Adam over the model's parameter
  groups, fed pre-decoded batches (autocast bf16 on a GPU, fp32 on the CPU);
- (b) the bare DeepSpeed engine step at each ZeRO stage of ``step_stages``
  (:func:`dist_syndr.train.deepspeed_engine.deepspeed_config`, the same optimizer,
  ``deepspeed.initialize``) on the same batches;
- (c) the full trainer's training phase, :func:`dist_syndr.train.loop.train_epoch`
  on the engine of ``trainer_zero_stage`` (the stage of our presets for that
  device: 0 on the CPU, 2 on GPUs), reading the shard set through the real
  loader (DALI's CPU pipeline without a GPU).

The pre-decoded batches of (a) and (b) are the crops the trainer reads in
(c): the same epoch plans through the same loader, decoded before timing.
The shard set is built by :func:`dist_syndr.sharding.photos.photo_shard_set`.
Every case runs its warm-up epochs untimed, then its timed epochs (each
started after a barrier); cases alternate order between repeats and the best
repeat is kept. ``images/s`` is per process (mean over ranks); ratios are
against (a). On CUDA the model FLOPs of one forward + backward are counted
with ``torch.utils.flop_counter.FlopCounterMode`` and MFU is achieved FLOP/s
over the GPU's dense bf16 peak.

The ranks are worker processes (:mod:`dist_syndr.bench.train_worker`) with
``RANK`` / ``WORLD_SIZE`` / ``MASTER_ADDR`` / ``MASTER_PORT`` set; gloo on the
CPU, nccl on GPUs (one rank per GPU, at most ``world_size``).

Shapes: batches ``(B, 3, C, C)`` float32 crops and ``(B,)`` scores; ``B`` per-rank batch size.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dist_syndr import source
from dist_syndr.bench.harness import Report, SummaryRow, format_ratio, markdown_table

log = logging.getLogger(__name__)

PROJECT_ROOT = source.PROJECT_ROOT
WORKER = "dist_syndr.bench.train_worker"

H200_BF16_PEAK_FLOPS = 989e12
"""NVIDIA H200 (SXM) dense bf16 tensor-core peak, FLOP/s."""
PEAK_BF16_FLOPS = {
    "H100 PCIe": 756e12,
    "H100 NVL": 835e12,
    "H200 NVL": 835e12,
    "H100": 989e12,  # SXM ("NVIDIA H100 80GB HBM3")
    "H200": H200_BF16_PEAK_FLOPS,
    "A100": 312e12,
}
"""Dense bf16 peaks (vendor datasheets) by GPU name fragment, the first match wins (PCIe and NVL parts before
the SXM ones); MFU is left out on GPUs not listed here."""

BASELINE, TRAINER = "ddp", "trainer"


def step_case(stage: int) -> str:
    """The case name of the bare DeepSpeed step at ZeRO ``stage``."""
    return f"zero{stage}"


def case_name(case: str, *, loader: str, trainer_zero_stage: int) -> str:
    """The row label of ``case`` in the report table."""
    if case == BASELINE:
        return "(a) baseline: DDP + torch Adam, pre-decoded batches"
    if case == TRAINER:
        return f"(c) full trainer (ZeRO-{trainer_zero_stage}): train_epoch through the {loader} loader"
    return f"(b) DeepSpeed ZeRO-{case.removeprefix('zero')} engine step, pre-decoded batches"


def summary_name(case: str, *, trainer_zero_stage: int) -> str:
    """The case's label in the summary table of ``bench.py all``."""
    if case == TRAINER:
        return f"trainer training phase (ZeRO-{trainer_zero_stage}, loader included)"
    return f"bare DeepSpeed ZeRO-{case.removeprefix('zero')} step"


@dataclass(frozen=True)
class TrainPlan:
    """Models, shard set and step settings of the benchmark (the default is the full CPU plan)."""

    models: tuple[str, ...] = ("vit_tiny_patch16_224", "resnet18")
    num_photos: int = 7  # scikit-image photographs (at most 7) ...
    types: tuple[int, ...] = tuple(range(1, 26))  # ... x these KADID types x 5 levels
    image_side: int = 96  # stored images are image_side x image_side PNGs
    crop: int = 64  # random training crop side (and the ViT's input size)
    batch_size: int = 16  # per rank
    num_workers: int = 1  # loader workers per rank
    shard_workers: int = 1  # processes writing the shard set (each with one torch thread)
    world_size: int = 2  # ranks (on GPUs: at most one per visible GPU)
    warmup_epochs: int = 1
    epochs: int = 2  # timed epochs per repeat
    repeats: int = 3  # the shared machine's slow moments hit single runs by +-15%
    threads_per_rank: int = 0  # torch CPU threads per rank; 0 = cores // ranks
    step_stages: tuple[int, ...] = (0, 1)  # ZeRO stages of the bare DeepSpeed step cases (b)
    trainer_zero_stage: int = 0  # ZeRO stage of the trainer case (c); our CPU presets use 0
    timeout_s: float = 1800.0  # per model, all cases

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("TrainPlan.models: no model to measure")
        if not 1 <= self.num_photos <= 7:
            raise ValueError(
                f"TrainPlan.num_photos: must lie in 1..7 (scikit-image photographs), got {self.num_photos}"
            )
        if self.crop > self.image_side:
            raise ValueError(
                f"TrainPlan.crop: {self.crop} exceeds image_side={self.image_side} (images are never resized)"
            )
        for key in ("batch_size", "num_workers", "shard_workers", "world_size", "epochs", "repeats"):
            if getattr(self, key) < 1:
                raise ValueError(f"TrainPlan.{key}: must be >= 1, got {getattr(self, key)}")
        if self.warmup_epochs < 0 or self.threads_per_rank < 0:
            raise ValueError("TrainPlan.warmup_epochs and TrainPlan.threads_per_rank must be >= 0")
        if not set(self.step_stages) | {self.trainer_zero_stage} <= {0, 1, 2, 3}:
            raise ValueError(
                "TrainPlan.step_stages / trainer_zero_stage: ZeRO stages are 0-3,"
                f" got {self.step_stages} / {self.trainer_zero_stage}"
            )

    @property
    def cases(self) -> tuple[str, ...]:
        """Case names in measuring order: the DDP baseline, the bare steps, the trainer."""
        return (BASELINE, *(step_case(stage) for stage in self.step_stages), TRAINER)

    @property
    def engine_stages(self) -> tuple[int, ...]:
        """The ZeRO stages a worker builds an engine for."""
        return tuple(sorted(set(self.step_stages) | {self.trainer_zero_stage}))

    @staticmethod
    def quick() -> TrainPlan:
        """A smoke-run plan: one model, tiny crops, a few steps per epoch, one repeat."""
        return TrainPlan(
            models=("vit_tiny_patch16_224",),
            num_photos=4,
            types=(1, 11, 16, 21),
            image_side=48,
            crop=32,
            batch_size=8,
            epochs=1,
            repeats=1,
            timeout_s=600.0,
        )

    @staticmethod
    def gpu() -> TrainPlan:
        """The GPU check: ViT-L/16 at 224 crops, bf16 autocast on both sides (DDP and DeepSpeed), ZeRO-2 as
        ``configs/train/vit-large-multinode.yaml``, the torch loader where DALI is absent; 875 images written
        by 8 sharding processes, batch 64 (13 steps an epoch), one warm-up and three timed epochs per case.
        The GPU kit's ``train`` stage budgets it from this plan (``dist_syndr.bench.gpu_kit``: about
        100 s on one GPU, set-up included; an estimate, no GPU has run it yet)."""
        return TrainPlan(
            models=("vit_large_patch16_224",),
            image_side=256,
            crop=224,
            batch_size=64,
            num_workers=4,
            shard_workers=8,
            epochs=3,
            repeats=1,
            step_stages=(2,),  # the trainer reuses this engine
            trainer_zero_stage=2,
            timeout_s=300.0,
        )

    @staticmethod
    def for_this_machine() -> TrainPlan:
        """:meth:`gpu` where CUDA is visible, the CPU plan elsewhere."""
        from dist_syndr import runtime

        return TrainPlan.gpu() if runtime.has_cuda() else TrainPlan()

    @staticmethod
    def from_dict(values: dict) -> TrainPlan:
        """The plan from :func:`dataclasses.asdict` output (lists back to tuples)."""
        return TrainPlan(**{key: tuple(value) if isinstance(value, list) else value for key, value in values.items()})

    @property
    def num_samples(self) -> int:
        """Samples in the shard set (pristine images are not part of it)."""
        return self.num_photos * len(self.types) * 5


@dataclass(frozen=True)
class CaseResult:
    """One case of one model, as the worker reports it."""

    images_per_second: float  # per process, mean over ranks
    per_rank: tuple[float, ...]
    data_wait_share: float | None  # share of the epoch spent waiting for data (trainer, when it reports it)


@dataclass(frozen=True)
class ModelResult:
    """What the rank-0 worker reports for one model."""

    model: str
    cases: dict[str, CaseResult]
    flops_per_image: float  # forward + backward, counted by FlopCounterMode
    loader_images_per_second: float  # the loader alone, same epochs, no step
    trainer_loop_images_per_second: (
        float  # (c) as train_epoch's own meter sees it: its batch loop only (NaN if not reported)
    )
    steps_per_epoch: int
    world_size: int
    device: str
    dist_backend: str
    gpu_name: str
    loader: str
    threads: int
    trainer_zero_stage: int = 0

    @staticmethod
    def from_json(values: dict) -> ModelResult:
        """Parse the worker's JSON report."""
        cases = {
            name: CaseResult(case["images_per_second"], tuple(case["per_rank"]), case["data_wait_share"])
            for name, case in values["cases"].items()
        }
        return ModelResult(**{**values, "cases": cases})

    def mfu(self, case: str) -> float | None:
        """Model FLOPs utilisation of ``case`` on a known GPU; None on the CPU or an unknown GPU."""
        peak = peak_flops(self.gpu_name) if self.device == "cuda" else None
        if peak is None:
            return None
        return self.flops_per_image * self.cases[case].images_per_second / peak


def peak_flops(gpu_name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``gpu_name`` (:func:`dist_syndr.runtime.device_name`), if known."""
    for fragment, peak in PEAK_BF16_FLOPS.items():
        if fragment in gpu_name:
            return peak
    return None


def run(plan: TrainPlan) -> Report:
    """Build the shard set, measure every model of ``plan`` in its own set of rank processes; the report."""
    from dist_syndr.pools.embedded import PHOTOS
    from dist_syndr.sharding.photos import photo_shard_set

    results: dict[str, ModelResult | None] = {}
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        folder = Path(scratch)
        shard_root = folder / "shards" / "bench-train"
        # plan.shard_workers writers (one on small machines), each with one torch thread.
        photo_shard_set(
            shard_root,
            PHOTOS[: plan.num_photos],
            plan.types,
            size=plan.image_side,
            seed=0,
            num_workers=plan.shard_workers,
        )
        for model in plan.models:
            results[model] = launch(model, shard_root, plan, folder)
    return build_report(plan, results)


def build_report(plan: TrainPlan, results: dict[str, ModelResult | None]) -> Report:
    """The Markdown section and summary rows of measured ``results`` (None: the model failed)."""
    rows, notes, summary = [], [], []
    failures = tuple(f"{model}: failed or timed out" for model, result in results.items() if result is None)
    for model, result in results.items():
        if result is None:
            rows.append([model, "failed or timed out (see the worker log above)", "-", "-", "-", "-"])
            continue
        baseline = result.cases[BASELINE].images_per_second
        for case in result.cases:
            measured = result.cases[case]
            ratio = measured.images_per_second / baseline
            mfu = result.mfu(case)
            wait = measured.data_wait_share
            rows.append(
                [
                    model,
                    case_name(case, loader=result.loader, trainer_zero_stage=result.trainer_zero_stage),
                    f"{measured.images_per_second:.1f}",
                    "-" if wait is None else f"{100 * wait:.1f}%",
                    "-" if mfu is None else f"{100 * mfu:.1f}%",
                    "1.00x (baseline)" if case == BASELINE else format_ratio(ratio),
                ]
            )
            if case != BASELINE:
                ours = f"{measured.images_per_second:.1f} images/s per process" + (
                    "" if mfu is None else f", MFU {100 * mfu:.1f}%"
                )
                label = summary_name(case, trainer_zero_stage=result.trainer_zero_stage)
                summary.append(
                    SummaryRow(
                        "train",
                        f"{model}: {label}",
                        ours,
                        "plain DDP + Adam step",
                        f"{baseline:.1f} images/s per process",
                        ratio,
                    )
                )
        notes.append(
            f"- {model}: {result.flops_per_image / 1e9:.3f} GFLOP per image (forward + backward),"
            f" {result.steps_per_epoch} steps per epoch"
            f" per rank; the loader alone delivers {result.loader_images_per_second:.1f} images/s per process"
            " on the same epochs;"
            " inside train_epoch's batch loop (without building and closing the loader) (c) runs at"
            f" {result.trainer_loop_images_per_second:.1f} images/s"
            f" ({result.trainer_loop_images_per_second / baseline:.2f}x DDP)"
        )
    table = markdown_table(["model", "case", "images/s per process", "data wait", "MFU", "vs DDP"], rows)
    text = f"### Training step ({_setting(plan, results)})\n\n{table}"
    if notes:
        text += "\n\n" + "\n".join(notes)
    return Report(text, tuple(summary), failures)


def _setting(plan: TrainPlan, results: dict[str, ModelResult | None]) -> str:
    measured = next((r for r in results.values() if r is not None), None)
    where = "no model ran"
    if measured is not None:
        device = f"CPU, {measured.threads} torch threads per rank"
        if measured.device == "cuda":
            peak = peak_flops(measured.gpu_name)
            device = measured.gpu_name + (
                f" (MFU against its dense bf16 peak of {peak / 1e12:.0f} TFLOP/s)"
                if peak
                else " (peak unknown: no MFU)"
            )
        where = f"{measured.world_size} ranks on {measured.dist_backend}, {device}"
    return (
        f"{plan.num_samples} photo crops ({plan.num_photos} photos x {len(plan.types)} types x 5 levels)"
        f" of {plan.image_side}x{plan.image_side},"
        f" random init, {plan.crop}x{plan.crop} random crops, batch {plan.batch_size} per rank, {where},"
        f" {plan.num_workers} loader"
        f" workers per rank; {plan.epochs} timed epochs after {plan.warmup_epochs} warm-up, best of {plan.repeats}"
    )


# ---------------------------------------------------------------------------
# launching the ranks


def launch(model: str, shard_root: Path, plan: TrainPlan, folder: Path) -> ModelResult | None:
    """Run the worker as ``plan.world_size`` ranks (one per GPU on CUDA); rank 0's report, or None on failure."""
    from dist_syndr import runtime

    world_size = plan.world_size
    if runtime.has_cuda():
        world_size = min(world_size, runtime.cuda_device_count())
    result_path = folder / f"{model}.json"
    case = {
        "model": model,
        "shard_root": str(shard_root),
        "plan": dataclasses.asdict(plan),
        "result": str(result_path),
        "run_dir": str(folder / model),  # the trainer's checkpoints and per-rank records
    }
    port = runtime.free_port()
    log.info("train benchmark: %s on %d ranks (port %d)", model, world_size, port)
    processes, logs = [], []
    for rank in range(world_size):
        log_path = folder / f"{model}-rank{rank}.log"
        logs.append(log_path)
        with open(log_path, "w") as output:
            # A session of its own, so a hung rank and its loader workers can be stopped together.
            processes.append(
                subprocess.Popen(
                    [sys.executable, "-m", WORKER, json.dumps(case)],
                    env=_worker_env(rank, world_size, port),
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )
    is_ok = _wait_all(processes, plan.timeout_s)
    if not is_ok or not result_path.is_file():
        for log_path in logs:
            sys.stderr.write(f"--- {log_path.name} (last lines)\n{log_path.read_text()[-3000:]}\n")
        return None
    return ModelResult.from_json(json.loads(result_path.read_text()))


def _wait_all(processes: list[subprocess.Popen], timeout_s: float) -> bool:
    # Polls every rank: when one fails the others would wait for it until the process-group timeout.
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        codes = [process.poll() for process in processes]
        if any(code not in (None, 0) for code in codes):
            break
        if all(code == 0 for code in codes):
            return True
        time.sleep(0.5)
    for process in processes:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return False


def _worker_env(rank: int, world_size: int, port: int) -> dict[str, str]:
    from dist_syndr import runtime

    env = runtime.rank_environment(rank, world_size, port)
    # DeepSpeed compiles its CPU shared-memory comm op on first use (~40 s); cached here.
    env.setdefault("TORCH_EXTENSIONS_DIR", str(PROJECT_ROOT / ".cache" / "torch_extensions"))
    env.setdefault("MPLCONFIGDIR", str(PROJECT_ROOT / ".cache" / "matplotlib"))
    return env
