"""Atomic file writes: a temporary name in the same folder, fsync, then rename.

A reader sees the old file or the new one, never half of one; a killed writer
leaves at most a hidden ``.<name>.tmp-<pid>`` file behind.

Shapes: none.
"""

from __future__ import annotations

import os
from pathlib import Path


def write_text(path: str | Path, text: str) -> Path:
    """Replace ``path`` with ``text`` atomically (parent folders are created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with temporary.open("w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)
    return path
