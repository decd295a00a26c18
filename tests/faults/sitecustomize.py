"""Fault injection for the storage tests, imported at start-up by processes that get this folder on PYTHONPATH.

``DIST_SYNDR_FAIL_WRITE=<substring>[:<n>]`` makes the n-th write (default the first) whose path contains
``<substring>`` fail with ENOSPC, as a full disk does: ``torch.save`` (DeepSpeed's checkpoints) and the fsync
of every atomic write of ours (keep-lists, exports, shards, journals) raise before anything is renamed.
"""

import errno
import os

_SPEC = os.environ.get("DIST_SYNDR_FAIL_WRITE")

if _SPEC:
    _needle, _, _nth = _SPEC.partition(":")
    _calls = {"count": 0, "nth": int(_nth or 1)}

    def _should_fail(path) -> bool:
        if _needle not in str(path):
            return False
        _calls["count"] += 1
        return _calls["count"] == _calls["nth"]

    def _full_disk(path) -> OSError:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    import torch

    _real_save = torch.save

    def _save(obj, f, *args, **kwargs):
        if isinstance(f, (str, os.PathLike)) and _should_fail(f):
            raise _full_disk(f)
        return _real_save(obj, f, *args, **kwargs)

    torch.save = _save

    from dist_syndr import files

    _real_fsync = files.fsync_file

    def _fsync_file(path) -> None:
        if _should_fail(path):
            raise _full_disk(path)
        _real_fsync(path)

    files.fsync_file = _fsync_file
