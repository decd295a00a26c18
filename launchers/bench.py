"""Benchmarks, each beside a baseline measured in the same run.

    python launchers/bench.py reshape [--quick] [--out bench-results/reshape.md]
    python launchers/bench.py shard [--quick]
    python launchers/bench.py all [--quick]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dist_syndr import runtime
from dist_syndr.bench import loader, reshape, shard

BENCHMARKS = {
    "reshape": lambda quick: reshape.run(reshape.ReshapePlan.quick() if quick else reshape.ReshapePlan()),
    "shard": lambda quick: shard.run(shard.ShardPlan.quick() if quick else shard.ShardPlan()),
    "loader": lambda quick: loader.run(loader.LoaderPlan.quick() if quick else loader.LoaderPlan()),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("benchmark", choices=[*BENCHMARKS, "all"])
    parser.add_argument("--quick", action="store_true", help="small sizes; a smoke run in under a minute")
    parser.add_argument("--out", type=Path, default=None, help="also write the Markdown report here")
    args = parser.parse_args(argv)
    runtime.setup_logging("INFO")

    names = list(BENCHMARKS) if args.benchmark == "all" else [args.benchmark]
    report = "\n\n".join(f"## {name}\n\n{BENCHMARKS[name](args.quick)}" for name in names)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        temporary = args.out.with_name(f".{args.out.name}.tmp")
        temporary.write_text(report + "\n")
        temporary.replace(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
