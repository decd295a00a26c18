"""Air-gapped install: a CPU wheelhouse gathered by scripts/wheelhouse.sh (make wheelhouse) installs into a
fresh venv with ``pip install --no-index`` and runs DRCDown there."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from dist_syndr.reshape import drcdown
from tests.conftest import PROJECT_ROOT, straddling_pool

DRCDOWN_CALL = """
import json, sys
import numpy as np
import dist_syndr, torch
from dist_syndr.reshape import drcdown
pool = np.load(sys.argv[1])
features, labels = pool["features"], pool["labels"]
result = drcdown.run(features, labels, cap=5, seed=11)
print(json.dumps({"torch": torch.__version__, "module": dist_syndr.__file__, "kept": result.kept.tolist()}))
"""


def _constraints(tmp_path):
    """The lock, but torch 2.13.0 (the small CPU build on this machine's disk) and the torchvision that fits it."""
    lines = (PROJECT_ROOT / "lock" / "py311.txt").read_text().splitlines()
    kept = [line for line in lines if not line.startswith(("torch==", "torchvision==", "#"))]
    path = tmp_path / "constraints.txt"
    path.write_text("\n".join([*kept, "torch==2.13.0"]) + "\n")
    return path


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_cpu_wheelhouse_installs_without_an_index_and_runs_drcdown(tmp_path):
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the wheelhouse test uses the Python 3.11 CPU torch file of this machine")
    wheelhouse, venv = tmp_path / "wheelhouse", tmp_path / "venv"
    gather = [
        "bash", str(PROJECT_ROOT / "scripts" / "wheelhouse.sh"), "--python", "3.11", "--extras", "",
        "--out", str(wheelhouse), "--constraints", str(_constraints(tmp_path)), "--builder", sys.executable,
    ]  # fmt: skip
    gathered = subprocess.run(gather, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert gathered.returncode == 0, gathered.stdout[-2000:] + gathered.stderr[-3000:]
    assert "wheelhouse: " in gathered.stdout
    names = sorted(path.name for path in wheelhouse.glob("*.whl"))
    assert any(name.startswith("deepspeed-") and name.endswith("-py3-none-any.whl") for name in names), names
    assert any(name.startswith("torch-2.13.0") for name in names), names

    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    install = [
        str(venv / "bin" / "pip"),
        "install",
        "--quiet",
        "--no-index",
        "--find-links",
        str(wheelhouse),
        "dist_syndr",
    ]
    installed = subprocess.run(install, capture_output=True, text=True, timeout=900)
    assert installed.returncode == 0, installed.stderr[-3000:]
    features, labels = straddling_pool(3)
    np.savez(tmp_path / "pool.npz", features=features, labels=labels)
    ran = subprocess.run(
        [str(venv / "bin" / "python"), "-c", DRCDOWN_CALL, str(tmp_path / "pool.npz")],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    result = json.loads(ran.stdout.strip().splitlines()[-1])
    assert result["torch"].startswith("2.13.0")
    assert str(venv) in result["module"], "dist_syndr came from the source tree, not the wheel"
    expected = drcdown.run(features, labels, cap=5, seed=11).kept
    assert 0 < len(expected) < len(labels)
    np.testing.assert_array_equal(np.asarray(result["kept"]), expected)

    # That venv holds torch 2.13.0: installing the package into it (from the registry, no lock) keeps it.
    report = tmp_path / "report.json"
    again = [str(venv / "bin" / "pip"), "install", "--quiet", "--dry-run", "--report", str(report), str(PROJECT_ROOT)]
    resolved = subprocess.run(again, capture_output=True, text=True, timeout=600)
    assert resolved.returncode == 0, resolved.stderr[-3000:]
    planned = {
        item["metadata"]["name"]: item["metadata"]["version"] for item in json.loads(report.read_text())["install"]
    }
    assert "torch" not in planned, f"pip would replace torch 2.13.0 with {planned.get('torch')}"
