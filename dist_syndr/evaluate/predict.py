"""Predictions and features of a model over shard sets, and their metrics.

Every rank reads its share of an evaluation plan (index order, padded by
wrap-around repeats so ranks have equal length); rows are gathered with the
plan positions they came from, the repeats dropped, and the result put back in
the requested key order, so one process and many give the same answer. The pass
itself is :func:`dist_syndr.features.passes.forward_pass` (the forward of
:mod:`dist_syndr.features.embed`, the same one DDCUp's reference embeddings use);
this module plans the keys, opens the loader and turns rows into predictions,
features and metrics. What a pass reads besides the model and the data is one
:class:`~dist_syndr.features.passes.PassOptions`.

::

    cfg, model = load_model(Path("runs/vit-b"))             # dist_syndr.runs.checkpoints
    target = target_shard_set("livec", "/data/ChallengeDB_release", Path("shards/targets"))
    options = PassOptions(device="cuda", precision="bf16", dali="auto", seed=cfg.seed)
    metrics, predictions = evaluate_targets(model, {"livec": target}, cfg.data, options)
    write_predictions_csv(Path("eval/livec_predictions.csv"), predictions["livec"])

Shapes: ``N`` images of a set, ``D`` pooled feature dimension; predictions and
scores ``(N,)``, features ``(N, D)`` float32.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dist_syndr import files, runtime
from dist_syndr.config import DataConfig
from dist_syndr.evaluate import metrics
from dist_syndr.features.model import IQAModel
from dist_syndr.features.passes import PassOptions, forward_pass
from dist_syndr.loader import make_loader, plan_epoch
from dist_syndr.sharding.shard_set import ShardSet

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Predictions:
    """Per-image predictions of one set, in the set's key order (padded repeats removed)."""

    keys: np.ndarray  # (N,) str
    predictions: np.ndarray  # (N,) float32, mean over the image's crops
    scores: np.ndarray  # (N,) float64 from index.json, NaN where the set has no label

    def __len__(self) -> int:
        return len(self.keys)


def predict(
    module: torch.nn.Module, shard_set: ShardSet, data_cfg: DataConfig, options: PassOptions, *, loader=None
) -> Predictions:
    """Scores of every sample of ``shard_set``: ``data_cfg.eval_crops`` crops (``eval_crop_mode``) averaged per image.

    Collective under a process group (every rank calls it); ``options.seed`` fixes the
    random crops and ``options.precision`` is the run's mixed-precision policy. Samples
    skipped under ``data.on_error=skip`` are left out. ``loader``: an open evaluation
    loader of ``shard_set`` kept by the caller (one is opened and closed otherwise).
    """
    keys = shard_set.keys()
    positions, rows = _gathered_pass(module, module, shard_set, data_cfg, keys, (0,), options, loader)
    if len(positions) < len(keys):
        log.warning(
            "%s: %d of %d samples could not be read and have no prediction",
            shard_set.root,
            len(keys) - len(positions),
            len(keys),
        )
    return Predictions(
        keys=np.array([keys[i] for i in positions], dtype=str),
        predictions=rows.astype(np.float32),
        scores=shard_set.scores()[positions],
    )


def feature_data_config(data_cfg: DataConfig) -> DataConfig:
    """The loader settings of the feature pass: one centre crop per image."""
    return dataclasses.replace(data_cfg, eval_crop_mode="centre", eval_crops=1)


def embed(
    module: IQAModel,
    shard_set: ShardSet,
    data_cfg: DataConfig,
    keys: Sequence[str],
    options: PassOptions,
    *,
    loader=None,
) -> np.ndarray:
    """``(len(keys), D)`` float32 pooled features of ``keys`` (one centre crop, eval mode), rows in ``keys`` order.

    Collective under a process group; ValueError when a key cannot be read. Reshaping features
    are fp32 unless ``options.precision`` says otherwise, and fp32 runs without TF32
    (:func:`dist_syndr.runtime.exact_fp32_math`: DRCDown's decisions must not depend on the GPU);
    ``loader``: an open loader of ``shard_set`` built with :func:`feature_data_config` (one is
    opened and closed otherwise).
    """
    keys = list(keys)
    data = feature_data_config(data_cfg)
    dim = int(module.backbone.num_features)
    options = dataclasses.replace(options, seed=0)  # one centre crop: no seed to draw from
    with runtime.exact_fp32_math() if options.precision == "fp32" else contextlib.nullcontext():
        positions, rows = _gathered_pass(module, module.features, shard_set, data, keys, (0, dim), options, loader)
    if len(positions) != len(keys):
        missing = sorted(set(range(len(keys))) - set(positions.tolist()))
        raise ValueError(
            f"{shard_set.root}: no features for {len(missing)} sample(s) (unreadable), e.g. {keys[missing[0]]!r}"
        )
    return rows.astype(np.float32)


def evaluate_targets(
    module: torch.nn.Module,
    targets: dict[str, ShardSet],
    data_cfg: DataConfig,
    options: PassOptions,
    *,
    loaders: dict | None = None,
) -> tuple[dict[str, float], dict[str, Predictions]]:
    """Predictions on every target and their metrics as ``{"<target>/<metric>": value}`` (collective).

    ``loaders``: open evaluation loaders by target name, kept by the caller for a whole run.
    """
    results: dict[str, float] = {}
    predictions: dict[str, Predictions] = {}
    for name, shard_set in targets.items():
        predictions[name] = predict(module, shard_set, data_cfg, options, loader=(loaders or {}).get(name))
        results |= {f"{name}/{key}": value for key, value in target_metrics(predictions[name], name).items()}
    return results, predictions


def target_metrics(predictions: Predictions, name: str = "") -> dict[str, float]:
    """Every ``metrics.METRIC_KEYS`` value over the labelled images ({} with fewer than two;
    NaN when a prediction is not finite, as from a diverged model)."""
    labelled = np.isfinite(predictions.scores)
    if labelled.sum() < 2:
        log.warning("target %s: %d labelled image(s); no metrics", name, int(labelled.sum()))
        return {}
    if not np.isfinite(predictions.predictions[labelled]).all():
        log.warning("target %s: predictions contain NaN or inf; metrics are NaN", name)
        return dict.fromkeys(metrics.METRIC_KEYS, float("nan"))
    return metrics.iqa_metrics(predictions.predictions[labelled], predictions.scores[labelled], name=name)


def _gathered_pass(
    module: torch.nn.Module,
    forward: Callable[[torch.Tensor], torch.Tensor],
    shard_set: ShardSet,
    data_cfg: DataConfig,
    keys: list[str],
    empty: tuple[int, ...],
    options: PassOptions,
    loader,
) -> tuple[np.ndarray, np.ndarray]:
    """Plan ``keys`` over the ranks, open the loader (or take the caller's) and run
    :func:`dist_syndr.features.passes.forward_pass` over this rank's batches."""
    rank, world_size = runtime.rank_world()
    if not keys:
        return np.zeros(0, np.int64), np.zeros(empty, np.float32)
    plan = plan_epoch(keys, data_cfg, seed=options.seed, epoch=0, world_size=world_size, is_training=False)
    if loader is None:
        opened = make_loader(shard_set, data_cfg, is_training=False, dali=options.dali)
    else:
        opened = contextlib.nullcontext(loader)  # the caller's, kept open for the run
    with opened as active:
        batches = tqdm(
            active.batches(plan.for_rank(rank)),
            total=plan.num_batches,
            desc=f"evaluating {shard_set.root.name}",
            unit="batch",
            disable=rank != 0,
        )
        position = {key: i for i, key in enumerate(keys)}
        return forward_pass(module, forward, batches, position, empty, options)


def write_predictions_csv(path: Path, predictions: Predictions) -> Path:
    """``key,prediction,score`` rows in key order (empty score where unlabelled), written atomically."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "prediction", "score"])
    for key, prediction, score in zip(
        predictions.keys.tolist(), predictions.predictions.tolist(), predictions.scores.tolist(), strict=True
    ):
        writer.writerow([key, repr(prediction), "" if math.isnan(score) else repr(score)])
    files.write_text(path, buffer.getvalue())
    return path
