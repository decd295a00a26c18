"""One rank of the node-local storage test: each rank plays a node with its own disk ``<root>/disk<rank>``.

python -m tests.node_copies_worker ROOT   (under tests.conftest.run_ranks; writes ROOT/result-<rank>.json)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def main(root: Path) -> None:
    rank = int(os.environ["RANK"])
    os.environ.update(CROSS_RANK=str(rank), LOCAL_RANK="0", LOCAL_SIZE="1")  # one rank per node
    from dist_syndr import runtime
    from dist_syndr.config import DataConfig
    from dist_syndr.loader.checks import verify_shards_once
    from dist_syndr.sharding.shard_set import ShardSet
    from dist_syndr.train.shard_digests import check_index_digests

    runtime.init()
    data = DataConfig(shard_storage="node-local")
    outcome = {}
    for case in ("same", "damaged-shard", "other-index"):
        shard_set = ShardSet(root / f"disk{rank}" / case)
        try:
            check_index_digests(root / "runs" / case, {"train": shard_set})
            verify_shards_once(shard_set, data)
            outcome[case] = "ok"
        except ValueError as error:
            outcome[case] = str(error)
    (root / f"result-{rank}.json").write_text(json.dumps(outcome))
    runtime.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
