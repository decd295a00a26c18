"""Score a checkpoint on target sets (:mod:`dist_syndr.evaluate.main`; also ``python -m dist_syndr.evaluate``)."""

from dist_syndr import cli
from dist_syndr.evaluate.main import main

if __name__ == "__main__":
    cli.run(main)
