"""``python -m dist_syndr.train``: the same command as ``launchers/train.py``."""

from dist_syndr import cli
from dist_syndr.train.main import main

if __name__ == "__main__":
    cli.run(main)
