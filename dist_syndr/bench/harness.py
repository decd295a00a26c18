"""Run one benchmark case in a child process and collect time, peak memory and a result digest.

Also the common result form of every benchmark: a :class:`Report` holds the
Markdown text and one :class:`SummaryRow` per case measured against a
baseline, which ``bench.py all`` gathers into :func:`summary_table`.

Shapes: no arrays beyond the 1-D index arrays :func:`digest_arrays` hashes.
"""

from __future__ import annotations

import hashlib
import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Measurement:
    """What a child process reports for one case."""

    seconds: float
    peak_rss_gb: float
    digest: str
    detail: dict

    @property
    def label(self) -> str:
        return f"{self.seconds:.2f} s / {self.peak_rss_gb:.2f} GB"


def digest_arrays(arrays: list[np.ndarray]) -> str:
    """A short fingerprint of a list of integer arrays (order and boundaries included)."""
    sha = hashlib.sha1()
    for array in arrays:
        sha.update(np.int64(array.size).tobytes())
        sha.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
    return sha.hexdigest()[:12]


def run_child(module: str, case: dict, timeout_s: float) -> Measurement | None:
    """Run ``python -m module case-json`` and parse its JSON line; None if it failed or timed out."""
    try:
        completed = subprocess.run(
            [sys.executable, "-m", module, json.dumps(case)],
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return None
    if completed.returncode != 0:
        sys.stderr.write(completed.stderr[-2000:])
        return None
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    return Measurement(report["seconds"], report["peak_rss_gb"], report["digest"], report.get("detail", {}))


def child_main(cases: dict[str, Callable[[dict], tuple[Callable[[], tuple[str, dict]], None]]]) -> None:
    """Entry point of a child: build inputs (untimed), time the work, print one JSON line."""
    case = json.loads(sys.argv[1])
    work = cases[case["op"]](case)
    started = time.perf_counter()
    digest, detail = work()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(json.dumps({"seconds": seconds, "peak_rss_gb": peak, "digest": digest, "detail": detail}))


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


@dataclass(frozen=True)
class SummaryRow:
    """One case against its named baseline, as the combined report lists it.

    ``ours`` and ``baseline`` are display values with their units; ``ratio`` is
    "times better than the baseline" (higher is better: a speed-up or a
    throughput ratio), None where the baseline did not run.
    """

    benchmark: str
    case: str
    ours: str
    baseline_name: str
    baseline: str
    ratio: float | None


@dataclass(frozen=True)
class Report:
    """What a benchmark's ``run()`` returns: its Markdown section and its summary rows."""

    markdown: str
    rows: tuple[SummaryRow, ...] = field(default_factory=tuple)
    failures: tuple[str, ...] = ()  # cases that failed or timed out (``bench.py`` then exits 1)

    def __str__(self) -> str:
        return self.markdown


def format_ratio(ratio: float | None) -> str:
    """``1.23x``, or ``-`` when there is no ratio."""
    return "-" if ratio is None else f"{ratio:.2f}x"


def summary_table(rows: list[SummaryRow] | tuple[SummaryRow, ...]) -> str:
    """One Markdown row per case: benchmark, case, ours, baseline name, baseline, ratio."""
    header = ["benchmark", "case", "ours", "baseline", "baseline value", "ratio (ours vs baseline)"]
    cells = [
        [row.benchmark, row.case, row.ours, row.baseline_name, row.baseline, format_ratio(row.ratio)] for row in rows
    ]
    return markdown_table(header, cells)
