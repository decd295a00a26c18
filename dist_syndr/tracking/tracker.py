"""Experiment tracking that survives tracking-server faults: MLflow on rank 0, a null tracker elsewhere.

Rank 0's tracker appends every call to a durable journal under ``local_dir``
(the trainer passes ``<run_dir>/tracking``; see :mod:`dist_syndr.tracking.journal`)
and returns; a background thread delivers the journal to MLflow in order. When
the server is unreachable or fails, training goes on: one warning is logged, the
records stay in the journal and delivery is retried at most every
``retry_interval_s`` seconds, replaying the backlog once the server answers. A
run whose server was down from the start is created at the first delivery.
Records still pending when the process ends are pushed later with :func:`sync`
(``python launchers/compare.py --sync RUN_DIR``). A new tracker on the same
``local_dir`` (a resumed training) continues the same MLflow run.

The tracking URI is ``MLFLOW_TRACKING_URI`` when set, else a local SQLite store
``sqlite:///<root>/mlflow.db`` with artifacts beside it. Parameters are the
flattened resolved config; tags name the git commit, world size and backends.
MLflow's HTTP client retries a dead server for minutes by default; rank 0 lowers
``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` / ``_BACKOFF_FACTOR`` / ``_TIMEOUT`` to
2 / 1 / 10 s unless they are set, and probes ``/health`` (3 s) before retrying.

Shapes: none.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from dist_syndr import config as config_module
from dist_syndr.tracking.journal import DeliveryError, Journal, deliver, now_ms

log = logging.getLogger(__name__)

LOCAL_DIR_NAME = "tracking"  # the journal's folder inside a run folder
RUN_STATUSES = ("FINISHED", "FAILED", "KILLED")
_HTTP_BOUNDS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
}
_PROBE_TIMEOUT_S = 3.0


class NullTracker:
    """Accepts every call and records nothing (ranks other than 0)."""

    run_id: str | None = None
    local_dir: Path | None = None

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Ignored."""

    def log_params(self, params: dict) -> None:
        """Ignored."""

    def set_tags(self, tags: dict[str, str]) -> None:
        """Ignored."""

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Ignored."""

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Nothing to deliver: always ``True``."""
        return True

    def close(self, status: str = "FINISHED") -> None:
        """Ignored."""


class MlflowTracker:
    """One MLflow run fed from a durable journal; a background thread delivers it.

    Every method returns once the record is on disk, whatever the server does.
    """

    def __init__(self, journal: Journal, *, retry_interval_s: float = 60.0, close_timeout_s: float = 30.0):
        import mlflow

        if retry_interval_s <= 0 or close_timeout_s <= 0:
            raise ValueError(
                f"retry_interval_s and close_timeout_s must be positive, got {retry_interval_s}, {close_timeout_s}"
            )
        self.journal = journal
        self.tracking_uri = journal.identity.tracking_uri
        self.retry_interval_s = retry_interval_s
        self.close_timeout_s = close_timeout_s
        self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        self._run_id = journal.read_delivery().run_id
        self._condition = threading.Condition()
        self._is_dirty = False  # records appended since the last attempt started
        self._is_forced = False  # flush() wants an attempt now, retry window or not
        self._retry_at = 0.0  # monotonic time before which a failed delivery is not retried
        self._num_started = self._num_finished = 0
        self._is_delivered = False
        self._is_outage = False
        self._is_stopping = self._is_closed = False
        # One delivery before training starts, so the run id is known at once when the server is up.
        if not self._attempt():
            self._is_dirty, self._retry_at = True, time.monotonic() + retry_interval_s
        self._thread = threading.Thread(target=self._deliver_loop, name="mlflow-delivery", daemon=True)
        self._thread.start()

    @property
    def run_id(self) -> str | None:
        """The MLflow run id; ``None`` until the server has seen the run."""
        return self._run_id

    @property
    def local_dir(self) -> Path:
        """The journal folder."""
        return self.journal.folder

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Record numeric metrics at ``step`` (NaN values are kept: they mean undefined)."""
        values = {}
        for key, value in metrics.items():
            try:
                values[str(key)] = float(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"metric {key!r}: {value!r} is not a number") from error
        self._append("metrics", time=now_ms(), step=int(step), metrics=values)

    def log_params(self, params: dict) -> None:
        """Record parameters (values as text; a changed value is refused by MLflow)."""
        self._append("params", params={str(k): str(v) for k, v in params.items()})

    def set_tags(self, tags: dict[str, str]) -> None:
        """Set run tags (a later value replaces an earlier one)."""
        self._append("tags", tags={str(k): str(v) for k, v in tags.items()})

    def log_artifact(self, path: Path, folder: str | None = None) -> None:
        """Copy a file (or folder) into the journal now and into the run's artifacts under ``folder``."""
        self._check_open()
        self._append("artifact", path=self.journal.add_artifact(Path(path)), folder=folder)

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Try to deliver everything now; ``True`` when the store has every record."""
        with self._condition:
            if self._is_closed:
                return self.journal.num_pending() == 0
            wanted = self._num_started + 1  # the next attempt sees every record appended so far
            self._is_forced = True
            self._condition.notify_all()
            is_done = self._condition.wait_for(lambda: self._num_finished >= wanted, timeout=timeout_s)
            return is_done and self._is_delivered

    def close(self, status: str = "FINISHED") -> None:
        """End the run with ``status`` (FINISHED, FAILED or KILLED), deliver what the server will take,
        and stop the delivery thread; what is left waits in the journal for :func:`sync`."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status {status!r}: expected one of {', '.join(RUN_STATUSES)}")
        if self._is_closed:
            return
        self._append("end", time=now_ms(), status=status)
        is_delivered = self.flush(self.close_timeout_s)
        with self._condition:
            self._is_stopping = self._is_closed = True
            self._condition.notify_all()
        self._thread.join(timeout=1.0)
        if not is_delivered:
            log.warning(
                "%d tracking record(s) of run %s not delivered to %s; they are kept in %s: "
                "push them with `python launchers/compare.py --sync %s`",
                self.journal.num_pending(),
                self._run_id or "(not created yet)",
                self.tracking_uri,
                self.local_dir,
                self.local_dir,
            )

    # ---- journal and delivery

    def _check_open(self) -> None:
        if self._is_closed:
            raise ValueError(f"tracker of {self.local_dir} is closed; open a new one with make_tracker(local_dir=...)")

    def _append(self, op: str, **fields) -> None:
        self._check_open()
        self.journal.append(op, **fields)
        with self._condition:
            self._is_dirty, self._is_delivered = True, False
            self._condition.notify_all()

    def _deliver_loop(self) -> None:
        while True:
            with self._condition:
                while not self._is_forced:
                    if self._is_stopping:
                        return
                    wait_s = self._retry_at - time.monotonic()
                    if self._is_dirty and wait_s <= 0:
                        break
                    self._condition.wait(wait_s if self._is_dirty else None)
                self._is_forced = self._is_dirty = False
                self._num_started += 1
            is_ok = self._attempt()
            with self._condition:
                self._num_finished += 1
                self._is_delivered = is_ok and not self._is_dirty
                if not is_ok:
                    self._is_dirty, self._retry_at = True, time.monotonic() + self.retry_interval_s
                self._condition.notify_all()

    def _attempt(self) -> bool:
        """One delivery pass; logs one warning when an outage starts and one line when it ends."""
        try:
            if (self._is_outage or self._num_finished == 0) and not is_reachable(self.tracking_uri):
                raise DeliveryError(f"no answer from {self.tracking_uri}")
            with self.journal.lock():
                result = deliver(self.journal, self._client)
        except Exception as error:  # noqa: BLE001 - a tracking fault must never stop training
            if not self._is_outage:
                log.warning(
                    "tracking server %s unreachable or failing (%s); training goes on, records are kept in %s "
                    "and delivery is retried every %.0f s",
                    self.tracking_uri,
                    error,
                    self.local_dir,
                    self.retry_interval_s,
                )
            self._is_outage = True
            return False
        if self._is_outage:
            log.info(
                "tracking server %s answers again; backlog delivered (%d records)",
                self.tracking_uri,
                result.num_delivered,
            )
        self._is_outage = False
        self._run_id = result.run_id or self._run_id
        return True


@dataclasses.dataclass(frozen=True)
class SyncReport:
    """What :func:`sync` did for one journal."""

    local_dir: Path
    tracking_uri: str
    run_id: str | None
    num_pushed: int  # records delivered by this sync
    num_rejected: int  # records the store refused for good (see rejected.jsonl)
    num_pending: int  # records still waiting
    error: str | None = None  # why delivery stopped early

    @property
    def is_complete(self) -> bool:
        """Whether the store now has the whole journal."""
        return self.num_pending == 0 and self.error is None

    def describe(self) -> str:
        """One line: what was pushed where, and what is left."""
        pushed = f"{self.num_pushed} record(s) pushed to run {self.run_id} at {self.tracking_uri}"
        return f"{self.local_dir}: {pushed}, {self.num_rejected} rejected, {self.num_pending} pending"


def sync(local_dir: Path, tracking_uri: str | None = None, *, show_progress: bool = False) -> SyncReport:
    """Push a journal's pending records (``local_dir``: the journal or a run folder holding ``tracking/``).

    ``tracking_uri`` defaults to the server the journal was written for. Safe to
    run while the training that writes the journal is alive, and to repeat.
    """
    import mlflow

    journal = Journal(journal_folder(local_dir))
    _bound_http_retries()
    uri = tracking_uri or journal.identity.tracking_uri
    num_pushed = num_rejected = 0
    error = None
    try:
        if not is_reachable(uri):
            raise DeliveryError(f"no answer from {uri}")
        with journal.lock():
            result = deliver(journal, mlflow.MlflowClient(tracking_uri=uri), show_progress=show_progress)
        num_pushed, num_rejected = result.num_delivered, result.num_rejected
    except DeliveryError as failure:
        num_pushed, num_rejected, error = failure.num_delivered, failure.num_rejected, str(failure)
    report = SyncReport(
        journal.folder, uri, journal.read_delivery().run_id, num_pushed, num_rejected, journal.num_pending(), error
    )
    log.info(
        "sync %s -> %s: %d pushed, %d rejected, %d pending",
        journal.folder,
        uri,
        num_pushed,
        num_rejected,
        report.num_pending,
    )
    return report


def journal_folder(path: Path) -> Path:
    """``path`` itself when it is a journal, else ``path/tracking``; a clear error when neither is."""
    path = Path(path)
    for candidate in (path, path / LOCAL_DIR_NAME):
        if Journal.exists(candidate):
            return candidate
    raise ValueError(f"{path}: no tracking journal here or in {path / LOCAL_DIR_NAME}")


def journal_run_id(local_dir: Path) -> str | None:
    """The MLflow run a journal (or a run folder holding one) delivers to; ``None`` before its first delivery."""
    return Journal(journal_folder(local_dir)).read_delivery().run_id


def is_reachable(uri: str) -> bool:
    """For an HTTP tracking server: does it answer ``/health`` within a few seconds? Other stores: ``True``."""
    if not uri.startswith(("http://", "https://")):
        return True
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=_PROBE_TIMEOUT_S):
            return True
    except urllib.error.HTTPError as error:
        return error.code < 500  # it answered; auth or routing is MLflow's business
    except (OSError, ValueError):
        return False


def tracking_uri(root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` or the local SQLite store under ``root``."""
    uri = os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def make_tracker(
    cfg: config_module.Config,
    *,
    rank: int,
    experiment: str,
    root: Path,
    tags: dict[str, str],
    run_id: str | None = None,
    local_dir: Path | None = None,
    retry_interval_s: float = 60.0,
):
    """An :class:`MlflowTracker` on rank 0, a :class:`NullTracker` elsewhere.

    ``local_dir`` holds the journal (the trainer passes ``<run_dir>/tracking``); an
    existing journal there is continued, with its run. Without ``local_dir`` the
    journal lives in a temporary folder and is lost with it. ``run_id``
    continues an existing run in a new journal. Continuing a run never changes
    its status; :meth:`MlflowTracker.close` sets it.
    """
    if rank != 0:
        return NullTracker()
    _bound_http_retries()
    uri = tracking_uri(root)
    if local_dir is None:
        local_dir = Path(tempfile.mkdtemp(prefix="dist_syndr-tracking-"))
        log.info("tracking journal in %s (no local_dir given: it goes with the temporary folder)", local_dir)
    local_dir = Path(local_dir)
    if Journal.exists(local_dir):
        journal = Journal(local_dir)
        journal.repair_tail()
        known = journal.read_delivery().run_id
        if run_id is not None and run_id != known:
            raise ValueError(
                f"{local_dir}: this tracking journal belongs to MLflow run {known or '(not created yet)'},"
                f" not {run_id}"
            )
        if uri != journal.identity.tracking_uri:
            log.warning(
                "%s: run continues at %s where it started (the tracking URI is now %s)",
                local_dir,
                journal.identity.tracking_uri,
                uri,
            )
    else:
        journal = Journal.create(local_dir, uri, run_id=run_id)
        if run_id is None:  # a resumed run (run_id given) continues its own record: no new params
            location = (root / "artifacts").resolve().as_uri() if _is_local_store(uri) else None
            journal.append(
                "start",
                time=now_ms(),
                experiment=experiment,
                run_name=cfg.run_name,
                tags=dict(tags),
                artifact_location=location,
            )
            journal.append("params", params={key: str(value) for key, value in config_module.flatten(cfg).items()})
    return MlflowTracker(journal, retry_interval_s=retry_interval_s)


def _is_local_store(uri: str) -> bool:
    return uri.startswith(("sqlite:", "file:")) or ("://" not in uri and not uri.startswith("databricks"))


def _bound_http_retries() -> None:
    for name, value in _HTTP_BOUNDS.items():
        os.environ.setdefault(name, value)
