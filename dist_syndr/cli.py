"""Entry-point helper for the launchers: bad config or input ends with one line, not a stack trace."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


def run(main: Callable[[], int]) -> NoReturn:
    """Exit with ``main()``'s code; a ``ValueError`` prints ``error: <message>`` and exits 2."""
    try:
        code = main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code)
