"""One entry point for every on-disk dataset layout of docs/METHOD.md section 7.

``read_pool(kind, root, **options)`` dispatches to the reader registered under
``kind`` in :data:`READERS`; each reader takes the dataset's root folder (the
CSV file for ``"csv"``) first and keyword options after, and returns
:class:`~dist_syndr.pools.sample.Sample` records sorted by key with unique keys
``<source>/<name without extension>``. Readers with a label file accept
``on_missing="error"|"skip"`` for listed images absent on disk.

Shapes: none (records only).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from dist_syndr.pools.authentic import read_bid, read_koniq10k, read_livec
from dist_syndr.pools.candidates import read_kadid_add81, read_kadis700k
from dist_syndr.pools.generic import read_csv_pool, read_folder
from dist_syndr.pools.kadid import read_kadid10k
from dist_syndr.pools.sample import Sample
from dist_syndr.pools.synthetic_targets import read_csiq, read_live, read_pipal, read_tid2013

# Keyed by the values of config.PoolKind (tests/test_readers.py checks they agree).
READERS: dict[str, Callable[..., list[Sample]]] = {
    "kadid10k": read_kadid10k,
    "kadid_add81": read_kadid_add81,
    "kadis700k": read_kadis700k,
    "livec": read_livec,
    "koniq10k": read_koniq10k,
    "bid": read_bid,
    "pipal": read_pipal,
    "tid2013": read_tid2013,
    "live": read_live,
    "csiq": read_csiq,
    "csv": read_csv_pool,
    "folder": read_folder,
}


def read_pool(kind: str, root: str | Path, **options) -> list[Sample]:
    """The samples of the dataset at ``root`` read by the ``kind`` reader;
    ValueError listing the kinds for an unknown one.
    """
    reader = READERS.get(kind)
    if reader is None:
        raise ValueError(f"unknown pool kind {kind!r}; known kinds: {', '.join(sorted(READERS))}")
    return reader(root, **options)
