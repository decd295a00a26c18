"""Tracking against a real ``mlflow server`` that is down at the start, dies mid-run and comes back.

One server (``--workers 1``, about 0.5 GB) serves the module; tests start and
stop it as their scenario needs, on one port and one store.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from dist_syndr import config
from dist_syndr.tracking import tracker as tracking
from launchers import compare as compare_launcher
from tests.conftest import VENV_BIN

MLFLOW = VENV_BIN / "mlflow"
STEP_KEYS = ("train/loss", "train/lr", "train/images_per_second", "train/data_wait_share")
EPOCH_KEYS = ("loss", "images_per_second", "kept", "koniq/srcc", "koniq/plcc")


class MlflowServer:
    """A real tracking server on 127.0.0.1 with a SQLite store and proxied artifacts."""

    def __init__(self, folder: Path, port: int):
        self.folder, self.port = folder, port
        self.uri = f"http://127.0.0.1:{port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 180.0) -> None:
        if self.process is not None:
            return
        if not MLFLOW.is_file():
            pytest.skip(f"{MLFLOW} not found (run through make test)")
        command = [
            str(MLFLOW), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
            "--backend-store-uri", f"sqlite:///{self.folder / 'db.sqlite'}",
            "--artifacts-destination", str(self.folder / "artifacts"),
        ]  # fmt: skip
        log_file = (self.folder / "server.log").open("ab")
        # Its own session: stop() ends the server and the workers it spawns, nothing else.
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}  # no job-runner process: a quicker start
        self.process = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"mlflow server exited with {self.process.returncode}: {self._log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        pytest.fail(f"mlflow server did not answer within {timeout_s} s: {self._log_tail()}")

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)
        except ProcessLookupError:
            pass
        self.process = None
        for _ in range(100):  # the port is free again once nothing answers
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

    def pause(self) -> None:
        """Freeze the server: connections are accepted, nothing answers (a hung server)."""
        os.killpg(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.killpg(self.process.pid, signal.SIGCONT)

    def _log_tail(self) -> str:
        return (self.folder / "server.log").read_text(errors="replace")[-2000:]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    instance = MlflowServer(tmp_path_factory.mktemp("mlflow-server"), port)
    try:
        yield instance
    finally:
        instance.stop()


@pytest.fixture(autouse=True)
def _server_env(server, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", server.uri)
    for name, value in tracking._HTTP_BOUNDS.items():  # restored after each test
        monkeypatch.setenv(name, value)


def _tracker(tmp_path, run_name, local_dir, **options):
    cfg = config.load(None, [f"run_name={run_name}", "reshape.drcdown.cap=7"])
    tags = {"git_commit": "abc123", "world_size": "1", "device": "cpu", "dali": "none"}
    return tracking.make_tracker(
        cfg, rank=0, experiment="faults", root=tmp_path / "mlruns", tags=tags, local_dir=local_dir, **options
    )


def _step_values(step):
    return {
        "train/loss": 1.0 / (step + 1),
        "train/lr": 1e-4 * (step % 7),
        "train/images_per_second": 100.0 + step,
        "train/data_wait_share": 0.01 * step,
    }


def _epoch_values(epoch):
    return {
        "loss": 0.5 - 0.1 * epoch,
        "images_per_second": 90.0 + epoch,
        "kept": 100.0 - epoch,
        "koniq/srcc": 0.7 + 0.01 * epoch,
        "koniq/plcc": float("nan") if epoch == 1 else 0.6,
    }


def _assert_history(client, run_id, expected: dict[str, dict[int, float]]):
    """Every (step, value) exactly once: no gap, no duplicate."""
    for key, by_step in expected.items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))
        assert [step for step, _ in history] == sorted(by_step), key
        for step, value in history:
            assert value == by_step[step] or (math.isnan(value) and math.isnan(by_step[step])), (key, step)


def _client(server):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=server.uri)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_server_down_at_start_run_is_created_on_sync(server, tmp_path, caplog):
    server.stop()
    run_dir = tmp_path / "runs" / "late"
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="dist_syndr.tracking.tracker"):
        tracker = _tracker(tmp_path, "late", run_dir / "tracking")
        assert tracker.run_id is None
        for step in range(12):
            tracker.log_metrics(_step_values(step), step)
        tracker.log_metrics(_epoch_values(0), 0)
        (tmp_path / "keep.txt").write_text("a\nb\n")
        tracker.log_artifact(tmp_path / "keep.txt", "keep_lists")
        tracker.close()
    assert time.monotonic() - started < 20, "a dead server must not hold the run up"
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1
    assert "--sync" in caplog.records[-1].getMessage()
    # start, params, 12 step records, 1 epoch record, artifact, end
    assert tracker.journal.num_pending() == 17

    server.start()
    report = tracking.sync(run_dir)
    assert report.is_complete and report.num_pushed == 17 and report.run_id
    client = _client(server)
    run = client.get_run(report.run_id)
    assert run.info.run_name == "late" and run.info.status == "FINISHED"
    assert run.data.params["reshape.drcdown.cap"] == "7" and run.data.tags["world_size"] == "1"
    _assert_history(client, report.run_id, {k: {s: _step_values(s)[k] for s in range(12)} for k in STEP_KEYS})
    _assert_history(client, report.run_id, {k: {0: _epoch_values(0)[k]} for k in EPOCH_KEYS})
    assert [a.path for a in client.list_artifacts(report.run_id, "keep_lists")] == ["keep_lists/keep.txt"]
    assert tracking.sync(run_dir).num_pushed == 0  # nothing left: a second sync is a no-op


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_outage_mid_run_loses_no_metric(server, tmp_path, caplog, capsys):
    server.start()
    run_dir = tmp_path / "runs" / "outage"
    tracker = _tracker(tmp_path, "outage", run_dir / "tracking")
    run_id = tracker.run_id
    assert run_id, "with the server up the run exists as soon as the tracker does"
    steps, epochs = range(0, 60), range(0, 3)
    for step in steps[:10]:
        tracker.log_metrics(_step_values(step), step)
    tracker.log_metrics(_epoch_values(0), 0)
    (tmp_path / "epoch0.txt").write_text("epoch 0\n")
    tracker.log_artifact(tmp_path / "epoch0.txt", "keep_lists")
    assert tracker.flush(timeout_s=60)

    server.stop()  # the server dies mid-run
    durations = []
    with caplog.at_level(logging.WARNING, logger="dist_syndr.tracking.tracker"):
        for step in steps[10:40]:
            begin = time.monotonic()
            tracker.log_metrics(_step_values(step), step)
            durations.append(time.monotonic() - begin)
        tracker.log_metrics(_epoch_values(1), 1)
        (tmp_path / "epoch1.txt").write_text("epoch 1\n")
        tracker.log_artifact(tmp_path / "epoch1.txt", "keep_lists")
        assert not tracker.flush(timeout_s=30)
        for step in steps[40:]:
            begin = time.monotonic()
            tracker.log_metrics(_step_values(step), step)
            durations.append(time.monotonic() - begin)
        tracker.log_metrics(_epoch_values(2), 2)
        begin = time.monotonic()
        tracker.close()
        assert time.monotonic() - begin < 15
    assert max(durations) < 1.0, f"a log call took {max(durations):.2f} s with the server down"
    assert sum("unreachable" in r.getMessage() for r in caplog.records) == 1, "one warning per outage"

    server.start()  # back, same port and store
    assert compare_launcher.main(["--sync", str(run_dir)]) == 0
    assert f"pushed to run {run_id}" in capsys.readouterr().out
    client = _client(server)
    expected_steps = {k: {s: _step_values(s)[k] for s in steps} for k in STEP_KEYS}
    expected_epochs = {k: {e: _epoch_values(e)[k] for e in epochs} for k in EPOCH_KEYS}
    _assert_history(client, run_id, expected_steps)
    _assert_history(client, run_id, expected_epochs)
    assert sorted(a.path for a in client.list_artifacts(run_id, "keep_lists")) == [
        "keep_lists/epoch0.txt",
        "keep_lists/epoch1.txt",
    ]
    assert client.get_run(run_id).info.status == "FINISHED"

    # Replaying everything as if no delivery were known to have arrived adds nothing.
    state_path = run_dir / "tracking" / "delivered.json"
    state = json.loads(state_path.read_text())
    state_path.write_text(json.dumps({**state, "offset": 0, "is_uncertain": True}))
    report = tracking.sync(run_dir)
    assert report.is_complete and report.run_id == run_id
    _assert_history(client, run_id, expected_steps)
    _assert_history(client, run_id, expected_epochs)
    runs = client.search_runs(
        [client.get_run(run_id).info.experiment_id], filter_string="attributes.run_name = 'outage'"
    )
    assert len(runs) == 1


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_resumed_tracker_continues_the_same_run(server, tmp_path):
    server.start()
    local_dir = tmp_path / "runs" / "resumed" / "tracking"
    first = _tracker(tmp_path, "resumed", local_dir)
    for epoch in range(2):
        first.log_metrics(_epoch_values(epoch), epoch)
    assert first.flush(timeout_s=60)
    # The training process dies here (no close); a restarted one opens the same folder.
    second = _tracker(tmp_path, "resumed", local_dir)
    assert second.run_id == first.run_id
    for epoch in range(2, 4):
        second.log_metrics(_epoch_values(epoch), epoch)
    second.close()
    assert second.flush()
    client = _client(server)
    _assert_history(client, first.run_id, {k: {e: _epoch_values(e)[k] for e in range(4)} for k in EPOCH_KEYS})
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id], filter_string="attributes.run_name = 'resumed'")) == 1
    with pytest.raises(ValueError, match="belongs to MLflow run"):
        _tracker(tmp_path, "resumed", local_dir, run_id="0" * 32)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_hung_server_times_out_and_the_tracker_catches_up_by_itself(server, tmp_path, monkeypatch):
    server.start()
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    local_dir = tmp_path / "runs" / "hung" / "tracking"
    tracker = _tracker(tmp_path, "hung", local_dir, retry_interval_s=1.0)
    tracker.log_metrics(_epoch_values(0), 0)
    assert tracker.flush(timeout_s=60)
    server.pause()
    try:
        durations = []
        for epoch in range(1, 4):
            begin = time.monotonic()
            tracker.log_metrics(_epoch_values(epoch), epoch)
            durations.append(time.monotonic() - begin)
        assert not tracker.flush(timeout_s=60)
        assert max(durations) < 1.0
    finally:
        server.resume()
    # No sync: the tracker's own retry (every second here) replays the backlog.
    deadline = time.monotonic() + 90
    while not tracker.flush(timeout_s=10) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert tracking.journal_run_id(local_dir.parent) == tracker.run_id
    assert tracker.journal.num_pending() == 0
    tracker.close()
    _assert_history(
        _client(server), tracker.run_id, {k: {e: _epoch_values(e)[k] for e in range(4)} for k in EPOCH_KEYS}
    )
