"""Run comparison: the pure table, and the launcher over a real local MLflow store."""

from __future__ import annotations

import csv
import io
import math

import pytest

from dist_syndr import cli
from dist_syndr.tracking import compare
from launchers import compare as compare_launcher

NAN = float("nan")


def _record(run_id, name, params, **history):
    series = {key.replace("__", "/"): dict(enumerate(values)) for key, values in history.items()}
    return compare.RunRecord(run_id, name, "FINISHED", "1", {"run_name": name, **params}, series)


def _two_runs():
    base = _record(
        "a" * 32, "base", {"reshape.drcdown.enabled": "True", "train.lr": "0.0001", "seed": "0"},
        koniq__srcc=[0.70, 0.80, 0.78, 0.75], koniq__plcc=[0.71, 0.79, 0.77, 0.76],
        livec__srcc=[0.50, 0.55, 0.55], livec__plcc=[0.40, NAN, 0.45],
        images_per_second=[100.0, 110.0, 120.0, 130.0], kept=[1000.0, 900.0, 880.0, 870.0],
    )  # fmt: skip
    nodrc = _record(
        "b" * 32, "no-drcdown", {"reshape.drcdown.enabled": "False", "train.lr": "0.0001", "seed": "0", "extra": "x"},
        koniq__srcc=[0.60, 0.65, 0.70, 0.72], koniq__plcc=[0.61, 0.66, 0.69, 0.73],
        images_per_second=[90.0, 90.0], kept=[1200.0, 1200.0],
    )  # fmt: skip
    return [base, nodrc]


@pytest.mark.timeout(30)
def test_table_reports_config_differences_and_last_and_best_epochs():
    table = compare.compare(_two_runs())
    labels = [label for label, _ in table.rows]
    assert [label for label in labels if label.startswith("config: ")] == [
        "config: extra",
        "config: reshape.drcdown.enabled",
    ]
    assert table.row("config: extra") == [None, "x"]
    assert table.row("koniq: LAST epoch") == [3, 3] and table.row("koniq: srcc @ LAST") == [0.75, 0.72]
    assert table.row("koniq: BEST epoch (max srcc)") == [1, 3]
    assert table.row("koniq: srcc @ BEST") == [0.80, 0.72] and table.row("koniq: plcc @ BEST") == [0.79, 0.73]
    assert table.row("livec: BEST epoch (max srcc)") == [1, None], (
        "ties go to the earliest epoch; a run without the target has none"
    )
    assert math.isnan(table.row("livec: plcc @ BEST")[0])
    assert table.row("train images/s (mean over epochs)") == [115.0, 90.0]
    assert table.row("kept (first epoch)") == [1000.0, 1200.0] and table.row("kept (last epoch)") == [870.0, 1200.0]
    assert table.columns == ["base (aaaaaaaa)", "no-drcdown (bbbbbbbb)"]

    markdown = compare.to_markdown(table).splitlines()
    assert markdown[0] == "|  | base (aaaaaaaa) | no-drcdown (bbbbbbbb) |"
    assert "| koniq: srcc @ BEST | 0.8000 | 0.7200 |" in markdown
    assert "| livec: BEST epoch (max srcc) | 1 | – |" in markdown
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(compare.to_csv(table)))}
    assert rows["field"] == table.columns
    assert rows["koniq: plcc @ LAST"] == ["0.76", "0.73"] and rows["config: extra"] == ["", "x"]
    assert rows["kept (last epoch)"] == ["870", "1200"] and rows["livec: plcc @ BEST"] == ["nan", ""]
    with pytest.raises(ValueError, match="no runs"):
        compare.compare([])


def _log_run(client, experiment_id, record):
    from mlflow.entities import Metric, Param

    run_id = client.create_run(experiment_id, run_name=record.run_name).info.run_id
    params = [Param(k, v) for k, v in record.params.items()]
    metrics = [
        Metric(key, value, 1000 + epoch, epoch)
        for key, series in record.history.items()
        for epoch, value in series.items()
    ]
    metrics += [Metric("train/loss", 1.0 / (step + 1), 1000 + step, step) for step in range(10)]
    client.log_batch(run_id, metrics=metrics, params=params)
    client.set_terminated(run_id)
    return run_id


@pytest.mark.timeout(120)
def test_launcher_over_a_store_writes_and_logs_the_table(tmp_path, capsys):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment_id = client.create_experiment("cmp", artifact_location=(tmp_path / "artifacts").as_uri())
    base, nodrc = _two_runs()
    run_ids = [_log_run(client, experiment_id, record) for record in (base, nodrc)]
    out = tmp_path / "compare"

    assert compare_launcher.main([*run_ids, "--tracking-uri", uri, "--out", str(out)]) == 0
    (csv_path,), (markdown_path,) = list(out.glob("compare-*.csv")), list(out.glob("compare-*.md"))
    printed = capsys.readouterr().out
    assert (
        "| koniq: srcc @ BEST | 0.8000 | 0.7200 |" in printed
        and "| config: reshape.drcdown.enabled | True | False |" in printed
    )
    rows = {row[0]: row[1:] for row in csv.reader(io.StringIO(csv_path.read_text()))}
    assert rows["run id"] == run_ids and rows["koniq: BEST epoch (max srcc)"] == ["1", "3"]
    assert "train: LAST epoch" not in rows, "train/* step metrics are not an evaluation target"
    assert markdown_path.read_text() == compare.to_markdown(compare.compare(compare.fetch_runs(client, run_ids)))

    logged = client.search_runs([experiment_id], filter_string="attributes.run_name = 'compare'")
    assert len(logged) == 1 and logged[0].data.tags[compare.KIND_TAG] == "compare"
    assert sorted(a.path for a in client.list_artifacts(logged[0].info.run_id)) == sorted(
        [markdown_path.name, csv_path.name]
    )
    # --experiment compares the training runs only, never earlier comparisons.
    assert compare.experiment_run_ids(client, "cmp") == run_ids
    assert compare_launcher.main(["--experiment", "cmp", "--tracking-uri", uri, "--out", str(out), "--no-log"]) == 0
    assert len(client.search_runs([experiment_id], filter_string="attributes.run_name = 'compare'")) == 1

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli.run(
            lambda: compare_launcher.main(
                [run_ids[0], "0123456789abcdef" * 2, "--tracking-uri", uri, "--out", str(out)]
            )
        )
    assert exit_info.value.code == 2
    assert "error: run 0123456789abcdef0123456789abcdef: not found in sqlite:///" in capsys.readouterr().err
