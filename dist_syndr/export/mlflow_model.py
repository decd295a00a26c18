"""The run's model as an MLflow model: ``mlflow.pyfunc.load_model(uri).predict(frame)`` scores images, and
``mlflow models serve`` scores images a client sends.

The input is a table with an ``image`` column (encoded image bytes as base64 text,
the way MLflow's JSON carries binary data) and/or a ``path`` column (image files
the serving process can read); each row gives one. The output has one row per
input row, always: ``score`` on the training scale [0, 10], ``score_original`` on
the training labels' own scale (empty where the model card does not know it),
and ``error``, the reason a row has no score (an unreadable image, a missing
file); empty values are nulls, so the served JSON never holds a bare NaN.
The model folder holds the fp32 weights with their sha256 sidecar, the run's
config and its model card; loading builds a :class:`Scorer` (this package must be
installed where it loads). Training writes it as ``export/mlflow_model`` and logs
it to the run as the artifact ``mlflow_model``, so ``runs:/<run id>/mlflow_model``
loads it.

Shapes: ``N`` rows in, ``N`` scores out.
"""

from __future__ import annotations

import base64
import binascii
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
    inputs=Schema([ColSpec("string", "image", required=False), ColSpec("string", "path", required=False)]),
    outputs=Schema(
        [
            ColSpec("double", "score", required=False),
            ColSpec("double", "score_original", required=False),
            ColSpec("string", "error", required=False),
        ]
    ),
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
        """One row per input row: ``score``, ``score_original`` and ``error`` (see the module docstring).
        ``model_input``: a DataFrame (or a dict of lists) with ``image`` and/or ``path``, or a list of paths."""
        rows = _input_rows(model_input)
        items, errors = {}, {}
        for index, (image, path) in enumerate(rows):
            try:
                items[index] = _item(image, path)
            except ValueError as error:
                errors[index] = str(error)
        scored = dict(zip(items, self._scorer.score_items(list(items.values())), strict=True))
        scale = self._scorer.label_scale
        columns: dict[str, list] = {"score": [], "score_original": [], "error": []}
        for index in range(len(rows)):
            result = scored.get(index)
            error = errors.get(index) or (result.error if result is not None else None)
            score = None if error is not None else float(result.score)
            original = None if score is None or scale is None else float(scale.to_original(np.array([score]))[0])
            columns["score"].append(score)
            columns["score_original"].append(original)
            columns["error"].append(error)
        return pd.DataFrame({name: pd.Series(values, dtype=object) for name, values in columns.items()})


def _input_rows(model_input) -> list[tuple[object, object]]:
    """``(image, path)`` per row, either of them None."""
    if isinstance(model_input, dict):
        model_input = pd.DataFrame(model_input)
    if not isinstance(model_input, pd.DataFrame):
        return [(None, str(path)) for path in model_input]
    if "image" not in model_input.columns and "path" not in model_input.columns:
        raise ValueError("the input needs an 'image' column (base64 image bytes) or a 'path' column")
    images = model_input["image"].tolist() if "image" in model_input.columns else [None] * len(model_input)
    paths = model_input["path"].tolist() if "path" in model_input.columns else [None] * len(model_input)
    return [(_present(image), _present(path)) for image, path in zip(images, paths, strict=True)]


def _present(value):
    """``value``, or None where the table holds nothing (None, NaN, pandas' NA, empty text)."""
    if value is None or (isinstance(value, str) and not value):
        return None
    return None if not isinstance(value, bytes | str) and pd.isna(value) else value


def _item(image, path):
    """What the scorer takes for one row: decoded pixels of ``image``, else the file ``path``."""
    from dist_syndr import imaging

    if image is not None:
        try:
            data = image if isinstance(image, bytes) else base64.b64decode(str(image), validate=False)
        except (binascii.Error, ValueError):
            raise ValueError("image: not base64 text") from None
        return imaging.decode(data)
    if path is not None:
        return Path(str(path))
    raise ValueError("the row has neither an image nor a path")


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
