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
    except RuntimeError as error:
        if not is_lost_peer(error):
            raise
        print(f"error: {lost_peer_message(error)}", file=sys.stderr)
        sys.exit(LOST_PEER_EXIT)
    sys.exit(code)


LOST_PEER_EXIT = 4
"""Exit status of a rank whose peer went away (a node died or was killed)."""


def is_lost_peer(error: BaseException) -> bool:
    """True for torch.distributed's errors of a collective whose peer is gone or timed out (gloo or NCCL)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    text = str(error)
    return bool(names & {"DistBackendError", "DistNetworkError"}) or (
        "gloo" in text.lower() and any(word in text for word in _GLOO_LOST_PEER)
    )


_GLOO_LOST_PEER = (
    "Connection closed",
    "Connection reset",
    "Connection refused",
    "Read error",
    "Timed out",
    "timed out",
)


def lost_peer_message(error: BaseException) -> str:
    """One line naming the lost peer (gloo and NCCL put its address in their message) and what to do."""
    detail = " ".join(str(error).split())
    if len(detail) > 300:
        detail = detail[:300] + " ..."
    return (
        f"a collective lost its peer: {detail}; the job stops here. Restart every node with the same command "
        "(resume=auto continues from the last complete checkpoint)"
    )


def add_trust_checkpoint(parser) -> None:
    """``--trust-checkpoint`` on a launcher that reads checkpoints (``args.trust_checkpoint``)."""
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle DeepSpeed checkpoint files fully, whatever they hold: only for checkpoints from a source you "
        "trust (by default nothing beyond tensors and DeepSpeed's own types is loaded, so a received file cannot "
        "run code)",
    )
