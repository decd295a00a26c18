"""``python -m dist_syndr.tracking``: the same command as ``launchers/compare.py``."""

from dist_syndr import cli
from dist_syndr.tracking.main import main

if __name__ == "__main__":
    cli.run(main)
