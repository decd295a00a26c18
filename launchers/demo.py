"""``make demo``: the main job on embedded default data.

    python launchers/demo.py [--config configs/demo.yaml] [key=value ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dist_syndr import config, demo, runtime

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=PROJECT_ROOT / "configs" / "demo.yaml")
    parser.add_argument("--fixtures", type=Path, default=PROJECT_ROOT.parent / "shared" / "fixtures")
    parser.add_argument("--work-dir", type=Path, default=PROJECT_ROOT / ".cache" / "demo", help="demo photos and shards")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)

    # ---- configuration and backends
    cfg = config.load(args.config, args.overrides)
    runtime.init(cfg.runtime)

    # ---- the stages
    print(demo.run(cfg, args.fixtures if args.fixtures.is_dir() else None, args.work_dir), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
