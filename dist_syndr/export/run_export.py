"""A finished training's hand-over: consolidated fp32 weights with their provenance, the model card and the
MLflow model, written into the run folder and logged with the run.

The weights come from the tag ``checkpoints/complete`` names (every rank wrote
it), consolidated at any ZeRO stage (:mod:`dist_syndr.runs.consolidate`), and
replace any older export; ``export/provenance.json`` then records that tag, the
optimizer step and the file's sha256, so a consumer can tell an export that
later training made stale (:meth:`dist_syndr.runs.folder.RunFolder.current_export`).

Shapes: none.
"""

from __future__ import annotations

import logging
from pathlib import Path

from dist_syndr import files
from dist_syndr.runs import card as card_file
from dist_syndr.runs import consolidate, weights
from dist_syndr.runs.folder import ExportProvenance, RunFolder

log = logging.getLogger(__name__)


def export_run(run: RunFolder, tracker, card: dict | None = None, *, global_step: int, is_tracked: bool) -> Path:
    """Write ``export/model_fp32.pt`` from the last complete checkpoint, its provenance, and with ``card``
    (:func:`dist_syndr.export.cards.training_card`) the model card and, when ``is_tracked``, the MLflow model
    (``export/mlflow_model``, logged as ``mlflow_model``); call it on one rank. Returns the weights' path."""
    tag = run.complete_tag()
    if tag is None:
        raise ValueError(f"{run.checkpoints}: no complete checkpoint to export")
    path = weights.save_state_dict(consolidate.consolidated_state_dict(run.checkpoints, tag), run.weights_path)
    run.record_export(ExportProvenance(tag=tag, global_step=int(global_step), sha256=files.sha256_file(path)))
    log.info("exported %s from checkpoint %s (step %d)", path, tag, global_step)
    tracker.log_artifact(path, "model")
    if card is None:
        return path
    card = card | {"checkpoint": {"tag": tag, "global_step": int(global_step)}}
    card_json, card_markdown = card_file.write(card, run.export_dir / card_file.CARD_NAME)
    tracker.log_artifact(card_json, "model")
    tracker.log_artifact(card_markdown, "model")
    if is_tracked:
        from dist_syndr.export import mlflow_model

        folder = mlflow_model.save(path, run.config_path, card_json, run.export_dir / mlflow_model.MODEL_DIR_NAME)
        tracker.log_artifact(folder)
    return Path(path)
