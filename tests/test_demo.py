"""``make demo``'s entry point: every stage end to end on the embedded photographs, then a rerun that reuses it all."""

from __future__ import annotations

import os
import time

import pytest

from launchers import demo
from tests.conftest import TORCH_EXTENSIONS_DIR, VENV_BIN


@pytest.mark.dist
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_demo_shards_trains_baseline_and_reshaped_evaluates_and_compares(tmp_path, capsys, monkeypatch):
    if not (VENV_BIN / "deepspeed").is_file():
        pytest.skip("the deepspeed launcher is not in .venv (run through make test)")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", TORCH_EXTENSIONS_DIR)
    argv = [
        "--work-dir",
        str(tmp_path / "demo"),
        "--mlruns",
        str(tmp_path / "mlruns"),
        "--fixtures",
        str(tmp_path / "no-fixtures"),
        "--epochs",
        "1",
        "synthetic_pool.num_samples=3000",
        "synthetic_pool.num_clusters=60",
    ]
    started = time.perf_counter()
    assert demo.main(argv) == 0
    first_seconds = time.perf_counter() - started
    report = capsys.readouterr().out
    assert "DRCDown on a generated pool: 3,000 samples" in report
    assert "8 contents x 10 engine distortions x 5 levels = 400 samples" in report and "NOT human scores" in report
    assert "held-out test: 60 images of 5 unseen contents" in report
    assert "demo-baseline: trained" in report and "demo-reshaped: trained" in report
    evaluated = report.split("== launchers/evaluate.py", 1)[1].split("==", 2)[1]
    assert evaluated.count("mixed/srcc ") == 2 and evaluated.count("mixed/plcc ") == 2
    table = report.split("== Baseline vs reshaped", 1)[1]
    for row in (
        "mixed: srcc @ LAST",
        "mixed: srcc @ BEST",
        "mixed: srcc (evaluate.py)",
        "train images/s",
        "kept (first epoch)",
    ):
        assert row in table
    kept = [line for line in table.splitlines() if line.startswith("| kept (first epoch)")][0].split("|")
    assert (
        int(kept[2]) == 400 and 0 < int(kept[3]) < 400
    )  # the baseline trains on everything; DRCDown thinned the reshaped pool
    assert f"mlflow ui --backend-store-uri sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}" in table
    for name in ("demo-baseline", "demo-reshaped"):
        run_dir = tmp_path / "demo" / "runs" / name
        assert (run_dir / "export" / "model_fp32.pt").is_file() and (
            tmp_path / "demo" / "evaluation" / name / "mixed_predictions.csv"
        ).is_file()

    started = time.perf_counter()
    assert demo.main(argv) == 0  # the rerun reuses the shards and the finished runs
    assert time.perf_counter() - started < first_seconds
    assert "demo-reshaped: reused (finished earlier)" in capsys.readouterr().out
    assert not any(
        name.startswith(".") and ".tmp" in name for name in os.listdir(tmp_path / "demo" / "shards" / "demo-train")
    )
