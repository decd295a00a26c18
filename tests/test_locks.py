"""Job locks and what a scoring output records: two sharding steps on one set, two score.py jobs on one output,
reruns with another model (real processes; the first job is held inside its lock so the second meets it)."""

from __future__ import annotations

import csv
import errno
import json
import multiprocessing
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from dist_syndr import files
from dist_syndr.runs import weights
from dist_syndr.scoring import output
from dist_syndr.sharding import photos, writer
from dist_syndr.sharding.reindex import reindex
from dist_syndr.sharding.shard_set import LOCK_NAME, ShardSet
from launchers import score as score_launcher
from launchers import shard as shard_launcher
from tests.conftest import PROJECT_ROOT, free_port, index_as_format_1, write_format_1
from tests.test_evaluation import _run_dir, _tiny_model, _write_images
from tests.test_shard_step import _pristine_folder, undistorted_folder_overrides

SCORE = [sys.executable, str(PROJECT_ROOT / "launchers" / "score.py")]
SHARD = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py")]
CENTRE = ["--crop-mode", "centre", "--workers", "0"]
HOLDER = r"is in use by another job \(pid {pid} on .+, since .+; lock {lock}\)"


@pytest.fixture(scope="module")
def scoring_root(tmp_path_factory) -> Path:
    """A tiny run (``runs/tiny``) and seven photos (``photos/``)."""
    root = tmp_path_factory.mktemp("locks")
    _run_dir(root, _tiny_model(3))
    _write_images(root / "photos")
    return root


def _env() -> dict[str, str]:
    drop = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT", "MASTER_ADDR")
    return {k: v for k, v in os.environ.items() if k not in drop} | {"PYTHONPATH": str(PROJECT_ROOT)}


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir()) if path.is_file()}


def _one_error_line(stderr: str) -> str:
    """The only ``error:`` line a refused launcher printed (and no traceback)."""
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return errors[0]


def _two_ranks(command: list[str], cwd: Path) -> list[subprocess.CompletedProcess]:
    """``command`` as two ranks of one gloo group (as torchrun starts them), each with its own output."""
    port = free_port()
    ranks = {"WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    processes = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=_env() | ranks | {"RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]
    try:
        outputs = [process.communicate(timeout=180) for process in processes]
    finally:
        for process in processes:
            process.kill()
    return [
        subprocess.CompletedProcess(command, process.returncode, out, err)
        for process, (out, err) in zip(processes, outputs, strict=True)
    ]


# ---------------------------------------------------------------------------
# score.py


def _paused_scoring_job(root, out, is_holding, may_go) -> None:
    """A real scoring job that stops inside its lock, before it has written anything, until ``may_go``."""
    os.chdir(root)
    from dist_syndr.scoring.job import run_job
    from dist_syndr.scoring.scorer import Scorer

    def scorer() -> Scorer:
        is_holding.set()
        assert may_go.wait(240)
        return Scorer.load("runs/tiny", "cpu", crop_mode="centre")

    run_job(scorer, ["photos"], Path(out), num_workers=0, max_pixels=10**8)


def _start(target, *args):
    context = multiprocessing.get_context("spawn")
    is_holding, may_go = context.Event(), context.Event()
    process = context.Process(target=target, args=(*args, is_holding, may_go))
    process.start()
    assert is_holding.wait(240), "the first job never took its lock"
    return process, may_go


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_a_second_scoring_job_on_one_output_ends_in_one_line_and_the_first_loses_nothing(scoring_root, tmp_path):
    out = tmp_path / "scores.csv"
    first, may_go = _start(_paused_scoring_job, str(scoring_root), str(out))
    try:
        before = _snapshot(tmp_path)
        assert set(before) == {"scores.csv.lock"}
        second = subprocess.run(
            [*SCORE, "--checkpoint", "runs/tiny", "--out", str(out), *CENTRE, "photos"],
            cwd=scoring_root, env=_env(), capture_output=True, text=True, timeout=240,
        )  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        holder = HOLDER.format(pid=first.pid, lock=re.escape(str(output.lock_path(out))))
        assert re.fullmatch(rf"error: scoring output {re.escape(str(out))} {holder}", _one_error_line(second.stderr))
        # under a launcher: rank 0 holds the lock for the job, and both ranks stop with its line
        ranks = _two_ranks([*SCORE, "--checkpoint", "runs/tiny", "--out", str(out), *CENTRE, "photos"], scoring_root)
        lines = [_one_error_line(rank.stderr) for rank in ranks]
        assert [rank.returncode for rank in ranks] == [2, 2] and lines[0] == lines[1] == _one_error_line(second.stderr)
        assert _snapshot(tmp_path) == before  # neither wrote anything
    finally:
        may_go.set()
        first.join(240)
    assert first.exitcode == 0
    rows = list(csv.DictReader(out.open()))
    reference = tmp_path / "reference.csv"
    assert score_launcher.main(["--checkpoint", str(scoring_root / "runs" / "tiny"), "--out", str(reference),
                                *CENTRE, str(scoring_root / "photos")]) == 0  # fmt: skip
    expected = list(csv.DictReader(reference.open()))
    assert [row["path"] for row in rows] == [f"photos/img{i:02d}.png" for i in range(7)]
    assert [float(row["score"]) for row in rows] == pytest.approx([float(row["score"]) for row in expected], abs=1e-6)
    assert json.loads(output.meta_path(out).read_text()) == json.loads(output.meta_path(reference).read_text())


def _weights_file(model, path: Path) -> Path:
    weights.save_state_dict(model.state_dict(), path)
    return path


@pytest.mark.timeout(300)
def test_a_rerun_with_other_weights_or_crops_is_refused_and_the_same_weights_anywhere_resume(scoring_root, tmp_path):
    out, config_file = tmp_path / "scores.jsonl", str(scoring_root / "runs" / "tiny" / "config.yaml")
    photos_dir = str(scoring_root / "photos")
    common = ["--out", str(out), "--config", config_file, *CENTRE]
    weights = scoring_root / "runs" / "tiny" / "export" / "model_fp32.pt"
    assert score_launcher.main(["--checkpoint", str(weights), *common, photos_dir]) == 0
    record = json.loads(output.meta_path(out).read_text())
    assert record["checkpoint_sha256"] == output.weights_digest(_tiny_model(3))
    assert record["protocol"] == {"mode": "centre", "size": 32} and record["precision"] == "fp32"
    finished = out.read_bytes()

    other = _weights_file(_tiny_model(4), tmp_path / "other.pt")
    with pytest.raises(ValueError) as refused:
        score_launcher.main(["--checkpoint", str(other), *common, photos_dir])
    digest = output.weights_digest(_tiny_model(4))
    assert str(refused.value) == (
        f"{out}: scored by another model or protocol, refusing to mix them (checkpoint sha256 "
        f"{record['checkpoint_sha256'][:16]}... there, {digest[:16]}... now); score into another --out, or delete "
        f"{out} and the files beside it named scores.jsonl.*"
    )
    with pytest.raises(ValueError, match=r'protocol \{"mode": "centre", "size": 32\} there, \{"mode": "full"'):
        score_launcher.main(["--checkpoint", str(weights), *common, "--crop-mode", "full", photos_dir])
    assert out.read_bytes() == finished and json.loads(output.meta_path(out).read_text()) == record

    moved = shutil.copy(weights, tmp_path / "moved.pt")  # the same weights elsewhere: the run resumes
    (scoring_root / "photos" / "later.png").write_bytes((scoring_root / "photos" / "img00.png").read_bytes())
    try:
        assert score_launcher.main(["--checkpoint", str(moved), *common, photos_dir]) == 0
    finally:
        (scoring_root / "photos" / "later.png").unlink()
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[:7] == [json.loads(line) for line in finished.decode().splitlines()] and len(rows) == 8
    assert rows[-1]["path"].endswith("later.png") and rows[-1]["score"] == pytest.approx(rows[0]["score"], abs=1e-6)

    out.unlink()  # deleting the output lets another model start afresh (the stale record is replaced)
    assert score_launcher.main(["--checkpoint", str(other), *common, photos_dir]) == 0
    assert json.loads(output.meta_path(out).read_text())["checkpoint_sha256"] == digest


def test_the_weights_digest_reads_names_dtypes_shapes_and_bytes():
    model = _tiny_model(3)
    digest = output.weights_digest(model)
    assert digest == output.weights_digest(_tiny_model(3)) and len(digest) == 64
    with torch.no_grad():
        next(model.parameters()).view(-1)[0] += 1e-6
    assert output.weights_digest(model) != digest
    assert output.weights_digest(_tiny_model(3).to(torch.bfloat16)) != digest


# ---------------------------------------------------------------------------
# shard sets


def _paused_shard_step(argv, is_holding, may_go) -> None:
    """A real sharding step that stops inside its lock, before it has planned or written anything."""
    from dist_syndr.sharding import plan

    build_plan = plan.build_plan

    def paused(config):
        is_holding.set()
        assert may_go.wait(240)
        return build_plan(config)

    plan.build_plan = paused
    assert shard_launcher.main(argv) == 0


@pytest.mark.dist
@pytest.mark.timeout(600)
def test_a_second_sharding_step_on_one_set_ends_in_one_line_and_the_first_set_is_whole(tmp_path):
    _pristine_folder(tmp_path / "pristine", count=5)
    common = ["--config", "configs/shard/folder-weak.yaml", *undistorted_folder_overrides(tmp_path / "pristine")]
    argv = [*common, f"shard.output_root={tmp_path / 'shards'}"]
    out = tmp_path / "shards" / "folder-weak"
    first, may_go = _start(_paused_shard_step, argv)
    try:
        before = _snapshot(out)
        assert set(before) == {LOCK_NAME}
        second = subprocess.run([*SHARD, *argv], cwd=PROJECT_ROOT, env=_env(), capture_output=True, text=True,
                                timeout=240)  # fmt: skip
        assert second.returncode == 2, second.stderr[-3000:]
        holder = HOLDER.format(pid=first.pid, lock=re.escape(str(out / LOCK_NAME)))
        assert re.fullmatch(rf"error: shard set {re.escape(str(out))} {holder}", _one_error_line(second.stderr))
        ranks = _two_ranks([*SHARD, *argv], PROJECT_ROOT)  # under a launcher: every rank stops with rank 0's line
        lines = [_one_error_line(rank.stderr) for rank in ranks]
        assert [rank.returncode for rank in ranks] == [2, 2] and lines[0] == lines[1] == _one_error_line(second.stderr)
        assert _snapshot(out) == before
    finally:
        may_go.set()
        first.join(240)
    assert first.exitcode == 0
    assert shard_launcher.main([*common, f"shard.output_root={tmp_path / 'reference'}"]) == 0
    reference = tmp_path / "reference" / "folder-weak"
    data = {name: value for name, value in _snapshot(out).items() if name != LOCK_NAME}
    assert data == {name: value for name, value in _snapshot(reference).items() if name != LOCK_NAME}
    ShardSet(out).verify(decode_images=True)
    assert len(ShardSet(out)) == 5


def test_reindex_takes_the_set_lock_and_a_photo_set_waits_for_the_job_building_it(tmp_path, monkeypatch):
    out = tmp_path / "set"
    _write_images(tmp_path / "images", count=3)
    items = [
        writer.WorkItem(key=f"t/{p.stem}", source_path=str(p), score=1.0) for p in (tmp_path / "images").iterdir()
    ]
    writer.write_shard_set(items, out, writer.WriteOptions(num_workers=1), {})
    write_format_1(out, index_as_format_1(out))  # an older set: --reindex has work to do
    with files.exclusive_lock(out / LOCK_NAME, "held by this test"):
        with pytest.raises(files.LockedError, match=rf"shard set {re.escape(str(out))} is in use by another job"):
            reindex(out)
        with pytest.raises(files.LockedError):
            writer.write_shard_set(items, out, writer.WriteOptions(num_workers=1), {})
    done = reindex(out)
    assert done.is_rewritten and done.num_checksums == 0 and ShardSet(out).format_version == 2
    with pytest.raises(ValueError, match="no index.json"):
        reindex(tmp_path / "nothing")
    assert not (tmp_path / "nothing").exists()  # no lock file made a folder of a typo

    photo_set = tmp_path / "photos"
    monkeypatch.setattr(photos, "LOCK_WAIT_S", 0.3)
    with files.exclusive_lock(photo_set / LOCK_NAME, "held by this test"):
        with pytest.raises(files.LockedError, match="is in use by another job"):
            photos.photo_shard_set(photo_set, ("astronaut",), (1,), size=64, num_workers=1)
    monkeypatch.setattr(photos, "LOCK_WAIT_S", 60.0)
    is_holding = threading.Event()

    def other_job() -> None:
        with files.exclusive_lock(photo_set / LOCK_NAME, "held by this test"):
            is_holding.set()
            time.sleep(1.0)

    holder = threading.Thread(target=other_job)
    holder.start()
    assert is_holding.wait(30)
    started = time.monotonic()
    built = photos.photo_shard_set(photo_set, ("astronaut",), (1,), size=64, num_workers=1)
    holder.join()
    assert time.monotonic() - started >= 0.5 and len(built) == 5
    built.verify()


@pytest.mark.timeout(300)
def test_scoring_on_a_filesystem_without_flock_ends_in_one_line_naming_the_lock(scoring_root, tmp_path):
    """A mount without ``flock`` (stood in by a ``sitecustomize`` whose ``fcntl.flock`` fails with ENOSYS,
    as some FUSE and Lustre mounts do): one line saying where locks work, no traceback, nothing written."""
    patch = tmp_path / "patch"
    patch.mkdir()
    (patch / "sitecustomize.py").write_text(
        "import errno, fcntl, os\n\n"
        "def _no_flock(fd, operation):\n"
        "    raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))\n\n"
        "fcntl.flock = _no_flock\n"
    )
    out = tmp_path / "out" / "scores.csv"
    env = _env() | {"PYTHONPATH": f"{patch}{os.pathsep}{PROJECT_ROOT}"}
    refused = subprocess.run(
        [*SCORE, "--checkpoint", "runs/tiny", "--out", str(out), *CENTRE, "photos"],
        cwd=scoring_root, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert refused.returncode == 2, refused.stderr[-3000:]
    lock = re.escape(str(output.lock_path(out)))
    assert re.fullmatch(
        rf"error: scoring output {re.escape(str(out))} cannot be locked: {lock} is on a filesystem without flock "
        r"\(Function not implemented\); use a local disk or NFSv4, or mount Lustre with -o flock",
        _one_error_line(refused.stderr),
    )
    assert not out.exists() and not output.meta_path(out).exists()


def test_a_photo_set_on_a_filesystem_without_flock_is_refused_at_once_not_waited_for(tmp_path, monkeypatch):
    def no_flock(fd, operation):
        raise OSError(errno.ENOSYS, os.strerror(errno.ENOSYS))

    monkeypatch.setattr(files.fcntl, "flock", no_flock)
    monkeypatch.setattr(photos, "LOCK_WAIT_S", 60.0)
    started = time.monotonic()
    with pytest.raises(files.LockUnsupportedError, match="is on a filesystem without flock"):
        photos.photo_shard_set(tmp_path / "photos", ("astronaut",), (1,), size=64, num_workers=1)
    assert time.monotonic() - started < 5.0
