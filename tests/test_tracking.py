"""Tracking against a real local MLflow store."""

from __future__ import annotations

import math

import pytest

from dist_syndr import config, tracking


@pytest.mark.timeout(120)
def test_params_metrics_artifacts_and_resume(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    cfg = config.load(None, ["run_name=tracked", "reshape.drcdown.cap=7"])
    tags = {"git_commit": tracking.git_commit(tmp_path), "world_size": "1"}
    tracker = tracking.make_tracker(cfg, rank=0, experiment="tests", root=tmp_path / "mlruns", tags=tags)
    tracker.log_metrics({"loss": 0.5, "srcc": float("nan")}, step=1)
    tracker.log_metrics({"loss": 0.25}, step=2)
    artifact = tmp_path / "keep-list.txt"
    artifact.write_text("a\nb\n")
    tracker.log_artifact(artifact, "keep_lists")
    resumed = tracking.make_tracker(cfg, rank=0, experiment="tests", root=tmp_path / "mlruns", tags=tags, run_id=tracker.run_id)
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
    tracker.close()
    assert isinstance(tracker, tracking.NullTracker) and not any(tmp_path.iterdir())
