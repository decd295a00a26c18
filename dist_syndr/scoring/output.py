"""The files a scoring job writes: results (``.csv`` or ``.jsonl``), ``<out>.errors.csv``, what made them
(``<out>.meta.json``) and the job's lock (``<out>.lock``), resumable.

Every rank appends its rows to its own part file (``<out>.part-<rank>``, flushed after
each batch), so a killed job keeps what it finished; :func:`merge` (rank 0, after
every rank is done) writes the output in input order, atomically, and removes the
parts. A rerun reads the output and any parts first and scores only the paths
missing from them; files that failed are tried again.

The output knows its model: ``<out>.meta.json`` (written atomically before the first
row) records the sha256 of the weights that scored it (:func:`weights_digest`, over
the state dict, so it does not depend on where the file lives), the crop protocol,
the precision, the decoder and the label scale behind ``score_original``. A rerun
whose record differs is refused (:func:`claim_output`) rather than mixing two
models' scores in one file.

Shapes: none (rows of path, score, spread, crops, resized, score_original: empty where the run does not
know its training labels' own scale).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path

from dist_syndr import files
from dist_syndr.scoring.dali_decode import resolve_decoder
from dist_syndr.scoring.scorer import ScoredImage, Scorer

FIELDS = ("path", "score", "spread", "crops", "resized", "score_original")
ERROR_FIELDS = ("path", "reason")
SUFFIXES = (".csv", ".jsonl")
RECORD_VERSION = 1
COMPARED = ("checkpoint_sha256", "protocol", "precision", "decoder", "label_scale")  # what changes the scores


def check_output_path(out: Path) -> None:
    """ValueError unless ``out`` ends in ``.csv`` or ``.jsonl``."""
    if out.suffix not in SUFFIXES:
        raise ValueError(f"{out}: the output must end in .csv or .jsonl")


def errors_path(out: Path) -> Path:
    """``<out>.errors.csv``."""
    return out.with_name(f"{out.name}.errors.csv")


def lock_path(out: Path) -> Path:
    """``<out>.lock``: the advisory lock a scoring job holds on ``out`` for its whole run."""
    return out.with_name(f"{out.name}.lock")


def meta_path(out: Path) -> Path:
    """``<out>.meta.json``: the model, crop protocol, precision and decoder that scored ``out``."""
    return out.with_name(f"{out.name}.meta.json")


def weights_digest(model) -> str:
    """Hex sha256 over ``model``'s state dict in order: each entry's name, dtype, shape and bytes (so the same
    weights give the same digest wherever their file lives, on any device)."""
    import torch

    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        tensor = tensor.detach()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def scoring_record(scorer: Scorer, decoder: str) -> dict:
    """What ``<out>.meta.json`` records of a job: the weights' digest (computed here), the crop protocol, the
    precision, the decoder as resolved on the scorer's device and the label scale of ``score_original``."""
    protocol = dataclasses.asdict(scorer.protocol)
    if protocol["mode"] in ("full", "centre"):  # neither the count nor the seed changes which windows these take
        protocol = {key: value for key, value in protocol.items() if key not in ("num_crops", "seed")}
    else:  # how random windows are placed: a different rule would move every score
        protocol["anchors"] = "seed and pixel digest"
    resolved = resolve_decoder(decoder, scorer.device.type)
    if resolved == "dali":  # nvJPEG on a GPU and libjpeg-turbo on a CPU may round differently
        resolved = f"dali-{'gpu' if scorer.device.type == 'cuda' else 'cpu'}"
    return {
        "version": RECORD_VERSION,
        "checkpoint_sha256": weights_digest(scorer.model),
        "protocol": protocol,
        "precision": str(scorer.precision),
        "decoder": resolved,
        "label_scale": None if scorer.label_scale is None else scorer.label_scale.as_dict(),
        "crops": scorer.protocol.describe(),  # for people; the fields above are what is compared
    }


def claim_output(out: Path, record: dict) -> str | None:
    """None when a job with ``record`` (:func:`scoring_record`) may add rows to ``out``: ``out`` has none yet
    (``<out>.meta.json`` is written now, before any row) or its record matches. Otherwise the one line why not."""
    path = meta_path(out)
    if not (out.is_file() or _parts(out)):
        files.write_text(path, json.dumps(record, indent=1, sort_keys=True) + "\n")
        return None
    fix = f"score into another --out, or delete {out} and the files beside it named {out.name}.*"
    try:
        before = json.loads(path.read_text())
    except FileNotFoundError:
        return f"{out}: holds scores but no {path.name} naming the model and crops that made them; {fix}"
    except json.JSONDecodeError as error:
        return f"{path}: not valid JSON ({error}); {fix}"
    changed = [key for key in COMPARED if before.get(key) != record[key]]
    if not changed:
        return None
    differences = "; ".join(
        f"{key.replace('_', ' ')} {_shown(key, before.get(key))} there, {_shown(key, record[key])} now"
        for key in changed
    )
    return f"{out}: scored by another model or protocol, refusing to mix them ({differences}); {fix}"


def _shown(key: str, value) -> str:
    return f"{str(value)[:16]}..." if key == "checkpoint_sha256" and value else json.dumps(value, sort_keys=True)


def _parts(out: Path) -> list[Path]:
    return sorted(out.parent.glob(f"{out.name}.part-*"))


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
