"""Tracking against a real local MLflow store (the server faults are in test_tracking_faults.py)."""

from __future__ import annotations

import json
import math

import pytest

from dist_syndr import config, source
from dist_syndr.tracking import tracker as tracking


@pytest.mark.timeout(120)
def test_params_metrics_artifacts_and_resume(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config.load(None, ["run_name=tracked", "reshape.drcdown.cap=7"])
    tags = {"git_commit": source.git_commit(), "world_size": "1"}
    tracker = tracking.make_tracker(cfg, rank=0, experiment="tests", root=tmp_path / "mlruns", tags=tags)
    tracker.log_metrics({"loss": 0.5, "srcc": float("nan")}, step=1)
    tracker.log_metrics({"loss": 0.25}, step=2)
    artifact = tmp_path / "keep-list.txt"
    artifact.write_text("a\nb\n")
    tracker.log_artifact(artifact, "keep_lists")
    assert tracker.flush()
    resumed = tracking.make_tracker(
        cfg, rank=0, experiment="tests", root=tmp_path / "mlruns", tags=tags, run_id=tracker.run_id
    )
    resumed.log_metrics({"loss": 0.125}, step=3)
    resumed.close()

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(tmp_path / "mlruns"))
    run = client.get_run(tracker.run_id)
    assert run.data.params["reshape.drcdown.cap"] == "7" and run.info.run_name == "tracked"
    assert [m.value for m in client.get_metric_history(tracker.run_id, "loss")] == [0.5, 0.25, 0.125]
    assert math.isnan(run.data.metrics["srcc"])
    assert run.data.tags["world_size"] == "1" and run.info.status == "FINISHED"
    assert [a.path for a in client.list_artifacts(tracker.run_id, "keep_lists")] == ["keep_lists/keep-list.txt"]


def test_other_ranks_record_nothing(tmp_path):
    tracker = tracking.make_tracker(config.load(), rank=1, experiment="tests", root=tmp_path, tags={})
    tracker.log_metrics({"loss": 1.0}, step=0)
    tracker.log_params({"a": 1})
    tracker.set_tags({"b": "2"})
    assert tracker.flush()
    tracker.close()
    assert isinstance(tracker, tracking.NullTracker) and not any(tmp_path.iterdir())


@pytest.mark.timeout(120)
def test_journal_resume_after_crash_and_full_replay(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for name, value in tracking._HTTP_BOUNDS.items():
        monkeypatch.setenv(name, value)
    cfg = config.load(None, ["run_name=journaled"])
    local_dir = tmp_path / "run" / tracking.LOCAL_DIR_NAME
    options = dict(rank=0, experiment="tests", root=tmp_path / "mlruns", tags={"world_size": "1"}, local_dir=local_dir)
    first = tracking.make_tracker(cfg, **options)
    first.log_metrics({"loss": 1.0}, step=0)
    assert first.flush()
    with (local_dir / "records.jsonl").open("ab") as journal:
        journal.write(b'{"op": "metrics", "ste')  # the process died mid-append

    second = tracking.make_tracker(cfg, **options)
    assert second.run_id == first.run_id
    second.log_metrics({"loss": 0.5}, step=1)
    second.set_tags({"note": "resumed"})
    second.close("FAILED")

    # Replaying the whole journal with the run forgotten: the start record finds its run
    # by the journal tag and SQLite drops the exact duplicate metrics.
    state = json.loads((local_dir / "delivered.json").read_text())
    (local_dir / "delivered.json").write_text(
        json.dumps({**state, "offset": 0, "run_id": None, "experiment_id": None})
    )
    report = tracking.sync(local_dir.parent)
    assert report.is_complete and report.run_id == first.run_id and report.num_pushed == 6

    client = mlflow.MlflowClient(tracking_uri=tracking.tracking_uri(tmp_path / "mlruns"))
    run = client.get_run(first.run_id)
    assert [(m.step, m.value) for m in client.get_metric_history(first.run_id, "loss")] == [(0, 1.0), (1, 0.5)]
    assert (
        run.info.status == "FAILED"
        and run.data.tags["note"] == "resumed"
        and run.data.params["run_name"] == "journaled"
    )
    assert len(client.search_runs([run.info.experiment_id])) == 1
    with pytest.raises(ValueError, match="no tracking journal"):
        tracking.sync(tmp_path)
