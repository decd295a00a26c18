"""The run's model as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(frame)`` scores images.

The input is a table with a ``path`` column (image files the loading process can
read); the output a table with a ``score`` column on the training scale [0, 10]
and ``score_original`` on the training labels' own scale (NaN where the model card
does not know it).
The model folder holds the fp32 weights with their sha256 sidecar, the run's
config and its model card; loading builds a :class:`Scorer` (this package must be
installed where it loads). Training writes it as ``export/mlflow_model`` and logs
it to the run as the artifact ``mlflow_model``, so ``runs:/<run id>/mlflow_model``
loads it.

Shapes: ``N`` rows in, ``N`` scores out.
"""

from __future__ import annotations

import importlib.metadata
import json
import tempfile
from pathlib import Path

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from dist_syndr import files
from dist_syndr.pools.scores import LabelScale
from dist_syndr.runs.weights import checksum_path

MODEL_DIR_NAME = "mlflow_model"
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "path")]),
    outputs=Schema([ColSpec("double", "score"), ColSpec("double", "score_original", required=False)]),
)
_MODEL_CODE = (
    "import mlflow.models\n"
    "from dist_syndr.export.mlflow_model import ImageScorerModel\n\n"
    "mlflow.models.set_model(ImageScorerModel())\n"
)
_REQUIREMENTS = ("torch", "timm", "numpy", "pillow", "safetensors", "pandas")


class ImageScorerModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper around a :class:`dist_syndr.scoring.scorer.Scorer`."""

    def load_context(self, context) -> None:
        from dist_syndr.scoring.scorer import Scorer

        artifacts = context.artifacts
        self._scorer = Scorer.load(artifacts["weights"], "auto", config_path=artifacts["config"])
        card = json.loads(Path(artifacts["model_card"]).read_text())  # the card knows the labels' scale
        self._scorer.label_scale = LabelScale.from_dict(card.get("training_set", {}).get("label_scale"))

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        """Scores of the images in ``model_input['path']`` (a DataFrame, a dict of lists or a list of paths)."""
        if isinstance(model_input, pd.DataFrame):
            paths = model_input["path"].astype(str).tolist()
        elif isinstance(model_input, dict):
            paths = [str(p) for p in model_input["path"]]
        else:
            paths = [str(p) for p in model_input]
        scores = self._scorer.score(paths)
        scale = self._scorer.label_scale
        original = scale.to_original(scores) if scale is not None else np.full(len(scores), np.nan)
        return pd.DataFrame({"score": scores, "score_original": original})


def save(weights: Path, config_path: Path, card_path: Path, out_dir: Path) -> Path:
    """Write the MLflow model folder ``out_dir`` (replacing an older one atomically); returns it."""
    artifacts = {"weights": str(weights), "config": str(config_path), "model_card": str(card_path)}
    if checksum_path(weights).is_file():
        artifacts["weights_sha256"] = str(checksum_path(weights))
    card = json.loads(Path(card_path).read_text())
    with tempfile.TemporaryDirectory(prefix="mlflow-model-code-") as code, files.replaced_folder(out_dir) as temporary:
        definition = Path(code) / "image_scorer.py"  # models from code: nothing pickled
        definition.write_text(_MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(temporary),
            python_model=str(definition),
            artifacts=artifacts,
            signature=SIGNATURE,
            pip_requirements=_requirements(),
            metadata={"model_card": card},
        )
    return Path(out_dir)


def _requirements() -> list[str]:
    """Pinned to what is installed here (given, not inferred: inference imports the model and takes seconds)."""
    pins = []
    for name in ("dist_syndr", *_REQUIREMENTS):
        try:
            pins.append(f"{name}=={importlib.metadata.version(name).split('+')[0]}")
        except importlib.metadata.PackageNotFoundError:
            pins.append(name)
    return pins
