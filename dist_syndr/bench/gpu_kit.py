"""The GPU check kit's profiles (``scripts/gpu_kit.sh``): stages, their budgets derived from the plans they run.

The lent machine takes one command of at most 10 minutes per call and 15
minutes of device time in all. The **core** profile fits one call: every stage
below within a budget estimated from the plan it runs (:class:`Assumptions`
times a margin), the budgets summing to at most :data:`CORE_LIMIT_S`:

1. ``install``: the carried wheels (DeepSpeed's pure-Python wheel and the few
   small packages the machine lacks) into a folder on ``PYTHONPATH``, then imports;
2. ``preflight``: versions, the GPU, and its two ceilings measured with CUDA
   events (bf16 GEMM rate, device copy bandwidth);
3. ``gpu-tests``: the ``gpu``-marked tests that need no DALI (each capped by
   ``tests/timeout_cap.py``);
4. ``reshape``: DRCDown's exact search at 1M x 768 through ``torch-cuda`` against
   its GEMM floor (``bench.py reshape --scale million --gpu-only``);
5. ``train``: ViT-L/16 bf16 through the trainer (ZeRO-2, torch loader) against bare
   DDP, with MFU (``bench.py train``: :meth:`TrainPlan.gpu`);
6. ``score``: the scoring job against the one-at-a-time loop on the GPU
   (``bench.py score``: :meth:`ScorePlan.gpu`).

The optional **dali** profile installs DALI too (its wheel reaches the machine in
parts over several calls) and runs the DALI-marked GPU tests and ``bench.py loader``.
A dry run (``--dry-run``) starts every stage in its CPU form with tiny sizes.

python -m dist_syndr.bench.gpu_kit budgets core|dali
python -m dist_syndr.bench.gpu_kit run core|dali --out DIR --site DIR --wheels DIR [--dry-run] [--only S,..]
    [--budget STAGE=SECONDS]
python -m dist_syndr.bench.gpu_kit install core|dali --site DIR --wheels DIR [--dry-run]
python -m dist_syndr.bench.gpu_kit preflight --out FILE [--dry-run]

Shapes: none (the ceilings use ``(n, n)`` bf16 matrices, n = 8192).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dist_syndr.bench.stage_runner import REPORT, Stage

PROJECT_ROOT = Path(__file__).resolve().parents[2]
CORE_LIMIT_S = 540.0  # 9 minutes: the device tool's 10-minute command limit, less start-up and transfers
DRY_TRAIN_REPEATS = ("--repeats", "60")  # dry run: its timed epochs take ~1 s, so the ranks outlive a 50 s cut
DRY_RUN_BUDGET_S = 600.0  # a dry run's stages on a small shared CPU: plumbing, not the device's timing
TEST_CAP_S = 90.0  # no single gpu test may run longer (tests/timeout_cap.py overrides their own markers)
GPU_TESTS_BUDGET_S = 120.0
DALI_TEST_CAP_S = 200.0
Profile = Literal["core", "dali"]
PROFILES: tuple[Profile, ...] = ("core", "dali")
CORE_IMPORTS = ("deepspeed", "webdataset", "wids", "piq", "openpyxl", "pydantic", "hjson")
DALI_IMPORTS = ("nvidia.dali",)

# Model FLOPs of one forward pass at 224x224: 2 x parameters x 197 tokens, plus attention.
FORWARD_FLOPS = {"vit_large_patch16_224": 1.24e11, "vit_base_patch16_224": 3.5e10, "vit_tiny_patch16_224": 2.5e9}


@dataclass(frozen=True)
class Assumptions:
    """What the budgets assume of the lent machine (H100 or H200, 16 cores): leads, not this project's
    measurements on it, since no GPU has run it yet. GEMM rates are below the 769-798 TFLOP/s bf16 that
    the device notes (KINDS.md) saw on 8192^3 products; CPU rates were measured on this project's machine."""

    gemm_flops_per_s: float = 400e12  # DRCDown's bf16 tiles (half the measured ceiling)
    train_flops_per_s: float = 200e12  # a ViT-L/16 bf16 training step, about 20% of a 989 TFLOP/s peak
    inference_flops_per_s: float = 40e12  # scoring forward passes, fp32 eager the slowest case
    process_start_s: float = 15.0  # a Python process importing torch and timm and creating the CUDA context
    pool_rows_per_s: float = 60e3  # kadid_like_pool at D=768 on one core (measured: 66k rows/s)
    non_gemm_s_per_million: float = 45.0  # DRCDown's work outside the GEMMs at 1M (CPU rows: 269 s - 224 s)
    shard_images_per_s: float = 6.0  # per sharding worker, 256x256 photo crops with weak labels (measured: 6.4)
    decode_images_per_s: float = 300.0  # per loader worker, a 256x256 PNG decoded and cropped
    jpeg_decodes_per_s: float = 150.0  # a 512x384 JPEG through PIL in the one-at-a-time loop
    engine_setup_s: float = 30.0  # DeepSpeed's import and engines, ViT-L built and copied three times
    margin: float = 1.3


def _budget(estimate_s: float, assumptions: Assumptions) -> float:
    return 5.0 * math.ceil(estimate_s * assumptions.margin / 5.0)


def reshape_estimate_s(plan, a: Assumptions) -> float:
    """``bench.py reshape --scale million --gpu-only``: per size, two children (ours and the GEMM floor),
    each building the pool, both running the banded GEMMs, ours also its work outside them."""
    total = 0.0
    for size in plan.sizes:
        band_flops = 0.21 * size * size * plan.dim  # a fifth of all N^2 / 2 pairs, 2 D FLOP each (measured share)
        child = a.process_start_s + size / a.pool_rows_per_s + band_flops / a.gemm_flops_per_s
        total += 2 * child + a.non_gemm_s_per_million * size / 1e6
    return total


def train_estimate_s(plan, a: Assumptions) -> float:
    """``bench.py train``: the shard set, the ranks' set-up, decoding every epoch, then every case's epochs."""
    steps = plan.num_samples // plan.batch_size
    epochs_run = len(plan.cases) * (plan.warmup_epochs + plan.epochs * plan.repeats)
    flops = 3 * FORWARD_FLOPS[plan.models[0]] * epochs_run * steps * plan.batch_size
    decoded = 2 * (plan.warmup_epochs + plan.epochs) * plan.num_samples  # the decode pass and the trainer's own
    return (
        2 * a.process_start_s
        + plan.num_samples / (plan.shard_workers * a.shard_images_per_s)
        + a.engine_setup_s
        + decoded / (plan.num_workers * a.decode_images_per_s)
        + flops / a.train_flops_per_s
    )


def score_estimate_s(plan, a: Assumptions) -> float:
    """``bench.py score``: per protocol and case, the model loaded, then each repeat's loop and job."""
    total = a.process_start_s + 5.0  # the run folder: weights saved, JPEGs written
    for _, crops in plan.protocols:
        for _ in plan.cases:
            forward = plan.num_images * crops * FORWARD_FLOPS[plan.model] / a.inference_flops_per_s
            loop = plan.num_images / a.jpeg_decodes_per_s + forward
            total += 5.0 + plan.repeats * (loop + forward)
    return total


def stages(
    profile: Profile, *, is_dry_run: bool, site: Path, wheels: list[Path], a: Assumptions = Assumptions()
) -> list[Stage]:
    """The stages of ``profile``; a dry run's in their CPU form with tiny sizes and CPU allowances."""
    python, bench = sys.executable, str(PROJECT_ROOT / "launchers" / "bench.py")
    quick = ("--quick",) if is_dry_run else ()
    dry = ("--dry-run",) if is_dry_run else ()
    repeats = DRY_TRAIN_REPEATS if is_dry_run else ()  # long enough that a test can cut it while its ranks run
    kit = (python, "-m", "dist_syndr.bench.gpu_kit")
    wheel_args = tuple(arg for folder in wheels for arg in ("--wheels", str(folder)))
    install_s = 30.0 if profile == "core" else 90.0  # pip over ~6 MB of wheels and the imports; DALI: 270 MB more
    chosen = [
        Stage("install", (*kit, "install", profile, "--site", str(site), *wheel_args, *dry), install_s,
              "the carried wheels over the machine's own torch, then every import", is_required=True),
        Stage("preflight", (*kit, "preflight", "--out", REPORT, *dry), 25.0,
              "versions, the GPU, its bf16 GEMM rate and copy bandwidth (CUDA events)", is_required=True),
    ]  # fmt: skip
    if profile == "core":
        budgets = {name: _budget(seconds, a) for name, seconds in estimates("core", a).items()}
        chosen += [
            Stage("gpu-tests", _pytest("gpu and not dali and not slow", TEST_CAP_S), GPU_TESTS_BUDGET_S,
                  "the gpu-marked tests without DALI: GPU results against the CPU's"),
            Stage("reshape", (python, bench, "reshape", "--scale", "million", "--gpu-only", *quick, "--out", REPORT),
                  budgets["reshape"],
                  "DRCDown's exact search at 1M x 768 (torch-cuda) against its GEMM floor (CUDA events)"),
            Stage("train", (python, bench, "train", *quick, *repeats, "--out", REPORT), budgets["train"],
                  "ViT-L/16 bf16 through the trainer (ZeRO-2, torch loader) against bare DDP; MFU"),
            Stage("score", (python, bench, "score", *quick, "--out", REPORT), budgets["score"],
                  "the scoring job against the one-at-a-time loop on the GPU"),
        ]  # fmt: skip
    else:
        chosen += [
            Stage("dali-tests", _pytest("gpu and dali", DALI_TEST_CAP_S), 240.0,
                  "the DALI-marked GPU tests: the mixed decoder against the PIL reference, a ZeRO-2 run"),
            Stage("loader", (python, bench, "loader", *quick, "--out", REPORT), 120.0,
                  "DALI's mixed decoder and the torch loader against webdataset + PIL"),
        ]  # fmt: skip
    if is_dry_run:
        return [dataclasses.replace(stage, budget_s=DRY_RUN_BUDGET_S) for stage in chosen]
    return chosen


def estimates(profile: Profile, a: Assumptions = Assumptions()) -> dict[str, float]:
    """Each benchmark stage's estimated seconds, from the plan it runs (the other stages have fixed budgets)."""
    from dist_syndr.bench.reshape_scale import ScalePlan
    from dist_syndr.bench.score import ScorePlan
    from dist_syndr.bench.train import TrainPlan

    if profile != "core":
        return {}
    return {
        "reshape": reshape_estimate_s(ScalePlan.gpu(), a),
        "train": train_estimate_s(TrainPlan.gpu(), a),
        "score": score_estimate_s(ScorePlan.gpu(), a),
    }


def _pytest(marks: str, cap_s: float) -> tuple[str, ...]:
    """pytest over the test files holding gpu-marked tests (collecting only those keeps the stage short)."""
    test_files = sorted(
        str(path.relative_to(PROJECT_ROOT))
        for path in (PROJECT_ROOT / "tests").glob("test_*.py")
        if "@pytest.mark.gpu" in path.read_text()
    )
    return (
        sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "-p", "tests.timeout_cap",
        "--timeout-cap", f"{cap_s:.0f}", "-m", marks, *test_files,
    )  # fmt: skip


def budget_table(profile: Profile) -> str:
    """The stage table ``prepare`` prints: budget, the estimate it was derived from, and each stage's job."""
    chosen = stages(profile, is_dry_run=False, site=Path("SITE"), wheels=[])
    estimated = estimates(profile)
    lines = [f"  {'stage':<11}{'budget':>8}{'estimate':>10}  measures"]
    for stage in chosen:
        estimate = f"{estimated[stage.name]:.0f} s" if stage.name in estimated else "fixed"
        lines.append(f"  {stage.name:<11}{stage.budget_s:>6.0f} s{estimate:>10}  {stage.job}")
    total = sum(stage.budget_s for stage in chosen)
    lines.append(f"  {'in all':<11}{total:>6.0f} s  (at most {CORE_LIMIT_S:.0f} s in one call)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# the command line


def _apply_overrides(chosen: list[Stage], only: str | None, budgets: list[str]) -> list[Stage]:
    names = {stage.name for stage in chosen}
    overrides = {}
    for item in budgets:
        name, _, seconds = item.partition("=")
        if name not in names or not seconds.replace(".", "", 1).isdigit():
            raise ValueError(f"--budget {item}: expected STAGE=SECONDS with STAGE one of {sorted(names)}")
        overrides[name] = float(seconds)
    wanted = set(only.split(",")) if only else names
    if not wanted <= names:
        raise ValueError(f"--only {only}: unknown stage(s) {sorted(wanted - names)}; stages: {sorted(names)}")
    return [
        dataclasses.replace(stage, budget_s=overrides.get(stage.name, stage.budget_s))
        for stage in chosen
        if stage.name in wanted or stage.is_required
    ]


def _run(args) -> int:
    import os

    from dist_syndr.bench.stage_runner import run_stages

    chosen = stages(args.profile, is_dry_run=args.dry_run, site=args.site, wheels=args.wheels)
    chosen = _apply_overrides(chosen, args.only, args.budget)
    path = os.pathsep.join([str(args.site), str(PROJECT_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"}
    title = f"{args.profile} profile" + (" (dry run: CPU forms, tiny sizes)" if args.dry_run else "")
    results = run_stages(chosen, args.out, title=title, env=env, cwd=PROJECT_ROOT)
    for name in ("results.md", "summary.txt"):
        if (args.out / name).is_file():
            print(f"\n----- {name}\n{(args.out / name).read_text()}", flush=True)
    return 0 if all(result.status == "ok" for result in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    budgets = commands.add_parser("budgets", help="the stage table of a profile")
    budgets.add_argument("profile", choices=PROFILES)
    run = commands.add_parser("run", help="every stage of a profile, results under --out")
    run.add_argument("profile", choices=PROFILES)
    run.add_argument("--out", type=Path, required=True)
    run.add_argument("--only", default=None, help="comma-separated stages (install and preflight always run)")
    run.add_argument("--budget", action="append", default=[], help="STAGE=SECONDS, overriding a stage's budget")
    install = commands.add_parser("install", help="the carried wheels into --site, then the profile's imports")
    install.add_argument("profile", choices=PROFILES)
    for command in (run, install):
        command.add_argument("--site", type=Path, required=True)
        command.add_argument("--wheels", type=Path, action="append", default=[])
        command.add_argument("--dry-run", action="store_true")
    preflight = commands.add_parser("preflight", help="versions, the GPU and its ceilings")
    preflight.add_argument("--out", type=Path, required=True)
    preflight.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    from dist_syndr import runtime

    runtime.setup_logging("INFO")
    if args.command == "budgets":
        print(budget_table(args.profile))
        return 0
    if args.command == "run":
        return _run(args)
    from dist_syndr.bench import gpu_kit_steps

    if args.command == "install":
        imports = CORE_IMPORTS + (DALI_IMPORTS if args.profile == "dali" else ())
        return gpu_kit_steps.install(args.wheels, args.site, imports, is_dry_run=args.dry_run)
    return gpu_kit_steps.preflight(args.out, is_dry_run=args.dry_run)


if __name__ == "__main__":
    from dist_syndr import cli

    cli.run(main)
