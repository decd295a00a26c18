"""The GPU check kit (scripts/gpu_kit.sh): what `prepare` gathers fits the device tool's runs, and the dry
run installs it over a Python built like the lent machine's and runs every stage's CPU form."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import device_like
from tests.conftest import PROJECT_ROOT

KIT = PROJECT_ROOT / "scripts" / "gpu_kit.sh"


def _prepare(kit_dir):
    completed = subprocess.run(
        ["bash", str(KIT), "prepare"], cwd=PROJECT_ROOT, env=os.environ | {"KIT_DIR": str(kit_dir)},
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return completed.stdout


@pytest.mark.slow
@pytest.mark.timeout(1000)
def test_prepare_cuts_the_wheels_into_runs_under_60_mib_that_reassemble(tmp_path):
    kit_dir = tmp_path / "gpu-kit"
    listing = _prepare(kit_dir)
    sizes = [int(size) for size in re.findall(r"run \d+: command .*\] +(\d+) MiB", listing)]
    assert len(sizes) >= 4 and max(sizes) < 60, listing
    assert '"bash scripts/gpu_kit.sh run train"' in listing and '"bash scripts/gpu_kit.sh run tests"' in listing
    names = {path.name.split("-")[0] for path in (kit_dir / "wheels").glob("*.whl")}
    assert {"deepspeed", "webdataset", "wids", "piq", "hjson", "pydantic"} <= names, names
    home = tmp_path / "machine"
    env = os.environ | {"KIT_DIR": str(kit_dir), "KIT_HOME": str(home)}
    for part in sorted((kit_dir / "parts").iterdir()):  # one stash run per part, as the machine gets them
        carried = tmp_path / f"run-{part.name}"
        (carried / "parts").mkdir(parents=True)
        (carried / "manifest.txt").write_bytes((kit_dir / "manifest.txt").read_bytes())
        (carried / "parts" / part.name).write_bytes(part.read_bytes())
        stashed = subprocess.run(
            ["bash", str(KIT), "run", "stash"], cwd=PROJECT_ROOT, env=env | {"KIT_DIR": str(carried)},
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert stashed.returncode == 0, stashed.stdout + stashed.stderr
    assert f"{len(sizes) - 3} earlier run(s) left files" in stashed.stdout
    check = f'source <(sed -n "/^assemble()/,/^}}/p" {KIT}); say() {{ echo "$@"; }}; KIT_HOME={home} assemble'
    assembled = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=300)
    assert assembled.returncode == 0, assembled.stdout + assembled.stderr
    assert any(path.name.startswith("nvidia_dali_cuda130-") for path in (home / "wheels").iterdir())


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_the_dry_run_installs_over_a_device_like_python_and_runs_each_stage_on_the_cpu(tmp_path):
    if sys.version_info[:2] != (3, 12):
        pytest.skip("the kit's wheels are for the machine's Python 3.12: make compat runs this test")
    kit_dir = PROJECT_ROOT / "gpu-kit"
    if not (kit_dir / "manifest.txt").is_file():
        _prepare(kit_dir)
    python = device_like.build(tmp_path / "device")
    blocked = subprocess.run([str(python), "-c", "import deepspeed"], capture_output=True, timeout=60)
    assert blocked.returncode != 0, "the device-like Python must not see DeepSpeed before the kit installs it"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"KIT_PYTHON": str(python), "OUT": str(tmp_path / "out"), "PATH": "/usr/bin:/bin"}
    ran = subprocess.run(
        ["bash", str(KIT), "run", "--dry-run"], cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=1400
    )
    assert ran.returncode == 0, ran.stdout[-4000:] + ran.stderr[-3000:]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert summary.count(": exit 0 in") == 3, summary
    assert "deepspeed" in ran.stdout and "dali" in ran.stdout
    assert (tmp_path / "out" / "loader.md").is_file() and (tmp_path / "out" / "reshape.md").is_file()
