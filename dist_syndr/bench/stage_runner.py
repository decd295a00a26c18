"""Stages under time budgets, for the GPU kit: each stage killed whole at its budget, results kept as they come.

Each stage is one command started in a session of its own, with a marker in its
environment (``DIST_SYNDR_KIT_STAGE``, unique per run and stage) that every
process it starts inherits. The runner makes itself the child subreaper
(Linux ``prctl``), so processes orphaned inside a stage are re-parented to it
instead of to init. When the stage ends or its budget runs out, every process
that is a descendant of the runner, in the stage's session, or carrying the
stage's marker is killed with SIGKILL, round after round until none is left:
rank processes that start sessions of their own (``bench.py train``,
DeepSpeed's and torchrun's launchers) and their loader workers go with it.

What comes back, under ``out``, as each stage ends (a run cut short still
leaves what finished):

- ``summary.txt``: one line per stage (ok, failed, cut at its budget, skipped),
  then a last line naming what was cut or failed;
- ``results.md``: the Markdown report each stage wrote (its ``{report}`` path),
  under the stage's name;
- ``log.txt``: every stage's output as it runs.

Shapes: none.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from dist_syndr import files

log = logging.getLogger(__name__)

MARKER = "DIST_SYNDR_KIT_STAGE"
REPORT = "{report}"  # replaced in a stage's argv by the path its Markdown report goes to
LOG_LIMIT_BYTES = 15 * 2**20  # the device tool returns files of at most 16 MiB
_PR_SET_CHILD_SUBREAPER = 36

Status = Literal["ok", "failed", "cut", "skipped"]


@dataclass(frozen=True)
class Stage:
    """One command of a run, with the seconds it may take."""

    name: str
    argv: tuple[str, ...]
    budget_s: float
    job: str = ""  # one line: what it measures, against which baseline
    is_required: bool = False  # when it does not end ok, the later stages are skipped

    def __post_init__(self) -> None:
        if self.budget_s <= 0:
            raise ValueError(f"stage {self.name}: budget_s must be > 0, got {self.budget_s}")
        if not self.name.replace("-", "").isalnum():
            raise ValueError(f"stage {self.name!r}: names are letters, digits and '-'")


@dataclass(frozen=True)
class StageResult:
    """How one stage ended."""

    name: str
    status: Status
    seconds: float
    budget_s: float
    exit_code: int | None = None
    num_killed: int = 0  # processes still alive when the stage ended or was cut, killed by the runner
    reason: str = ""

    @property
    def line(self) -> str:
        """The stage's line in ``summary.txt``."""
        timing = f"in {self.seconds:.0f} s (budget {self.budget_s:.0f} s)"
        killed = f", {self.num_killed} process(es) killed" if self.num_killed else ""
        if self.status == "ok":
            return f"{self.name}: ok {timing}{killed}"
        if self.status == "cut":
            return f"{self.name}: CUT at its budget of {self.budget_s:.0f} s{killed}"
        if self.status == "failed":
            return f"{self.name}: FAILED (exit {self.exit_code}) {timing}{killed}"
        return f"{self.name}: skipped ({self.reason})"


def run_stages(
    stages: list[Stage], out: Path, *, title: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> list[StageResult]:
    """Run ``stages`` in order, each within its budget; results under ``out`` as each one ends."""
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="kit-reports-"))  # outside out: the device tool returns 8 files at most
    is_subreaper = become_subreaper()
    run_id = f"{os.getpid()}-{time.time_ns()}"
    total = sum(stage.budget_s for stage in stages)
    summary = [f"{title}: {len(stages)} stages, budgets {total:.0f} s in all"]
    if not is_subreaper:
        summary.append("(not the child subreaper here: orphans are found by their marker alone)")
    reports: list[str] = []
    files.write_text(out / "summary.txt", "\n".join(summary) + "\n")
    results: list[StageResult] = []
    blocker = None
    for stage in stages:
        if blocker is not None:
            result = StageResult(stage.name, "skipped", 0.0, stage.budget_s, reason=f"{blocker} did not end ok")
        else:
            report = scratch / f"{stage.name}.md"
            report.unlink(missing_ok=True)
            result = run_stage(stage, out / "log.txt", report, f"{run_id}/{stage.name}", env=env, cwd=cwd)
            if report.is_file():
                reports.append(f"# {result.line}\n\n{report.read_text().strip()}\n")
                files.write_text(out / "results.md", "\n".join(reports))
        if stage.is_required and result.status != "ok" and blocker is None:
            blocker = stage.name
        results.append(result)
        summary.append(result.line)
        log.info("%s", result.line)
        files.write_text(out / "summary.txt", "\n".join(summary) + "\n")
    summary.append(verdict(results))
    files.write_text(out / "summary.txt", "\n".join(summary) + "\n")
    _trim_head(out / "log.txt", LOG_LIMIT_BYTES)
    shutil.rmtree(scratch, ignore_errors=True)
    return results


def verdict(results: list[StageResult]) -> str:
    """The summary's last line: what was cut, what failed, what was skipped, or that all ended ok."""
    parts = []
    for status in ("cut", "failed", "skipped"):
        names = [result.name for result in results if result.status == status]
        if names:
            parts.append(f"{status}: {', '.join(names)}")
    return "; ".join(parts) if parts else f"all {len(results)} stages ok"


def run_stage(
    stage: Stage,
    log_path: Path,
    report: Path,
    marker: str,
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> StageResult:
    """Run one stage in a session of its own; kill everything it started when it ends or its budget runs out."""
    argv = [str(report) if arg == REPORT else arg for arg in stage.argv]
    environment = (os.environ | (env or {})) | {MARKER: marker}
    started = time.monotonic()
    with open(log_path, "ab") as output:
        output.write(f"\n===== {stage.name} (budget {stage.budget_s:.0f} s): {shlex.join(argv)}\n".encode())
        output.flush()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd=cwd,
            start_new_session=True,
        )
        try:
            exit_code: int | None = process.wait(timeout=stage.budget_s)
        except subprocess.TimeoutExpired:
            exit_code = None
        seconds = time.monotonic() - started
        killed = kill_stage(marker, process.pid)
        if killed:
            output.write(f"===== {stage.name}: killed {len(killed)} process(es):\n".encode())
            output.write("".join(f"  pid {pid}: {command}\n" for pid, command in killed.items()).encode())
        num_killed = len(killed)
        if exit_code is None:
            process.wait()
        if exit_code is None:
            result = StageResult(stage.name, "cut", seconds, stage.budget_s, None, num_killed)
        else:
            status: Status = "ok" if exit_code == 0 else "failed"
            result = StageResult(stage.name, status, seconds, stage.budget_s, exit_code, num_killed)
        output.write(f"===== {result.line}\n".encode())
    return result


def stage_processes(marker: str, session: int) -> list[psutil.Process]:
    """The live processes of a stage: the runner's descendants, the stage's session, the marker's carriers."""
    me = os.getpid()
    found = {process.pid: process for process in psutil.Process(me).children(recursive=True)}
    for process in psutil.process_iter():
        if process.pid in found or process.pid == me:
            continue
        try:
            if os.getsid(process.pid) == session or process.environ().get(MARKER) == marker:
                found[process.pid] = process
        except (psutil.Error, OSError):  # gone meanwhile, or another user's
            continue
    return [process for process in found.values() if _is_alive(process)]


def kill_stage(marker: str, session: int, *, max_rounds: int = 50) -> dict[int, str]:
    """SIGKILL every process of the stage until none is left (a dying parent may have started one more);
    the command line of each one killed, by pid."""
    killed: dict[int, str] = {}
    for _ in range(max_rounds):
        victims = stage_processes(marker, session)
        if not victims:
            break
        for process in victims:
            try:
                command = shlex.join(process.cmdline())[:300]
                process.kill()
                killed[process.pid] = command
            except psutil.Error:
                continue
        psutil.wait_procs(victims, timeout=2)
        reap_orphans()
    else:
        log.warning("stage %s: processes still alive after %d rounds of SIGKILL", marker, max_rounds)
    return killed


def become_subreaper() -> bool:
    """Make this process the child subreaper of everything it starts (Linux); False where that is unavailable."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def reap_orphans() -> None:
    """Collect the exit status of every finished child (orphans re-parented here would stay zombies)."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _is_alive(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _trim_head(path: Path, limit: int) -> None:
    """Keep the last ``limit`` bytes of ``path`` (the end of a log says the most)."""
    if not path.is_file() or path.stat().st_size <= limit:
        return
    with open(path, "rb") as source:
        source.seek(-limit, os.SEEK_END)
        tail = source.read()
    files.write_bytes(path, b"[... the start of this log was cut to fit the device tool's file limit]\n" + tail)
