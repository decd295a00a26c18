"""files.py: the advisory job lock (atomic writes are exercised by every writer's tests)."""

from __future__ import annotations

import multiprocessing

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
