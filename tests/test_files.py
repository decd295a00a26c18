"""files.py: the advisory job lock (atomic writes are exercised by every writer's tests)."""

from __future__ import annotations

import errno
import multiprocessing
import os

import pytest

from dist_syndr import files


def _hold_lock(path, is_holding, may_release) -> None:
    with files.exclusive_lock(path, "shard set S"):
        is_holding.set()
        may_release.wait(60)


def test_a_second_job_is_refused_with_the_holder_named_and_may_lock_once_the_first_exits(tmp_path):
    context = multiprocessing.get_context("spawn")
    is_holding, may_release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(tmp_path / "S.lock", is_holding, may_release))
    holder.start()
    try:
        assert is_holding.wait(60)
        expected = rf"shard set S is in use by another job \(pid {holder.pid} on .+, since .+; lock .*S\.lock\)"
        with pytest.raises(files.LockedError, match=expected):
            with files.exclusive_lock(tmp_path / "S.lock", "shard set S"):
                pass
    finally:
        may_release.set()
        holder.join(60)
    with files.exclusive_lock(tmp_path / "S.lock", "shard set S") as lock_file:
        assert lock_file == tmp_path / "S.lock"


def test_the_lock_is_per_open_file_so_one_process_cannot_take_it_twice(tmp_path):
    with files.exclusive_lock(tmp_path / "x.lock", "thing"):
        with pytest.raises(files.LockedError):
            with files.exclusive_lock(tmp_path / "x.lock", "thing"):
                pass


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK])
def test_a_filesystem_without_flock_is_one_clear_refusal_and_other_errors_pass_through(tmp_path, monkeypatch, code):
    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(files.fcntl, "flock", no_flock)
    with pytest.raises(files.LockUnsupportedError) as refused:
        with files.exclusive_lock(tmp_path / "x.lock", "shard set s"):
            pytest.fail("the block must not run without the lock")
    assert isinstance(refused.value, files.LockedError)  # launchers and collectives treat it as a refusal
    assert str(refused.value) == (
        f"shard set s cannot be locked: {tmp_path / 'x.lock'} is on a filesystem without flock "
        f"({os.strerror(code)}); use a local disk or NFSv4, or mount Lustre with -o flock"
    )

    def broken(fd, operation):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files.fcntl, "flock", broken)
    with pytest.raises(OSError, match="Input/output error") as failed:
        with files.exclusive_lock(tmp_path / "x.lock", "shard set s"):
            pass
    assert not isinstance(failed.value, files.LockedError)
