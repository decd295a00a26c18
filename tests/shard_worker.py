"""Writes a shard set from a folder of images: ``python -m tests.shard_worker SRC OUT [WORKERS]``."""

from __future__ import annotations

import sys
from pathlib import Path

from dist_syndr.sharding import writer


def items_from_folder(folder: Path) -> list[writer.WorkItem]:
    items = []
    for number, path in enumerate(sorted(folder.iterdir())):
        if path.suffix.lower() in (".png", ".bmp", ".jpg"):
            meta = {
                "ref": f"test/ref{number % 3}",
                "type": 1 + number % 25,
                "level": 1 + number % 5,
                "origin": "original",
                "source": "test",
            }
            items.append(
                writer.WorkItem(key=f"test/{path.stem}", source_path=str(path), score=(number % 11) * 1.0, meta=meta)
            )
    return items


def main() -> None:
    source, out = Path(sys.argv[1]), Path(sys.argv[2])
    workers = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    options = writer.WriteOptions(samples_per_shard=4, num_workers=workers)
    writer.write_shard_set(items_from_folder(source), out, options, {"test": True})


if __name__ == "__main__":
    main()
