"""``make demo``'s entry point runs every stage and reports what it did."""

from __future__ import annotations

import pytest

from launchers import demo


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_runs_all_stages(tmp_path, capsys):
    argv = ["--work-dir", str(tmp_path), "--fixtures", str(tmp_path / "no-fixtures"), "synthetic_pool.num_samples=3000", "synthetic_pool.num_clusters=60"]
    assert demo.main(argv) == 0
    report = capsys.readouterr().out
    assert "DRCDown on a generated pool: 3,000 samples" in report
    assert "DDCUp on generated references" in report and "pseudo-labelled samples" in report
    assert "100 samples in 4 shards" in report and "random 224x224 crops" in report
    assert "skipped (no ../shared/fixtures/refset here)" in report
    assert demo.main(argv) == 0  # the rerun reuses the shards
    assert "100 samples in 4 shards" in capsys.readouterr().out
