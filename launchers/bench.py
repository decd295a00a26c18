"""Benchmarks, each beside a baseline measured in the same run.

python launchers/bench.py reshape [--quick] [--out bench-results/reshape.md]
python launchers/bench.py reshape --scale million [--quick]   # DRCDown's exact search, 60k to 1M x 768
python launchers/bench.py reshape --scale million --gpu-only  # 1M x 768 on the GPU against its GEMM floor alone
python launchers/bench.py shard [--quick]
python launchers/bench.py loader [--quick]
python launchers/bench.py index [--quick]     # opening a 1M-sample shard set: format 2 vs format 1
python launchers/bench.py score [--quick]     # score.py against a one-image-at-a-time loop (on the GPU if any)
python launchers/bench.py train [--quick]     # 2 ranks: DDP vs DeepSpeed vs the trainer
python launchers/bench.py all [--quick]       # every benchmark, one report with a summary table on top
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path

from dist_syndr import cli, files, runtime, source
from dist_syndr.bench import harness, index, loader, reshape, reshape_scale, score, shard, train

BENCHMARKS = {
    "reshape": lambda quick: reshape.run(reshape.ReshapePlan.quick() if quick else reshape.ReshapePlan()),
    "shard": lambda quick: shard.run(shard.ShardPlan.quick() if quick else shard.ShardPlan()),
    "loader": lambda quick: loader.run(loader.LoaderPlan.quick() if quick else loader.LoaderPlan()),
    "index": lambda quick: index.run(index.IndexPlan.quick() if quick else index.IndexPlan()),
    "score": lambda quick: score.run(score.ScorePlan.quick() if quick else score.ScorePlan.for_this_machine()),
    "train": lambda quick: train.run(train.TrainPlan.quick() if quick else train.TrainPlan.for_this_machine()),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument(
        "--quick", action="store_true", help="small sizes; a smoke run in about a minute per benchmark"
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    parser.add_argument(
        "--scale",
        choices=["default", "million"],
        default="default",
        help="reshape only: 'million' measures DRCDown's exact search at 60k, 200k and 1M x 768 (about an hour)",
    )
    parser.add_argument(
        "--gpu-only", action="store_true", help="with --scale million: the GPU rows at 1M alone, no CPU baselines"
    )
    parser.add_argument("--repeats", type=int, help="train only: timed repeats of every case (best of them)")
    args = parser.parse_args(argv)
    if args.scale == "million" and args.benchmark != "reshape":
        parser.error("--scale million applies to the reshape benchmark only")
    if args.gpu_only and args.scale != "million":
        parser.error("--gpu-only applies to reshape --scale million only")
    if args.repeats is not None and (args.benchmark != "train" or args.repeats < 1):
        parser.error("--repeats applies to the train benchmark only, and must be >= 1")
    runtime.setup_logging("INFO")
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(source.PROJECT_ROOT / ".cache" / "torch_extensions"))

    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    benchmarks = dict(BENCHMARKS)
    if args.repeats is not None:
        plan = train.TrainPlan.quick() if args.quick else train.TrainPlan.for_this_machine()
        benchmarks["train"] = lambda quick: train.run(dataclasses.replace(plan, repeats=args.repeats))
    if args.scale == "million":
        plans = {(False, False): reshape_scale.ScalePlan(), (True, False): reshape_scale.ScalePlan.quick()}
        plans |= {(False, True): reshape_scale.ScalePlan.gpu(), (True, True): reshape_scale.ScalePlan.gpu_quick()}
        plan = plans[args.quick, args.gpu_only]
        benchmarks["reshape"] = lambda quick: reshape_scale.run(plan)
    reports = {name: benchmarks[name](args.quick) for name in names}
    text = (
        combined_report(reports)
        if args.benchmark == "all"
        else "\n\n".join(f"## {name}\n\n{report}" for name, report in reports.items())
    )
    print(text)
    if args.out is not None:
        files.write_text(args.out, text + "\n")
    failures = [failure for report in reports.values() for failure in report.failures]
    for failure in failures:
        print(f"bench: {failure}", file=sys.stderr)
    return 1 if failures else 0


def combined_report(reports: dict[str, harness.Report]) -> str:
    """One Markdown document: the summary table of every case, then each benchmark's own section."""
    rows = [row for report in reports.values() for row in report.rows]
    sections = [f"## Summary (ratio > 1: ours is faster than its baseline)\n\n{harness.summary_table(rows)}"]
    sections += [f"## {name}\n\n{report}" for name, report in reports.items()]
    return "\n\n".join(sections)


if __name__ == "__main__":
    cli.run(main)
