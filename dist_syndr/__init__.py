"""dist_syndr: SynDR-IQA's reshaping of synthetic IQA data, at scale.

``from dist_syndr import Scorer`` gives the scorer of trained models
(:class:`dist_syndr.scoring.scorer.Scorer`); it is imported on first use, so
``import dist_syndr`` stays light.
"""

import importlib

__all__ = ["Scorer"]


def __getattr__(name: str):
    if name == "Scorer":
        return importlib.import_module("dist_syndr.scoring.scorer").Scorer
    raise AttributeError(f"module 'dist_syndr' has no attribute {name!r}")
