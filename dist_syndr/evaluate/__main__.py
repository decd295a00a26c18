"""``python -m dist_syndr.evaluate``: the same command as ``launchers/evaluate.py``."""

from dist_syndr import cli
from dist_syndr.evaluate.main import main

if __name__ == "__main__":
    cli.run(main)
