"""What a written shard set holds, for people and plain tools: a summary and a JSON-lines export.

``launchers/shard.py --describe DIR`` prints :func:`summary_text`; ``--records FILE`` adds one
JSON line per sample (format 1's record fields), so ``jq``, pandas or a spreadsheet can read the
index of a format-2 set without this package.

Shapes: ``N`` samples.
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

import numpy as np

from dist_syndr import files
from dist_syndr.sharding.shard_set import ShardSet

# How DALI turns each image member into pixels on a GPU machine (the CPU pipeline decodes or inflates them all).
ON_A_GPU = {
    "lz4": "inflated on the GPU",
    "jpg": "nvJPEG on the GPU",
    "jpeg": "nvJPEG on the GPU",
    "png": "decoded on the CPU",
    "bmp": "decoded on the CPU",
}


def summary(shard_set: ShardSet) -> dict:
    """Counts and ranges of the set: samples by origin and source, shards and their bytes, scores,
    member extensions, image members by format, whether member checksums and pixel digests are recorded,
    skipped inputs."""
    columns = shard_set.columns
    scores = columns.scores
    scored = scores[~np.isnan(scores)]
    origins = columns.origins.tolist()
    sources = columns.sources.tolist()
    return {
        "root": str(shard_set.root),
        "format": shard_set.format_version,
        "samples": len(shard_set),
        "by_origin": _counts(origins, columns.origin_codes),
        "by_source": _counts(sources, columns.source_codes),
        "shards": len(shard_set.shards),
        "shard_bytes": sum(info.bytes for info in shard_set.shards.values()),
        "extensions": list(columns.extensions),
        "images": _image_counts(shard_set),
        "member_checksums": shard_set.has_member_checksums,
        "pixel_digests": int(columns.has_pixel_digests.sum()),
        "scores": {
            "labelled": len(scored),
            "unlabelled": len(scores) - len(scored),
            "min": float(scored.min()) if len(scored) else None,
            "max": float(scored.max()) if len(scored) else None,
            "mean": float(scored.mean()) if len(scored) else None,
        },
        "skipped": len(shard_set.skipped),
    }


def summary_text(shard_set: ShardSet) -> str:
    """:func:`summary` as a few aligned lines."""
    facts = summary(shard_set)
    scores = facts["scores"]
    score_line = (
        f"{scores['labelled']} labelled, range [{scores['min']:.3f}, {scores['max']:.3f}], mean {scores['mean']:.3f}"
        if scores["labelled"]
        else "none labelled"
    )
    checksums = "recorded" if facts["member_checksums"] else "absent (add them with --reindex)"
    num_digests = facts["pixel_digests"]
    digests = (
        "recorded"
        if num_digests == facts["samples"]
        else f"for {num_digests} of {facts['samples']} samples (evaluation crops of the others are keyed by their "
        "bytes; add them with --reindex)"
    )
    lines = [
        f"{facts['root']}: index format {facts['format']}",
        f"  samples    {facts['samples']} ({_joined(facts['by_origin'])})",
        f"  sources    {_joined(facts['by_source']) or '-'}",
        f"  shards     {facts['shards']} tars, {facts['shard_bytes'] / 1e6:.1f} MB",
        f"  members    {', '.join(facts['extensions'])}; checksums {checksums}",
        f"  images     {_joined_formats(facts['images'])}",
        f"  pixels     digests {digests}",
        f"  scores     {score_line}; {scores['unlabelled']} unlabelled",
        f"  skipped    {facts['skipped']} unreadable input(s)",
    ]
    return "\n".join(lines)


def write_records(shard_set: ShardSet, path: Path) -> int:
    """Write one JSON line per sample to ``path`` atomically; returns the number written."""
    count = 0
    with files.atomic_path(path) as temporary, temporary.open("w") as handle:
        for record in shard_set.records():
            handle.write(json.dumps(record, sort_keys=True) + "\n")
            count += 1
    return count


def _image_counts(shard_set: ShardSet) -> dict[str, int]:
    columns = shard_set.columns
    if not len(columns):
        return {}
    tally = np.bincount(columns.image_columns(), minlength=len(columns.extensions))
    return {extension: int(tally[column]) for column, extension in enumerate(columns.extensions) if tally[column]}


def _joined_formats(counts: dict[str, int]) -> str:
    parts = [
        f"{count} {extension} ({ON_A_GPU.get(extension, 'decoded on the CPU')})" for extension, count in counts.items()
    ]
    return ", ".join(parts) or "-"


def _counts(names: list[str], codes: np.ndarray) -> dict[str, int]:
    tally = collections.Counter(np.asarray(codes).tolist())
    return {names[code]: tally[code] for code in sorted(tally) if code >= 0}


def _joined(counts: dict[str, int]) -> str:
    return ", ".join(f"{count} {name or '(none)'}" for name, count in counts.items())
