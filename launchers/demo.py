"""``make demo``: the main job on embedded default data.

python launchers/demo.py [--config configs/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, config, demo, runtime, source

PROJECT_ROOT = source.PROJECT_ROOT


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs" / "demo.yaml")
    parser.add_argument("--fixtures", type=Path, default=PROJECT_ROOT.parent / "shared" / "fixtures")
    parser.add_argument(
        "--work-dir", type=Path, default=PROJECT_ROOT / ".cache" / "demo", help="photos, shards, runs, evaluations"
    )
    parser.add_argument(
        "--mlruns",
        type=Path,
        default=PROJECT_ROOT / "mlruns",
        help="local MLflow store (unless MLFLOW_TRACKING_URI is set)",
    )
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: configs/train/demo.yaml)")
    parser.add_argument("--reshape-only", action="store_true", help="only the reshaping stages on generated data")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    # ---- configuration and backends
    cfg = config.load(args.config, args.overrides)
    runtime.init(cfg.runtime)

    # ---- the stages
    paths = None if args.reshape_only else demo.DemoPaths(args.work_dir.resolve(), args.mlruns.resolve())
    for report in demo.run(cfg, args.fixtures if args.fixtures.is_dir() else None, paths, epochs=args.epochs):
        print(report + "\n", flush=True)
    return 0


if __name__ == "__main__":
    cli.run(main)
