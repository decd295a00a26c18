"""The benchmark launcher runs its quick plans and reports ratios against its baselines."""

from __future__ import annotations

import pytest

from launchers import bench


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name, expected", [("reshape", ["speed-up", "same clusters", "yes"]), ("shard", ["naive", "x naive", "jpeg2000"]), ("loader", ["webdataset"])])
def test_quick_benchmarks_report_ratios(name, expected, tmp_path, capsys):
    out = tmp_path / "report.md"
    assert bench.main([name, "--quick", "--out", str(out)]) == 0
    report = out.read_text()
    assert all(word in report for word in expected)
    assert "NO" not in report.split("|")  # no dense/fast disagreement
