"""The files a scoring job writes: results (``.csv`` or ``.jsonl``) and ``<out>.errors.csv``, resumable.

Every rank appends its rows to its own part file (``<out>.part-<rank>``, flushed after
each batch), so a killed job keeps what it finished; :func:`merge` (rank 0, after
every rank is done) writes the output in input order, atomically, and removes the
parts. A rerun reads the output and any parts first and scores only the paths
missing from them; files that failed are tried again.

Shapes: none (rows of path, score, spread, crops, resized, score_original: empty where the run does not
know its training labels' own scale).
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from dist_syndr import files
from dist_syndr.scoring.scorer import ScoredImage

FIELDS = ("path", "score", "spread", "crops", "resized", "score_original")
ERROR_FIELDS = ("path", "reason")
SUFFIXES = (".csv", ".jsonl")


def check_output_path(out: Path) -> None:
    """ValueError unless ``out`` ends in ``.csv`` or ``.jsonl``."""
    if out.suffix not in SUFFIXES:
        raise ValueError(f"{out}: the output must end in .csv or .jsonl")


def errors_path(out: Path) -> Path:
    """``<out>.errors.csv``."""
    return out.with_name(f"{out.name}.errors.csv")


def _part(path: Path, rank: int) -> Path:
    return path.with_name(f"{path.name}.part-{rank}")


class PartWriter:
    """One rank's results and errors, appended and flushed as they come."""

    def __init__(self, out: Path, rank: int):
        out.parent.mkdir(parents=True, exist_ok=True)
        self._results = _open_for_append(_part(out, rank))
        self._errors = _open_for_append(_part(errors_path(out), rank))
        self.num_scored = self.num_failed = 0

    def add(self, result: ScoredImage) -> None:
        """Append one result (a score or an error)."""
        if result.error is None:
            row = {"path": result.name, "score": result.score, "spread": result.spread}
            row |= {"crops": result.num_crops, "resized": result.is_resized, "score_original": result.score_original}
            self._results.write(json.dumps(row) + "\n")
            self.num_scored += 1
        else:
            self._errors.write(json.dumps({"path": result.name, "reason": result.error}) + "\n")
            self.num_failed += 1

    def flush(self) -> None:
        """Make what was added survive a kill."""
        self._results.flush()
        self._errors.flush()

    def close(self) -> None:
        self._results.close()
        self._errors.close()


def _open_for_append(path: Path):
    """``path`` opened to append lines; a last line a kill cut short is ended first, so it stays one bad line."""
    handle = path.open("a")
    if path.stat().st_size and not path.read_bytes().endswith(b"\n"):
        handle.write("\n")
    return handle


def finished_paths(out: Path) -> set[str]:
    """Paths already scored: in the output or in any rank's part file."""
    return {row["path"] for row in _read_rows(out, FIELDS)}


def merge(out: Path, order: Sequence[Path]) -> tuple[int, int]:
    """Write ``out`` and its errors file from the earlier output and every part, rows in ``order`` (then any
    others); remove the parts. Returns (rows, errors). The errors file holds this run's failures only."""
    rank_of = {str(path): position for position, path in enumerate(order)}
    rows = {row["path"]: row for row in _read_rows(out, FIELDS)}
    failed = {row["path"]: row for row in _read_rows(errors_path(out), ERROR_FIELDS, include_final=False)}
    failed = {path: row for path, row in failed.items() if path not in rows}
    ordered = sorted(rows.values(), key=lambda row: (rank_of.get(row["path"], math.inf), row["path"]))
    _write(out, ordered, FIELDS)
    errors = sorted(failed.values(), key=lambda row: (rank_of.get(row["path"], math.inf), row["path"]))
    _write_csv(errors_path(out), errors, ERROR_FIELDS)
    for path in (out, errors_path(out)):
        for part in path.parent.glob(f"{path.name}.part-*"):
            part.unlink()
    return len(ordered), len(errors)


def _read_rows(path: Path, fields: Sequence[str], *, include_final: bool = True) -> list[dict]:
    rows = []
    if include_final and path.is_file():
        rows += _read_final(path)
    for part in sorted(path.parent.glob(f"{path.name}.part-*")):
        for line in part.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # the line a kill cut short: that path is scored again
    return [{field: row.get(field) for field in fields} for row in rows if row.get("path")]


def _read_final(path: Path) -> list[dict]:
    text = path.read_text()
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(text)))


def _write(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    if path.suffix == ".jsonl":
        files.write_text(path, "".join(json.dumps(_typed(row)) + "\n" for row in rows))
    else:
        _write_csv(path, rows, fields)


def _write_csv(path: Path, rows: list[dict], fields: Sequence[str]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(fields), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    files.write_text(path, buffer.getvalue())


def _typed(row: dict) -> dict:
    """A row read back from CSV (all strings) with its numbers and flags typed again."""
    typed = dict(row)
    for field in ("score", "spread"):
        typed[field] = float(typed[field])
    original = typed.get("score_original")
    typed["score_original"] = None if original in (None, "") else float(original)
    typed["crops"] = int(typed["crops"])
    typed["resized"] = typed["resized"] in (True, "True", "true")
    return typed
