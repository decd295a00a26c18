"""The paper's ablation over seeds: baseline, +DDCUp, +DRCDown and both, on any preset, with error bars.

    python launchers/study.py --config configs/train/<preset>.yaml --seeds 3
    python launchers/study.py --config configs/train/cpu-smoke.yaml --seeds 2 --variants baseline,both --parallel 2
    python launchers/study.py --config configs/train/demo.yaml --seeds 10 --until-halfwidth 0.05   # a stopping rule

Every variant x seed trains as ``python -m dist_syndr.train`` (finished runs are
reused, unfinished ones resume), then one MLflow parent run gets the tables and
the figure and every training run as its child. Printed: per target, SRCC and
PLCC at LAST and at BEST (chosen on the test set) as mean ± sd over seeds, and
each variant's paired difference from the baseline with a bootstrap 95%
interval and a paired t-test.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, runtime
from dist_syndr.study.plan import VARIANTS, parse_variants
from dist_syndr.study.session import run_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="a training preset (configs/train/...)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per variant (the preset's seed onwards)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, from {', '.join(VARIANTS)}")
    parser.add_argument("--name", help="study name (default: <run_name>-study)")
    parser.add_argument("--parallel", type=int, default=1, help="trainings at once (CPU threads are shared out)")
    parser.add_argument(
        "--until-halfwidth", type=float, metavar="H",
        help="add seeds (3 first, --seeds at most) until the last variant's interval vs baseline (srcc@LAST) is ±H",
    )  # fmt: skip
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides for every run")
    args = parser.parse_args(argv)
    runtime.setup_logging("INFO")
    variants = parse_variants(args.variants)
    options = {"name": args.name, "parallel": args.parallel, "until_halfwidth": args.until_halfwidth}
    study = run_study(args.config, variants, args.seeds, args.overrides, **options)
    trained = sum(not outcome.was_reused for outcome in study.outcomes)
    print(study.markdown)
    print(
        f"{len(study.outcomes)} runs ({trained} trained now, {len(study.outcomes) - trained} reused); "
        f"tables and figure in {study.folder}; MLflow parent run {study.parent_run_id}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
