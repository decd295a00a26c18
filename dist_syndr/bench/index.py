"""Opening a shard set's index at a million samples: format 2 (header + memory-mapped columns) against
format 1 (one JSON record per sample, the index before it), each in a fresh process.

The set is generated (the index only: opening reads no tar), shaped like a KADIS-sized pool: keys
``kadis700k/<ref>_<type>_<level>``, five samples per reference, PNG and JSON members with
checksums, 1,000 samples per shard, a tenth of the samples DDCUp-upsampled.

Shapes: ``N`` generated samples.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr.bench.harness import Report, SummaryRow, child_main, markdown_table, run_child
from dist_syndr.sharding.shard_set import INDEX_NAME, ShardSet, write_index

MODULE = "dist_syndr.bench.index"


@dataclass(frozen=True)
class IndexPlan:
    """Sizes of the generated set."""

    num_samples: int = 1_000_000
    samples_per_shard: int = 1000
    lookups: int = 10_000  # random keys looked up after opening
    timeout_s: float = 600.0

    @staticmethod
    def quick() -> IndexPlan:
        return IndexPlan(num_samples=20_000, samples_per_shard=500, lookups=1000, timeout_s=120.0)


def generated_records(plan: IndexPlan, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(shards, records)`` of a synthetic set with ``plan.num_samples`` samples."""
    rng = np.random.default_rng(seed)
    count = plan.num_samples
    png_sizes = rng.integers(150_000, 400_000, count)
    json_sizes = rng.integers(150, 400, count)
    checksums = rng.integers(0, 2**63, (count, 2), dtype=np.int64)
    scores = rng.uniform(0.0, 10.0, count)
    records, shards, position, shard_number = [], [], 0, -1
    for row in range(count):
        if row % plan.samples_per_shard == 0:
            shard_number, position = shard_number + 1, 512
            shards.append({"name": f"shard-{shard_number:06d}.tar", "num_samples": 0, "bytes": 0, "sha256": "0" * 64})
        ref, distortion, level = row // 5, 1 + (row // 5) % 25, 1 + row % 5
        png, meta = int(png_sizes[row]), int(json_sizes[row])
        records.append(
            {
                "key": f"kadis700k/{ref:06d}_{distortion:02d}_{level:02d}",
                "shard": shards[-1]["name"],
                "members": {"png": [position, png], "json": [position + png + 512, meta]},
                "xxh3_64": {"png": int(checksums[row, 0]), "json": int(checksums[row, 1])},
                "score": float(scores[row]),
                "ref": f"kadis700k/ref_imgs/{ref:06d}.png",
                "type": distortion,
                "level": level,
                "origin": "upsampled" if row % 10 == 9 else "original",
                "source": "kadis700k",
            }
        )
        position += png + meta + 2048
        shards[-1]["num_samples"] += 1
        shards[-1]["bytes"] = position + 1024
    return shards, records


def write_both(plan: IndexPlan, root: Path) -> dict[str, float]:
    """Write the generated index in format 2 (``root/v2``) and format 1 (``root/v1``); returns their sizes in MB
    and the write times in seconds."""
    shards, records = generated_records(plan)
    facts = {}
    started = time.perf_counter()
    write_index(root / "v2", config={"bench": True}, shards=shards, records=records, skipped=[])
    facts["v2_write_s"] = time.perf_counter() - started
    started = time.perf_counter()
    (root / "v1").mkdir()
    document = {"version": 1, "config": {"bench": True}, "shards": shards, "samples": records, "skipped": []}
    (root / "v1" / INDEX_NAME).write_text(json.dumps(document, indent=1, sort_keys=True))
    facts["v1_write_s"] = time.perf_counter() - started
    facts["v2_mb"] = sum(path.stat().st_size for path in (root / "v2").iterdir()) / 1e6
    facts["v1_mb"] = (root / "v1" / INDEX_NAME).stat().st_size / 1e6
    return facts


def _open_case(case: dict):
    """Child: open the set (and build the loader's sample table with ``table``), then look keys up."""
    rss_before = _proc_status_mb("VmRSS")

    def work() -> tuple[str, dict]:
        started = time.perf_counter()
        shard_set = ShardSet(case["root"])
        opened = time.perf_counter()
        rng = np.random.default_rng(1)
        rows = rng.integers(0, len(shard_set), case["lookups"])
        keys = [shard_set.columns.keys[int(row)] for row in rows]
        found = [shard_set.by_key[key].members["png"][0] for key in keys]
        lookup_s = time.perf_counter() - opened
        detail = {"open_s": opened - started, "rss_before_mb": rss_before, "lookup_us": 1e6 * lookup_s / len(keys)}
        if case.get("table"):
            from dist_syndr.loader.members import SampleTable

            built = time.perf_counter()
            SampleTable.from_shard_set(shard_set)
            detail["table_s"] = time.perf_counter() - built
        detail["peak_rss_mb"] = _proc_status_mb("VmHWM")
        return str(sum(found)), detail

    return work


def _proc_status_mb(field: str) -> float:
    """A memory figure of this process from ``/proc/self/status``, in MB. ``VmHWM`` (peak RSS) starts afresh at
    exec, unlike ``ru_maxrss``, which a child started from a large parent inherits."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def run(plan: IndexPlan) -> Report:
    """Generate the set, open it in both formats in fresh processes; the Markdown report and summary rows."""
    with tempfile.TemporaryDirectory(prefix="bench-index-") as scratch:
        root = Path(scratch)
        facts = write_both(plan, root)
        cases = {"v2": ("v2", False), "v1": ("v1", False), "v2-table": ("v2", True)}
        measured = {
            name: run_child(MODULE, _case(root / folder, plan, table), plan.timeout_s)
            for name, (folder, table) in cases.items()
        }
    return _report(plan, facts, measured)


def _case(root: Path, plan: IndexPlan, table: bool) -> dict:
    return {"op": "open", "root": str(root), "lookups": plan.lookups, "table": table}


def _report(plan: IndexPlan, facts: dict, measured: dict) -> Report:
    v1, v2, table = measured["v1"], measured["v2"], measured["v2-table"]
    if v2 is None or v1 is None or v1.digest != v2.digest:
        raise RuntimeError("the index benchmark failed or the two formats disagree on the looked-up members")

    def cells(name: str, m, size_mb: float, write_s: float) -> list[str]:
        d = m.detail
        figures = (d["open_s"], d["peak_rss_mb"], d["rss_before_mb"], d["lookup_us"])
        formats = ("{:.3f}", "{:.0f}", "{:.0f}", "{:.1f}")
        return [
            name,
            f"{size_mb:.1f}",
            f"{write_s:.1f}",
            *(f.format(x) for f, x in zip(formats, figures, strict=True)),
        ]

    header = ["index", "size (MB)", "write (s)", "open (s)", "peak RSS (MB)", "RSS after imports (MB)", "lookup (us)"]
    rows = [
        cells("format 1: one JSON record per sample (baseline)", v1, facts["v1_mb"], facts["v1_write_s"]),
        cells("format 2: JSON header + memory-mapped columns", v2, facts["v2_mb"], facts["v2_write_s"]),
    ]
    speed = v1.detail["open_s"] / v2.detail["open_s"]
    memory = (v1.detail["peak_rss_mb"] - v1.detail["rss_before_mb"]) / max(
        v2.detail["peak_rss_mb"] - v2.detail["rss_before_mb"], 1.0
    )
    text = (
        f"### Opening a {plan.num_samples:,}-sample shard set (fresh process each; {plan.lookups:,} random key "
        f"lookups after opening)\n\n{markdown_table(header, rows)}\n\n"
        f"Format 2 opens {speed:.1f}x faster than format 1 and adds {memory:.1f}x less to the RSS after imports; "
        "both give the same members for the looked-up keys."
    )
    if table is not None:
        text += (
            f" Building the loader's sample table after opening (what every training rank does) takes "
            f"{table.detail['table_s']:.2f} s more, {table.detail['peak_rss_mb']:.0f} MB peak RSS in all."
        )
    summary = SummaryRow(
        "index",
        f"open a {plan.num_samples:,}-sample set (format 2)",
        f"{v2.detail['open_s']:.2f} s, {v2.detail['peak_rss_mb']:.0f} MB",
        "format 1 index.json",
        f"{v1.detail['open_s']:.2f} s, {v1.detail['peak_rss_mb']:.0f} MB",
        v1.detail["open_s"] / v2.detail["open_s"],
    )
    return Report(text, (summary,))


if __name__ == "__main__":
    child_main({"open": _open_case})
