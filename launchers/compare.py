"""Compare training runs side by side and push tracking journals (:mod:`dist_syndr.tracking.main`; also
``python -m dist_syndr.tracking``).
"""

from dist_syndr import cli
from dist_syndr.tracking.main import main

if __name__ == "__main__":
    cli.run(main)
