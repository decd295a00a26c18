"""The main job: training with DRCDown every epoch under DeepSpeed (:mod:`dist_syndr.train.main`).

deepspeed --hostfile hosts launchers/train.py --config configs/train/<preset>.yaml [key=value ...]
python launchers/train.py --config configs/train/cpu-smoke.yaml      # one process
python -m dist_syndr.train --config ...                               # the same, as a module
"""

from dist_syndr import cli
from dist_syndr.train.main import main

if __name__ == "__main__":
    cli.run(main)
