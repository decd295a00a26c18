"""Entry-point helper for the launchers: bad config or input, or a full disk, ends with one line, not a stack trace."""

from __future__ import annotations

import errno
import sys
from collections.abc import Callable
from typing import NoReturn

# Storage faults a user fixes outside the program (free space, quota, permissions): one line naming the path.
STORAGE_ERRORS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EIO})


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; a ``ValueError`` prints ``error: <message>`` and exits 2, a storage
    ``OSError`` (full disk, quota, read-only, permission, I/O) prints the path and exits 1."""
    try:
        code = main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:
        if error.errno not in STORAGE_ERRORS:
            raise
        hint = "nothing half-written is taken for complete; rerun to continue"
        print(f"error: {error.strerror}: {error.filename} ({hint})", file=sys.stderr)
        sys.exit(1)
    sys.exit(code)
