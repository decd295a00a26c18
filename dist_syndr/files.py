"""Files that are never half-written: atomic replacement, fsync and sha256, one copy for the whole package.

:func:`atomic_path` hands out a temporary name in the target's folder; when the
block ends without an error the file is fsync'd and renamed over the target, so a
reader sees the old file or the new one, never half of one. A failed block
removes the temporary file; a killed writer leaves at most a hidden
``.<name>.tmp-<pid>-<tag>`` file behind. Temporary names are unique per process
and thread, so concurrent writers of one file never share one.

:func:`exclusive_lock` is the one advisory lock (``fcntl.flock`` on a lock file)
that a job holds for its whole run over what it writes (a shard set, a run
folder, a scoring output): a second job asking for it ends with one line naming
the path and the holder's host and pid. The kernel drops the lock when the
holder exits, however it exits, so a killed job never leaves a stale lock.

Shapes: none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

HASH_CHUNK = 1 << 20


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_durable: bool = True) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; renamed over ``path`` when the block succeeds.

    Parent folders are created. ``is_durable`` fsyncs the data before the rename
    (folders written to the temporary path are renamed as they are).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield temporary
        if is_durable and temporary.is_file():
            fsync_file(temporary)
        temporary.replace(path)
    finally:
        if temporary.is_dir():
            shutil.rmtree(temporary)
        elif temporary.exists():
            temporary.unlink()


@contextlib.contextmanager
def replaced_folder(path: str | Path) -> Iterator[Path]:
    """A temporary folder to build ``path``'s new content in; when the block succeeds it takes ``path``'s place
    (an older folder there is moved aside first, then removed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f".{path.name}.new-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        yield staging
        old = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        if path.exists():
            path.rename(old)
        staging.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_text(path: str | Path, text: str, *, is_durable: bool = True) -> Path:
    """Replace ``path`` with ``text`` atomically; returns the path."""
    with atomic_path(path, is_durable=is_durable) as temporary:
        temporary.write_text(text)
    return Path(path)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically; returns the path."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to disk."""
    with Path(path).open("rb") as handle:
        os.fsync(handle.fileno())


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


class LockedError(ValueError):
    """Another job holds the lock; the message names the locked path and the holder."""


class LockUnsupportedError(LockedError):
    """The lock file's filesystem has no working ``flock``; the message names the path and where locks work."""


_NO_FLOCK_ERRNOS = (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK)


@contextlib.contextmanager
def exclusive_lock(lock_file: str | Path, what: str) -> Iterator[Path]:
    """Hold the advisory lock ``lock_file`` for the block; :class:`LockedError` when another process holds it.

    ``what`` names the guarded thing in the message (``"shard set /data/shards/kadid"``).
    The holder's host, pid and start time are written into the lock file for
    that message. Locks are per open file, so a second ``exclusive_lock`` on
    the same file in the same process is refused too. The lock file stays
    behind (a later job takes it over); removing it while held would let a
    second job lock a new file of the same name.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    handle = lock_file.open("a+")
    try:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(f"{what} is in use by another job ({_holder(lock_file)}; lock {lock_file})") from None
        except OSError as error:
            if error.errno not in _NO_FLOCK_ERRNOS:
                raise
            raise LockUnsupportedError(
                f"{what} cannot be locked: {lock_file} is on a filesystem without flock ({error.strerror}); "
                "use a local disk or NFSv4, or mount Lustre with -o flock"
            ) from None
        holder = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(holder) + "\n")
        handle.flush()
        yield lock_file
    finally:
        handle.close()  # closing the last descriptor releases the lock


def _holder(lock_file: Path) -> str:
    try:
        holder = json.loads(lock_file.read_text())
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"
