"""The ablation study: planning, the statistics against scipy, and a real 2 x 2 study on the smoke preset."""

from __future__ import annotations

import csv
import math
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from dist_syndr.study import statistics
from dist_syndr.study.plan import parse_variants, plan_study
from tests.conftest import PROJECT_ROOT
from tests.training_runs import PRESET, overrides, run_env


def test_paired_difference_matches_scipy_and_a_seeded_bootstrap():
    variant = np.array([0.61, 0.58, 0.66, 0.63, 0.60])
    baseline = np.array([0.55, 0.57, 0.59, 0.62, 0.52])
    result = statistics.paired_difference(variant, baseline)
    assert result.count == 5 and result.mean == pytest.approx((variant - baseline).mean())
    assert result.p_value == pytest.approx(stats.ttest_rel(variant, baseline).pvalue, rel=1e-12)
    rng = np.random.default_rng(statistics.BOOTSTRAP_SEED)
    differences = variant - baseline
    means = rng.choice(differences, size=(statistics.NUM_RESAMPLES, 5), replace=True).mean(axis=1)
    assert (result.low, result.high) == tuple(np.quantile(means, [0.025, 0.975]))
    reference = stats.bootstrap((differences,), np.mean, method="percentile", n_resamples=10_000, rng=1)
    interval = reference.confidence_interval
    assert result.low == pytest.approx(interval.low, abs=0.01) and result.high == pytest.approx(
        interval.high, abs=0.01
    )


def test_statistics_with_too_few_seeds_or_missing_values_say_so():
    one = statistics.paired_difference(np.array([0.5]), np.array([0.4]))
    assert one.mean == pytest.approx(0.1) and math.isnan(one.low) and math.isnan(one.p_value)
    same = statistics.paired_difference(np.array([0.5, 0.6]), np.array([0.4, 0.5]))
    assert same.p_value == 0.0 and same.low == pytest.approx(0.1) and same.high == pytest.approx(0.1)
    gap = statistics.paired_difference(np.array([0.5, np.nan, 0.7]), np.array([0.4, 0.5, 0.5]))
    assert gap.count == 2 and gap.mean == pytest.approx(0.15)
    assert statistics.spread(np.array([0.2, 0.4])).std == pytest.approx(np.std([0.2, 0.4], ddof=1))
    assert math.isnan(statistics.spread(np.array([0.2])).std)


def test_a_stopping_rule_adds_seeds_until_the_interval_is_narrow_enough(tmp_path, monkeypatch):
    """Seeds 3, 4, 5, ...: each round trains only the new runs (earlier ones are reused) and stops once the
    interval of the last variant against the baseline (srcc@LAST) is within the half-width, or at --seeds."""
    from dist_syndr.study import report, results, runner, session

    rounds = []
    monkeypatch.setattr(runner, "run_all", lambda preset, runs, logs, parallel: rounds.append(len(runs)) or runs)
    monkeypatch.setattr(results, "collect", lambda client, outcomes: outcomes)
    monkeypatch.setattr(results, "diagnostics_means", lambda values, variants: {})

    def summarise(values, variants, seeds):  # an interval that narrows as 1/seeds: ±0.3 at 3 seeds, ±0.18 at 5
        half = 0.9 / len(seeds)
        difference = statistics.PairedDifference(0.1, 0.1 - half, 0.1 + half, 0.2, len(seeds))
        return [results.SummaryRow("t", "srcc@LAST", "both", statistics.spread(np.zeros(2)), difference)]

    monkeypatch.setattr(results, "summarise", summarise)
    monkeypatch.setattr(report, "plot", lambda rows, path: None)
    monkeypatch.setattr(report, "markdown", lambda rows, means, count: f"{count} seeds\n")
    monkeypatch.setattr(report, "write_and_log", lambda *args: "parent")
    preset = tmp_path / "p.yaml"
    preset.write_text(f"train:\n  output_dir: {tmp_path}\n")
    study = session.run_study(preset, ["baseline", "both"], 10, [], until_halfwidth=0.2)
    assert rounds == [6, 8, 10] and study.markdown.startswith("5 seeds")  # 3, 4, 5 seeds x 2 variants
    assert "reached (±0.1800 with 5 seeds)" in study.markdown
    capped = session.run_study(preset, ["baseline", "both"], 4, [], until_halfwidth=0.01)
    assert "not reached within 4 seeds (±0.2250 with 4 seeds)" in capped.markdown
    with pytest.raises(ValueError, match="needs a positive width and the baseline"):
        session.run_study(preset, ["baseline"], 4, [], until_halfwidth=0.05)


def test_variants_and_runs_are_planned_with_clear_errors():
    assert parse_variants("both, baseline") == ["baseline", "both"]
    with pytest.raises(ValueError, match="unknown variant"):
        parse_variants("baseline,ddcupp")
    with pytest.raises(ValueError, match="needs the baseline"):
        parse_variants("ddcup,both")
    runs = plan_study("s", ["baseline", "drcdown"], [0, 1], ["train.epochs=1"])
    assert [r.run_name for r in runs] == ["s-baseline-seed0", "s-baseline-seed1", "s-drcdown-seed0", "s-drcdown-seed1"]
    assert runs[3].overrides == (
        "train.epochs=1",
        "seed=1",
        "run_name=s-drcdown-seed1",
        "reshape.ddcup.enabled=false",
        "reshape.drcdown.enabled=true",
    )
    with pytest.raises(ValueError, match="the study sets seed"):
        plan_study("s", ["baseline"], [0], ["seed=3"])


def _study(tmp_path) -> subprocess.CompletedProcess:
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "study.py"), "--config", str(PRESET), "--seeds", "2"]
    command += ["--variants", "baseline,drcdown", "--name", "smoke", *overrides(tmp_path)]
    return subprocess.run(command, cwd=tmp_path, env=run_env(), capture_output=True, text=True, timeout=900)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_two_by_two_study_reports_what_its_runs_logged_and_a_rerun_reuses_them(tmp_path):
    import mlflow

    from dist_syndr.tracking import compare
    from dist_syndr.tracking.tracker import tracking_uri

    first = _study(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "4 runs (4 trained now, 0 reused)" in first.stdout
    folder = tmp_path / "runs" / "studies" / "smoke"
    rows = list(csv.DictReader((folder / "study.csv").open()))
    client = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "mlruns"))
    parent = (folder / "parent_run_id").read_text().strip()
    values = {}
    for variant in ("baseline", "drcdown"):
        for seed in (0, 1):
            run_id = (tmp_path / "runs" / f"smoke-{variant}-seed{seed}" / "mlflow_run_id").read_text().strip()
            run = client.get_run(run_id)
            assert run.data.tags["mlflow.parentRunId"] == parent and run.data.params["seed"] == str(seed)
            srcc = {m.step: m.value for m in client.get_metric_history(run_id, "smoke-test/srcc")}
            plcc = {m.step: m.value for m in client.get_metric_history(run_id, "smoke-test/plcc")}
            best = compare.best_epoch(srcc)
            values[(variant, seed)] = {"srcc@LAST": srcc[max(srcc)], "plcc@LAST": plcc[max(plcc)]}
            values[(variant, seed)] |= {"srcc@BEST": srcc[best], "plcc@BEST": plcc[best]}
    for row in rows:
        series = np.array([values[(row["variant"], seed)][row["measure"]] for seed in (0, 1)])
        assert float(row["mean"]) == pytest.approx(series.mean(), abs=1e-12)
        assert float(row["sd"]) == pytest.approx(series.std(ddof=1), abs=1e-12)
        if row["variant"] == "drcdown":
            baseline = np.array([values[("baseline", seed)][row["measure"]] for seed in (0, 1)])
            assert float(row["diff_mean"]) == pytest.approx((series - baseline).mean(), abs=1e-12)
    assert len(rows) == 4 * 2 and {row["target"] for row in rows} == {"smoke-test"}
    assert "Δsrcc@LAST vs baseline" in first.stdout and "diag/" in (folder / "study.md").read_text()
    artifacts = {a.path for a in client.list_artifacts(parent, "study")}
    assert artifacts == {"study/study.md", "study/study.csv", "study/study.png"}
    # a second invocation trains nothing and reports into the same parent
    again = _study(tmp_path)
    assert again.returncode == 0 and "4 runs (0 trained now, 4 reused)" in again.stdout
    assert (folder / "parent_run_id").read_text().strip() == parent
    assert list(csv.DictReader((folder / "study.csv").open())) == rows
