"""A durable journal of tracking calls, and its in-order, idempotent delivery to an MLflow store.

Every tracker call becomes one JSON line appended to ``records.jsonl`` (written,
flushed and fsync'd before the call returns); files logged as artifacts are
copied under ``artifacts/``. ``delivered.json`` holds how far the store has the
journal (a byte offset), the run it went to, and whether the batch at that
offset was in flight when delivery last stopped. Delivery replays the rest in
order, so a crash, an outage or a second process (``sync``) never loses or
reorders a record:

- the run is created at the first successful delivery of the ``start`` record;
  it carries the tag ``dist_syndr.journal_id``, so a creation whose reply was
  lost is found again instead of made twice;
- metrics keep the timestamp they were logged with, so a resent batch is an
  exact duplicate: SQL stores drop those, and for a batch whose delivery is
  unknown the points the store already has are filtered out first (the file
  store would append them again);
- params, tags, artifacts and the end status are idempotent;
- a record the store refuses for good (a bad value, a deleted run) goes to
  ``rejected.jsonl`` with the reason instead of blocking everything behind it.

Folder layout: ``run.json`` (journal id, tracking URI), ``records.jsonl``,
``delivered.json``, ``artifacts/<id>/<name>``, ``rejected.jsonl``, ``.lock``
(one deliverer at a time, across processes).

Shapes: none.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import logging
import math
import os
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

from dist_syndr import files

log = logging.getLogger(__name__)

IDENTITY_NAME = "run.json"
RECORDS_NAME = "records.jsonl"
DELIVERY_NAME = "delivered.json"
REJECTED_NAME = "rejected.jsonl"
JOURNAL_TAG = "dist_syndr.journal_id"
PARAM_VALUE_LIMIT = 6000  # characters MLflow stores per parameter value
_METRICS_PER_BATCH = 1000  # MLflow's log_batch limits
_PARAMS_TAGS_PER_BATCH = 100
# Error codes that say "this request will never succeed"; anything else (connection refused,
# timeouts, 5xx, rate limits, auth hiccups) is worth retrying later.
_PERMANENT_ERRORS = frozenset(
    {"INVALID_PARAMETER_VALUE", "BAD_REQUEST", "MALFORMED_REQUEST", "RESOURCE_DOES_NOT_EXIST", "INVALID_STATE"}
)


class DeliveryError(Exception):
    """The store could not be reached or failed transiently; the journal keeps the rest."""

    def __init__(self, message: str, num_delivered: int = 0, num_rejected: int = 0):
        super().__init__(message)
        self.num_delivered = num_delivered  # records delivered by the pass before it failed
        self.num_rejected = num_rejected


@dataclasses.dataclass(frozen=True)
class Identity:
    """What names a journal: its id (tagged on the run) and the tracking URI it delivers to."""

    journal_id: str
    tracking_uri: str


@dataclasses.dataclass(frozen=True)
class Delivery:
    """How far the store has the journal."""

    offset: int = 0  # bytes of records.jsonl the store has
    run_id: str | None = None
    experiment_id: str | None = None
    is_uncertain: bool = False  # the batch at ``offset`` was being sent when delivery stopped


@dataclasses.dataclass(frozen=True)
class Entry:
    """One complete journal line: its byte range and the record."""

    start: int
    end: int
    record: dict


@dataclasses.dataclass(frozen=True)
class DeliveryResult:
    """What one delivery pass did."""

    num_delivered: int  # records the store now has
    num_rejected: int  # records the store refused for good (kept in rejected.jsonl)
    run_id: str | None


class Journal:
    """The journal folder of one run (see the module docstring for its files)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        identity_path = self.folder / IDENTITY_NAME
        if not identity_path.is_file():
            raise ValueError(f"{self.folder}: not a tracking journal (no {IDENTITY_NAME})")
        try:
            self.identity = Identity(**json.loads(identity_path.read_text()))
        except (json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{identity_path}: unreadable journal identity ({error})") from error
        self.records_path = self.folder / RECORDS_NAME

    @classmethod
    def create(cls, folder: Path, tracking_uri: str, run_id: str | None = None) -> Journal:
        """A new, empty journal in ``folder``; with ``run_id`` it continues that existing run."""
        folder = Path(folder)
        (folder / "artifacts").mkdir(parents=True, exist_ok=True)
        identity = Identity(journal_id=uuid.uuid4().hex, tracking_uri=tracking_uri)
        files.write_text(
            folder / DELIVERY_NAME, json.dumps(dataclasses.asdict(Delivery(run_id=run_id)), sort_keys=True)
        )
        (folder / RECORDS_NAME).touch()
        files.write_text(
            folder / IDENTITY_NAME, json.dumps(dataclasses.asdict(identity), sort_keys=True)
        )  # last: it marks the journal complete
        return cls(folder)

    @staticmethod
    def exists(folder: Path) -> bool:
        """Whether ``folder`` holds a journal."""
        return (Path(folder) / IDENTITY_NAME).is_file()

    # ---- writing (the tracker's thread)

    def repair_tail(self) -> None:
        """Drop a partial last line left by a crash mid-append (that call never returned)."""
        data = self.records_path.read_bytes()
        if data and not data.endswith(b"\n"):
            keep = data.rfind(b"\n") + 1
            log.warning("%s: dropping %d bytes of an unfinished record", self.records_path, len(data) - keep)
            with self.records_path.open("r+b") as handle:
                handle.truncate(keep)
                os.fsync(handle.fileno())

    def append(self, op: str, **fields) -> None:
        """Append one record durably (written, flushed and fsync'd before returning)."""
        line = json.dumps({"op": op, **fields}, sort_keys=True).encode() + b"\n"
        descriptor = os.open(self.records_path, os.O_WRONLY | os.O_APPEND)
        try:
            written = 0
            while written < len(line):
                written += os.write(descriptor, line[written:])
            os.fsync(descriptor)
        finally:
            os.close(descriptor)

    def add_artifact(self, path: Path) -> str:
        """Copy a file or folder into the journal; returns its path relative to the journal folder."""
        path = Path(path)
        if not path.exists():
            raise ValueError(f"{path}: artifact does not exist")
        relative = Path("artifacts") / uuid.uuid4().hex[:16] / path.name
        target = self.folder / relative
        target.parent.mkdir(parents=True)
        with files.atomic_path(target) as temporary:
            if path.is_dir():
                shutil.copytree(path, temporary)
            else:
                shutil.copyfile(path, temporary)
        return relative.as_posix()

    # ---- reading and delivery state

    def read_delivery(self) -> Delivery:
        """The delivery state on disk."""
        path = self.folder / DELIVERY_NAME
        try:
            return Delivery(**json.loads(path.read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: unreadable delivery state ({error})") from error

    def write_delivery(self, delivery: Delivery, *, is_durable: bool = True) -> None:
        """Replace the delivery state atomically."""
        files.write_text(
            self.folder / DELIVERY_NAME,
            json.dumps(dataclasses.asdict(delivery), sort_keys=True),
            is_durable=is_durable,
        )

    def entries(self, offset: int = 0) -> list[Entry]:
        """Complete records from byte ``offset`` on (a line still being written is left out)."""
        with self.records_path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
        entries, position = [], 0
        while True:
            newline = data.find(b"\n", position)
            if newline < 0:
                return entries
            line = data[position:newline]
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"{self.records_path}: corrupt record at byte {offset + position} ({error})"
                ) from error
            entries.append(Entry(offset + position, offset + newline + 1, record))
            position = newline + 1

    def num_pending(self) -> int:
        """Records the store does not have yet."""
        return len(self.entries(self.read_delivery().offset))

    def reject(self, entries: list[Entry], reason: str) -> None:
        """Keep records the store refused, with the reason, beside the journal."""
        lines = b"".join(
            json.dumps({"reason": reason, "record": e.record}, sort_keys=True).encode() + b"\n" for e in entries
        )
        with (self.folder / REJECTED_NAME).open("ab") as handle:
            handle.write(lines)
            handle.flush()
            os.fsync(handle.fileno())

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the journal's delivery lock (blocking; shared by every process and thread)."""
        with (self.folder / ".lock").open("a") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def deliver(journal: Journal, client, *, show_progress: bool = False) -> DeliveryResult:
    """Send every pending record to ``client``'s store, in order; hold ``journal.lock()`` around it.

    Progress is saved after each batch. Raises :class:`DeliveryError` on a
    transient failure (what was delivered before it stays delivered).
    """
    from tqdm import tqdm

    delivery = journal.read_delivery()
    batches = list(_batches(journal.entries(delivery.offset)))
    num_delivered = num_rejected = 0
    for batch in tqdm(batches, desc="sync", unit="batch", disable=not show_progress):
        was_uncertain = delivery.is_uncertain
        if not was_uncertain:
            # Written before sending: a crash mid-request leaves the batch marked as maybe-delivered.
            delivery = dataclasses.replace(delivery, is_uncertain=True)
            journal.write_delivery(delivery, is_durable=False)
        try:
            delivery = _send(journal, client, batch, delivery, was_uncertain=was_uncertain)
            num_delivered += len(batch)
        except Exception as error:  # noqa: BLE001 - every failure is classified below
            if not _is_permanent(error) or batch[0].record["op"] == "start":
                raise DeliveryError(_describe(error), num_delivered, num_rejected) from error
            log.error(
                "%s: the tracking store refused %d record(s) for good (%s); kept in %s",
                journal.folder,
                len(batch),
                _describe(error),
                REJECTED_NAME,
            )
            journal.reject(batch, _describe(error))
            num_rejected += len(batch)
        delivery = dataclasses.replace(delivery, offset=batch[-1].end, is_uncertain=False)
        journal.write_delivery(delivery)
    return DeliveryResult(num_delivered, num_rejected, delivery.run_id)


def _batches(entries: list[Entry]) -> Iterator[list[Entry]]:
    """Consecutive metric records merged up to MLflow's batch limit; every other record alone."""
    batch: list[Entry] = []
    num_metrics = 0
    for entry in entries:
        if entry.record["op"] != "metrics":
            if batch:
                yield batch
                batch, num_metrics = [], 0
            yield [entry]
            continue
        size = len(entry.record["metrics"])
        if batch and num_metrics + size > _METRICS_PER_BATCH:
            yield batch
            batch, num_metrics = [], 0
        batch.append(entry)
        num_metrics += size
    if batch:
        yield batch


def _send(journal: Journal, client, batch: list[Entry], delivery: Delivery, *, was_uncertain: bool) -> Delivery:
    """Deliver one batch; returns the delivery state with the run (if created) filled in.

    ``was_uncertain``: an earlier attempt at this batch may have reached the store.
    """
    from mlflow.entities import Metric, Param, RunTag

    record = batch[0].record
    op = record["op"]
    if op == "start":
        return _start_run(journal, client, record, delivery)
    run_id = delivery.run_id
    assert run_id is not None, f"{journal.folder}: records before the run's start record"
    if op == "metrics":
        metrics = [
            Metric(k, float(v), e.record["time"], e.record["step"])
            for e in batch
            for k, v in sorted(e.record["metrics"].items())
        ]
        if was_uncertain:
            metrics = _not_yet_stored(client, run_id, metrics)
        for start in range(0, len(metrics), _METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=metrics[start : start + _METRICS_PER_BATCH])
    elif op == "params":
        params = [Param(k, str(v)[:PARAM_VALUE_LIMIT]) for k, v in sorted(record["params"].items())]
        for start in range(0, len(params), _PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, params=params[start : start + _PARAMS_TAGS_PER_BATCH])
    elif op == "tags":
        tags = [RunTag(k, str(v)) for k, v in sorted(record["tags"].items())]
        for start in range(0, len(tags), _PARAMS_TAGS_PER_BATCH):
            client.log_batch(run_id, tags=tags[start : start + _PARAMS_TAGS_PER_BATCH])
    elif op == "artifact":
        local = journal.folder / record["path"]
        if not local.exists():
            raise ValueError(f"{local}: journal copy of the artifact is missing")
        if local.is_dir():
            folder = "/".join(part for part in (record["folder"], local.name) if part)
            client.log_artifacts(run_id, str(local), folder)
        else:
            client.log_artifact(run_id, str(local), record["folder"])
    elif op == "end":
        client.set_terminated(run_id, record["status"], end_time=record["time"])
    else:
        raise ValueError(f"{journal.records_path}: unknown record type {op!r}")
    return delivery


def _start_run(journal: Journal, client, record: dict, delivery: Delivery) -> Delivery:
    from mlflow.entities import ViewType

    experiment = client.get_experiment_by_name(record["experiment"])
    if experiment is not None:
        experiment_id = experiment.experiment_id
    else:
        experiment_id = client.create_experiment(record["experiment"], artifact_location=record["artifact_location"])
    journal_id = journal.identity.journal_id
    # A creation whose reply was lost must not make a second run.
    found = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`{JOURNAL_TAG}` = '{journal_id}'",
        run_view_type=ViewType.ALL,
        max_results=1,
    )
    if found:
        run_id = found[0].info.run_id
    else:
        tags = {**record["tags"], JOURNAL_TAG: journal_id}
        run_id = client.create_run(
            experiment_id, start_time=record["time"], tags=tags, run_name=record["run_name"]
        ).info.run_id
    log.info("MLflow run %s in experiment %r at %s", run_id, record["experiment"], journal.identity.tracking_uri)
    return dataclasses.replace(delivery, run_id=run_id, experiment_id=experiment_id)


def _not_yet_stored(client, run_id: str, metrics: list) -> list:
    """``metrics`` without the points the store already has (same key, step, timestamp and value)."""
    stored = set()
    for key in sorted({m.key for m in metrics}):
        stored |= {(key, m.step, m.timestamp, _value_id(m.value)) for m in client.get_metric_history(run_id, key)}
    kept = [m for m in metrics if (m.key, m.step, m.timestamp, _value_id(m.value)) not in stored]
    if len(kept) < len(metrics):
        log.info(
            "%d metric point(s) of a batch sent before were already stored; not sending them again",
            len(metrics) - len(kept),
        )
    return kept


def _value_id(value: float) -> float | str:
    return "nan" if math.isnan(value) else float(value)


def _is_permanent(error: Exception) -> bool:
    from mlflow.exceptions import MlflowException

    if isinstance(error, ValueError):
        return True
    return isinstance(error, MlflowException) and error.error_code in _PERMANENT_ERRORS


def _describe(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


def now_ms() -> int:
    """Wall-clock milliseconds, MLflow's timestamp unit."""
    return int(time.time() * 1000)
