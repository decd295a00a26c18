"""The GPU check kit (scripts/gpu_kit.sh, dist_syndr/bench/gpu_kit.py, dist_syndr/bench/stage_runner.py): one
core call under 60 MiB whose stage budgets, derived from the plans, sum to at most 540 s; every stage's CPU form
in a dry run over a Python built like the lent machine's; a stage over its budget killed with every process it
started, sessions of their own included; the DALI profile's parts that reassemble."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys
import tarfile
import textwrap
from pathlib import Path
from xml.etree import ElementTree

import psutil
import pytest

from dist_syndr.bench import gpu_kit
from tests import device_like
from tests.conftest import PROJECT_ROOT

KIT = PROJECT_ROOT / "scripts" / "gpu_kit.sh"
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _kit(*args: str, env: dict[str, str] | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    base = {"KIT_BUILD_PYTHON": sys.executable, "PYTHONPATH": str(PROJECT_ROOT)}
    return subprocess.run(
        ["bash", str(KIT), *args], cwd=PROJECT_ROOT, env=os.environ | base | (env or {}),
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.timeout(60)
def test_help_exits_0_and_a_bad_command_exits_2():
    shown = _kit("--help")
    assert shown.returncode == 0 and "run core [--dry-run]" in shown.stdout and "prepare" in shown.stdout
    assert _kit("frobnicate").returncode == 2
    assert _kit("run", "frobnicate").returncode == 2


@pytest.mark.timeout(60)
def test_core_budgets_are_derived_from_the_plans_and_fit_one_call():
    stages = gpu_kit.stages("core", is_dry_run=False, site=Path("site"), wheels=[Path("wheels")])
    assert [stage.name for stage in stages] == ["install", "preflight", "gpu-tests", "reshape", "train", "score"]
    assert sum(stage.budget_s for stage in stages) <= gpu_kit.CORE_LIMIT_S == 540
    estimates = gpu_kit.estimates("core")
    budgets = {stage.name: stage.budget_s for stage in stages}
    for name, estimate in estimates.items():
        assert estimate * gpu_kit.Assumptions().margin <= budgets[name] < estimate * 1.5, name
    # a bigger plan, a bigger estimate: the budget follows the plan it runs
    from dist_syndr.bench.train import TrainPlan

    longer = dataclasses.replace(TrainPlan.gpu(), epochs=6)
    assert gpu_kit.train_estimate_s(longer, gpu_kit.Assumptions()) > estimates["train"]
    # the reshape stage runs the GPU-only plan: 1M x 768, no CPU baselines
    assert "--gpu-only" in stages[3].argv and "--quick" not in stages[3].argv
    tests = stages[2].argv
    assert tests[tests.index("-m", 3) + 1] == "gpu and not dali and not slow" and "tests.timeout_cap" in tests
    dry = gpu_kit.stages("core", is_dry_run=True, site=Path("site"), wheels=[Path("wheels")])
    assert all("--quick" in stage.argv for stage in dry[3:]) and "--dry-run" in dry[0].argv
    dali = gpu_kit.stages("dali", is_dry_run=False, site=Path("site"), wheels=[])
    assert sum(stage.budget_s for stage in dali) <= gpu_kit.CORE_LIMIT_S


@pytest.mark.timeout(60)
def test_only_and_budget_overrides_name_the_stage_they_reject():
    run = ["run", "core", "--out", "o", "--site", "s", "--wheels", "w"]
    with pytest.raises(ValueError, match=r"--budget trian=5: expected STAGE=SECONDS with STAGE one of"):
        gpu_kit.main([*run, "--budget", "trian=5"])
    with pytest.raises(ValueError, match=r"--only bogus: unknown stage"):
        gpu_kit.main([*run, "--only", "bogus"])
    stages = gpu_kit.stages("core", is_dry_run=False, site=Path("s"), wheels=[])
    chosen = gpu_kit._apply_overrides(stages, "train", ["train=7"])
    assert [(stage.name, stage.budget_s) for stage in chosen][-1] == ("train", 7.0)
    assert [stage.name for stage in chosen] == ["install", "preflight", "train"]  # the required ones stay


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_prepare_lists_one_core_call_under_60_mib_with_its_stage_budgets(tmp_path):
    kit_dir = tmp_path / "gpu-kit"
    prepared = _kit("prepare", env={"KIT_DIR": str(kit_dir)})
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    listing = prepared.stdout
    calls = re.findall(r"call (\d+): command \"(.*?)\"  carry \[(.*?)\]  timeout_s (\d+)  (\d+) MiB", listing)
    core = listing.split("dali profile")[0]
    assert "core profile: 1 call" in core and len(re.findall(r"call \d+:", core)) == 1
    number, command, carry, timeout_s, size = calls[0]
    assert command == "bash scripts/gpu_kit.sh run core" and carry == f'"{kit_dir}/core"' and timeout_s == "600"
    assert int(size) < 60
    budgets = {name: int(seconds) for name, seconds in re.findall(r"^  ([a-z-]+) +(\d+) s", core, re.M)}
    assert list(budgets) == ["install", "preflight", "gpu-tests", "reshape", "train", "score"]
    assert sum(budgets.values()) <= 540 and f"in all        {sum(budgets.values())} s" in core
    wheels = {path.name.split("-")[0] for path in (kit_dir / "core" / "wheels").glob("*.whl")}
    assert {"deepspeed", "webdataset", "wids", "piq", "hjson", "pydantic", "pydantic_core"} <= wheels, wheels
    assert not any(name.startswith(("nvidia_dali", "torch")) for name in wheels)
    assert (kit_dir / "core" / "wheels" / "SHA256SUMS").read_text().count(".whl") == len(wheels)
    assert "dali profile (optional): not prepared" in listing
    # with DALI's parts prepared (two stand-ins here), its calls: one stash per part, then the run
    (kit_dir / "dali" / "parts").mkdir(parents=True)
    for name in ("part-00", "part-01"):
        (kit_dir / "dali" / "parts" / name).write_bytes(os.urandom(2**20))
    (kit_dir / "dali" / "manifest.txt").write_text("parts=2\n")
    dali = _kit("prepare", env={"KIT_DIR": str(kit_dir)}).stdout.split("dali profile (optional): ", 1)[1]
    assert dali.startswith("3 calls in a row") and dali.count('"bash scripts/gpu_kit.sh run stash"') == 2
    assert f'"bash scripts/gpu_kit.sh run dali"  carry ["{kit_dir}/core", "{kit_dir}/dali/manifest.txt"]' in dali
    assert re.search(r"^  dali-tests +240 s", dali, re.M) and "in all        475 s" in dali


# ---------------------------------------------------------------------------
# the stage runner: budgets, process groups, sessions and orphans

_SPAWNER = textwrap.dedent(
    """
    import os, subprocess, sys, time
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    bare = {"PATH": os.environ["PATH"]}  # no marker: found only as the runner's descendant
    pids = []
    # a rank in a session of its own (as bench.py train and DeepSpeed's launcher start them), with a worker
    rank = subprocess.Popen(
        [sys.executable, "-c", "import subprocess, sys, time; "
         "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], start_new_session=True); "
         "print(w.pid, flush=True); time.sleep(600)"],
        start_new_session=True, stdout=subprocess.PIPE, text=True)
    pids += [rank.pid, int(rank.stdout.readline())]
    pids.append(subprocess.Popen(sleeper, start_new_session=True, env=bare).pid)
    # an orphan: its parent exits at once, so it is re-parented (to the runner, the child subreaper)
    middle = subprocess.run(
        [sys.executable, "-c", "import subprocess, sys; "
         "print(subprocess.Popen(sys.argv[1:], start_new_session=True, stdout=-3, stderr=-3).pid)",
         *sleeper],
        env=bare, capture_output=True, text=True)
    pids.append(int(middle.stdout))
    pids.append(subprocess.Popen(sleeper).pid)  # in the stage's own session
    open(sys.argv[1], "w").write(" ".join(map(str, pids)))
    time.sleep(600)
    """
)


@pytest.mark.timeout(120)
def test_a_stage_over_its_budget_is_killed_with_every_process_it_started(tmp_path):
    pids_file, out = tmp_path / "pids", tmp_path / "out"
    script = tmp_path / "spawner.py"
    script.write_text(_SPAWNER)
    python = sys.executable
    stages = [
        ("spawner", (python, str(script), str(pids_file)), 8.0, False),
        ("after", (python, "-c", "print('still running')"), 30.0, False),
        ("broken", (python, "-c", "raise SystemExit(3)"), 30.0, True),
        ("never", (python, "-c", "print('not reached')"), 30.0, False),
    ]
    runner = textwrap.dedent(
        """
        import json, sys
        from pathlib import Path
        from dist_syndr.bench.stage_runner import Stage, run_stages
        stages = [Stage(name, tuple(argv), budget, is_required=required)
                  for name, argv, budget, required in json.loads(sys.argv[1])]
        results = run_stages(stages, Path(sys.argv[2]), title="synthetic")
        print(json.dumps([(r.name, r.status, r.num_killed) for r in results]))
        """
    )
    ran = subprocess.run(
        [python, "-c", runner, json.dumps(stages), str(out)], cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=100, env=os.environ | {"PYTHONPATH": str(PROJECT_ROOT)},
    )  # fmt: skip
    assert ran.returncode == 0, ran.stdout + ran.stderr
    results = {name: (status, killed) for name, status, killed in json.loads(ran.stdout.splitlines()[-1])}
    pids = [int(pid) for pid in pids_file.read_text().split()]
    assert len(pids) == 5
    survivors = [pid for pid in pids if not _gone(pid)]
    assert not survivors, f"still alive after the cut: {[psutil.Process(pid).cmdline() for pid in survivors]}"
    assert results["spawner"][0] == "cut" and results["spawner"][1] >= 6  # the stage, its 5 and the rank's parent
    assert results["after"] == ("ok", 0) and results["broken"][0] == "failed" and results["never"][0] == "skipped"
    summary = (out / "summary.txt").read_text().splitlines()
    assert summary[1].startswith("spawner: CUT at its budget of 8 s") and summary[2].startswith("after: ok in")
    assert summary[3].startswith("broken: FAILED (exit 3)") and summary[4] == "never: skipped (broken did not end ok)"
    assert summary[-1] == "cut: spawner; failed: broken; skipped: never"
    log = (out / "log.txt").read_text()
    assert "still running" in log and "===== spawner: killed" in log and "not reached" not in log
    assert sorted(path.name for path in out.iterdir()) == ["log.txt", "summary.txt"]  # no report was written


@pytest.mark.timeout(120)
def test_the_timeout_cap_overrides_a_longer_marker_and_keeps_a_shorter_one(tmp_path):
    tests = tmp_path / "test_capped.py"
    tests.write_text(
        "import time, pytest\n\n"
        "@pytest.mark.timeout(900)\ndef test_long_marker():\n    time.sleep(30)\n\n"
        "@pytest.mark.timeout(1)\ndef test_short_marker():\n    time.sleep(10)\n\n"
        "def test_no_marker():\n    time.sleep(30)\n\n"
        "def test_quick():\n    pass\n"
    )
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "tests.timeout_cap", str(tests)]
    env = os.environ | {"PYTHONPATH": str(PROJECT_ROOT)}
    report = tmp_path / "report.xml"
    ran = subprocess.run([*command, "--timeout-cap", "3", f"--junitxml={report}"], cwd=PROJECT_ROOT, env=env,
                         capture_output=True, text=True, timeout=100)  # fmt: skip
    assert "3 failed, 1 passed" in ran.stdout, ran.stdout[-3000:]
    # read each test's failure message from the JUnit report: the terminal's summary lines depend on its width
    failures = {case.get("name"): case.find("failure") for case in ElementTree.parse(report).iter("testcase")}
    messages = {name: None if failure is None else failure.get("message", "") for name, failure in failures.items()}
    assert "Timeout (>3.0s)" in messages["test_long_marker"]  # the cap wins over a longer marker
    assert "Timeout (>1.0s)" in messages["test_short_marker"]  # a shorter own marker is kept
    assert "Timeout (>3.0s)" in messages["test_no_marker"]
    assert messages["test_quick"] is None


# ---------------------------------------------------------------------------
# the dry run, and the DALI profile's parts


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_the_core_dry_run_over_a_device_like_python_runs_every_stage_and_cuts_train_with_its_ranks(tmp_path):
    kit_dir = tmp_path / "gpu-kit"
    prepared = _kit("prepare", env={"KIT_DIR": str(kit_dir), "KIT_PYTHON_VERSION": PYTHON_VERSION})
    assert prepared.returncode == 0, prepared.stdout[-3000:] + prepared.stderr[-3000:]
    python = device_like.build(tmp_path / "device")
    blocked = subprocess.run([str(python), "-c", "import deepspeed"], capture_output=True, timeout=60)
    assert blocked.returncode != 0, "the device-like Python must not see DeepSpeed before the kit installs it"
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env |= {"KIT_PYTHON": str(python), "KIT_DIR": str(kit_dir), "OUT": str(out), "PATH": "/usr/bin:/bin"}
    # train's budget is cut short on purpose: its two rank processes (sessions of their own) start about 10 s
    # (25 s on a busy machine) into the stage, and the dry run repeats its cases (--repeats 60) so they run well
    # past 50 s even on an idle machine
    ran = subprocess.run(
        ["bash", str(KIT), "run", "core", "--dry-run", "--budget", "train=50"], cwd=PROJECT_ROOT, env=env,
        capture_output=True, text=True, timeout=1150,
    )  # fmt: skip
    assert ran.returncode == 1, ran.stdout[-4000:] + ran.stderr[-3000:]  # one stage was cut
    summary = (out / "summary.txt").read_text()
    assert summary.startswith("core profile (dry run: CPU forms, tiny sizes): 6 stages")
    for name in ("install", "preflight", "gpu-tests", "reshape", "score"):
        assert re.search(rf"^{name}: ok in \d+ s \(budget 600 s\)", summary, re.M), summary
    assert re.search(r"^train: CUT at its budget of 50 s, \d+ process\(es\) killed$", summary, re.M), summary
    assert summary.rstrip().endswith("cut: train")
    log = (out / "log.txt").read_text()
    killed = log.split("===== train: killed", 1)[1].split("=====", 1)[0]
    # both ranks, though in sessions of their own (a pair that was still exiting when the next started counts too)
    assert killed.count("dist_syndr.bench.train_worker") in (2, 4), killed
    assert all(_gone(int(pid)) for pid in re.findall(r"pid (\d+):", killed))
    assert "import deepspeed: 0.19.8 from" in log and "is still the machine's own" in log
    results = (out / "results.md").read_text()
    assert "# preflight: ok" in results and "| device | CPU" in results
    assert "# reshape: ok" in results and "cpu (no GPU visible)" in results and "# score: ok" in results
    assert "# train" not in results  # a cut stage wrote no report
    assert re.search(r"\n\d+ skipped", log) and " passed" not in log.split("===== gpu-tests", 2)[1]  # no GPU here
    assert sorted(path.name for path in out.iterdir()) == ["log.txt", "results.md", "summary.txt"]


@pytest.mark.timeout(120)
def test_the_dali_parts_stash_one_call_at_a_time_and_reassemble(tmp_path):
    kit_dir = tmp_path / "gpu-kit" / "dali"
    wheels = tmp_path / "dali-wheels"
    wheels.mkdir()
    (wheels / "nvidia_dali_fake-1.0-py3-none-any.whl").write_bytes(os.urandom(3 * 2**20 + 123))
    (kit_dir / "parts").mkdir(parents=True)
    with tarfile.open(kit_dir / "payload.tar", "w") as tar:
        tar.add(wheels, arcname="dali-wheels")
    split = f'source <(sed -n "/^split_payload()/,/^}}/p" {KIT}); KIT_PART_MIB=1 split_payload {kit_dir}'
    assert subprocess.run(["bash", "-c", split], timeout=60).returncode == 0
    parts = sorted((kit_dir / "parts").iterdir())
    assert len(parts) == 4 and "parts=4" in (kit_dir / "manifest.txt").read_text()
    home = tmp_path / "machine"
    for number, part in enumerate(parts):  # one stash call per part, as the machine gets them
        carried = tmp_path / f"call-{number}" / "dali"
        (carried / "parts").mkdir(parents=True)
        (carried / "manifest.txt").write_bytes((kit_dir / "manifest.txt").read_bytes())
        (carried / "parts" / part.name).write_bytes(part.read_bytes())
        stashed = _kit("run", "stash", env={"KIT_DIR": str(carried.parent), "KIT_HOME": str(home)}, timeout=60)
        assert stashed.returncode == 0 and f"{number} earlier call(s) left files" in stashed.stdout, stashed.stdout
    check = f'source <(sed -n "/^assemble()/,/^}}/p" {KIT}); say() {{ echo "$@"; }}; KIT_HOME={home} assemble'
    assembled = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=60)
    assert assembled.returncode == 0, assembled.stdout + assembled.stderr
    name = "nvidia_dali_fake-1.0-py3-none-any.whl"
    assert (home / "dali-wheels" / name).read_bytes() == (wheels / name).read_bytes()
    (home / "parts" / parts[2].name).write_bytes(b"damaged")
    damaged = subprocess.run(["bash", "-c", check], capture_output=True, text=True, timeout=60)
    assert damaged.returncode != 0 and "parts missing or damaged" in damaged.stdout
