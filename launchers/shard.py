"""The sharding step: pool -> (distort) -> (features -> DDCUp) -> shards/<set>/.

    python launchers/shard.py --config configs/shard/<preset>.yaml [key=value ...]
    python launchers/shard.py --config configs/shard/<preset>.yaml --verify
    python launchers/shard.py --reindex shards/<set>      # bring an older set's index up to date
    python launchers/shard.py --describe shards/<set> [--records samples.jsonl]
    torchrun --nproc_per_node 2 launchers/shard.py --config ...   # ranks split the shards

A rerun (or a run after a kill) skips every finished shard whose checksum
still matches and writes only what is missing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, config, runtime
from dist_syndr.sharding import describe, writer
from dist_syndr.sharding import plan as shard_plan
from dist_syndr.sharding.reindex import reindex
from dist_syndr.sharding.shard_set import FORMAT_VERSION, ShardSet


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path)
    parser.add_argument("--verify", action="store_true", help="re-read and check an existing set, write nothing")
    parser.add_argument(
        "--reindex", type=Path, metavar="DIR", help="add member checksums, pixel digests and the format-2 index"
    )
    parser.add_argument("--describe", type=Path, metavar="DIR", help="print what a written set holds")
    parser.add_argument(
        "--records", type=Path, metavar="FILE", help="with --describe: also write one JSON line per sample"
    )
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    args = parser.parse_args(argv)
    if args.reindex is not None:
        done = reindex(args.reindex)
        print(
            f"{args.reindex}: index rewritten in format {FORMAT_VERSION}, member checksums added for "
            f"{done.num_checksums} samples, pixel digests for {done.num_digests}"
            if done.is_rewritten
            else f"{args.reindex}: up to date"
        )
        return 0
    if args.describe is not None:
        shard_set = ShardSet(args.describe)
        print(describe.summary_text(shard_set))
        if args.records is not None:
            count = describe.write_records(shard_set, args.records)
            print(f"{args.records}: {count} sample records")
        return 0
    if args.config is None:
        parser.error("--config is required (except with --reindex or --describe)")

    # ---- configuration, backends, output folder
    cfg = config.load(args.config, args.overrides)
    backends = runtime.init(cfg.runtime)
    out_dir = Path(cfg.shard.output_root) / cfg.shard.name

    # ---- verify only
    if args.verify:
        shard_set = ShardSet(out_dir)
        shard_set.verify(decode_images=True)
        counts = f"{len(shard_set)} samples in {len(shard_set.shards)} shards"
        print(f"{out_dir}: {counts} verified (checksums, members, images)")
        return 0

    # ---- plan, write, index
    options = writer.WriteOptions.from_config(cfg.shard, device=backends.device)  # engine batches on the GPU if any
    plan = shard_plan.run_shard_step(cfg, out_dir, options, rank=backends.rank, world_size=backends.world_size)
    if backends.rank == 0:
        shard_set = ShardSet(out_dir)
        print(shard_plan.summary(out_dir, shard_set, plan))
    runtime.shutdown()
    return 0


if __name__ == "__main__":
    cli.run(main)
