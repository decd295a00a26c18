"""Where this code lives and which commit it is: the one project root and the one ``git_commit()``.

``PROJECT_ROOT`` is the folder holding the ``dist_syndr`` package (a checkout, or
site-packages for a wheel install); launchers find their default configs and
caches under it. :func:`git_commit` is the checkout's ``HEAD``, recorded in
tracking tags, model cards and evaluation records alike.

Shapes: none.
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@functools.cache
def git_commit() -> str:
    """The commit of the checkout this package runs from, or ``unknown`` outside git (a wheel install)."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"
