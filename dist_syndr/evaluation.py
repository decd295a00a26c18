"""Scoring a model on target sets: multi-crop predictions, pooled features, metrics, checkpoints, targets.

Every rank reads its share of an evaluation plan (index order, padded by
wrap-around repeats so ranks have equal length); rows are gathered with the
plan positions they came from, the repeats dropped, and the result put back in
the requested key order, so one process and many give the same answer.

::

    cfg, model = load_model(Path("runs/vit-b"))             # run dir, DeepSpeed folder or tag, or a .pt file
    target = target_shard_set("livec", "/data/ChallengeDB_release", Path("shards/targets"))
    metrics, predictions = evaluate_targets(model, {"livec": target}, cfg.data, device="cuda", dali="auto")
    write_predictions_csv(Path("eval/livec_predictions.csv"), predictions["livec"])

Importing this module needs no DeepSpeed; only consolidating a ZeRO checkpoint does.

Shapes: ``N`` images of a set, ``D`` pooled feature dimension; predictions and
scores ``(N,)``, features ``(N, D)`` float32.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dist_syndr import config as config_module
from dist_syndr import atomic_files, export, metrics, runtime
from dist_syndr.config import Config, DataConfig
from dist_syndr.loader import make_loader, plan_epoch
from dist_syndr.model import IQAModel, build_model
from dist_syndr.shardset import INDEX_NAME, ShardSet

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
EXPORT_PATH = Path("export") / "model_fp32.pt"
CONFIG_SEARCH_LEVELS = 3
# Target names that differ from the reader kind they mean.
READER_ALIASES = {"koniq": "koniq10k", "kadid": "kadid10k", "kadis": "kadis700k", "livechallenge": "livec"}


@dataclasses.dataclass
class Predictions:
    """Per-image predictions of one set, in the set's key order (padded repeats removed)."""

    keys: np.ndarray  # (N,) str
    predictions: np.ndarray  # (N,) float32, mean over the image's crops
    scores: np.ndarray  # (N,) float64 from index.json, NaN where the set has no label

    def __len__(self) -> int:
        return len(self.keys)


# ---------------------------------------------------------------------------
# predictions, features, metrics


def predict(
    module: torch.nn.Module, shard_set: ShardSet, data_cfg: DataConfig, *, device, dali: str = "auto", seed: int = 0
) -> Predictions:
    """Scores of every sample of ``shard_set``: ``data_cfg.eval_crops`` crops (``eval_crop_mode``) averaged per image.

    Collective under a process group (every rank calls it); ``seed`` fixes the
    random crops. Samples skipped under ``data.on_error=skip`` are left out.
    """
    keys = shard_set.keys()
    positions, rows = _gathered_pass(module, shard_set, data_cfg, keys, device=device, dali=dali, seed=seed, forward=module, empty=(0,))
    if len(positions) < len(keys):
        log.warning("%s: %d of %d samples could not be read and have no prediction", shard_set.root, len(keys) - len(positions), len(keys))
    return Predictions(
        keys=np.array([keys[i] for i in positions], dtype=str),
        predictions=rows.astype(np.float32),
        scores=shard_set.scores()[positions],
    )


def embed(module: IQAModel, shard_set: ShardSet, data_cfg: DataConfig, keys: Sequence[str], *, device, dali: str = "auto") -> np.ndarray:
    """``(len(keys), D)`` float32 pooled features of ``keys`` (one centre crop, eval mode), rows in ``keys`` order.

    Collective under a process group; ValueError when a key cannot be read.
    """
    keys = list(keys)
    data = dataclasses.replace(data_cfg, eval_crop_mode="centre", eval_crops=1)
    dim = int(module.backbone.num_features)
    positions, rows = _gathered_pass(
        module, shard_set, data, keys, device=device, dali=dali, seed=0, forward=module.features, empty=(0, dim)
    )
    if len(positions) != len(keys):
        missing = sorted(set(range(len(keys))) - set(positions.tolist()))
        raise ValueError(f"{shard_set.root}: no features for {len(missing)} sample(s) (unreadable), e.g. {keys[missing[0]]!r}")
    return rows.astype(np.float32)


def evaluate_targets(
    module: torch.nn.Module, targets: dict[str, ShardSet], data_cfg: DataConfig, *, device, dali: str = "auto", seed: int = 0
) -> tuple[dict[str, float], dict[str, Predictions]]:
    """Predictions on every target and their metrics as ``{"<target>/<metric>": value}`` (collective)."""
    results: dict[str, float] = {}
    predictions: dict[str, Predictions] = {}
    for name, shard_set in targets.items():
        predictions[name] = predict(module, shard_set, data_cfg, device=device, dali=dali, seed=seed)
        results |= {f"{name}/{key}": value for key, value in target_metrics(predictions[name], name).items()}
    return results, predictions


def target_metrics(predictions: Predictions, name: str = "") -> dict[str, float]:
    """SRCC, PLCC, KRCC, RMSE and logistic PLCC over the labelled images ({} with fewer than two;
    NaN when a prediction is not finite, as from a diverged model)."""
    labelled = np.isfinite(predictions.scores)
    if labelled.sum() < 2:
        log.warning("target %s: %d labelled image(s); no metrics", name, int(labelled.sum()))
        return {}
    if not np.isfinite(predictions.predictions[labelled]).all():
        log.warning("target %s: predictions contain NaN or inf; metrics are NaN", name)
        return dict.fromkeys(("srcc", "plcc", "krcc", "rmse", "plcc_logistic"), float("nan"))
    return metrics.iqa_metrics(predictions.predictions[labelled], predictions.scores[labelled])


def _gathered_pass(
    module: torch.nn.Module,
    shard_set: ShardSet,
    data_cfg: DataConfig,
    keys: list[str],
    *,
    device,
    dali: str,
    seed: int,
    forward: Callable[[torch.Tensor], torch.Tensor],
    empty: tuple[int, ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Positions in ``keys`` (ascending, each once) and the per-image outputs of ``forward`` at them, from all ranks."""
    rank, world_size = runtime.rank_world()
    if not keys:
        return np.zeros(0, np.int64), np.zeros(empty, np.float32)
    plan = plan_epoch(keys, data_cfg, seed=seed, epoch=0, world_size=world_size, is_training=False)
    position = {key: i for i, key in enumerate(keys)}
    dtype = _input_dtype(module)
    rows, positions = [], []
    was_training = module.training
    module.eval()
    try:
        with make_loader(shard_set, data_cfg, is_training=False, dali=dali) as loader, torch.no_grad():
            batches = loader.batches(plan.for_rank(rank))
            for batch in tqdm(batches, total=plan.num_batches, desc=f"evaluating {shard_set.root.name}", unit="batch", disable=rank != 0):
                outputs = forward(batch.images.to(device=device, dtype=dtype, non_blocking=True)).float()
                rows.append(batch.mean_over_crops(outputs).cpu().numpy())
                positions.extend(position[key] for key in batch.keys)
    finally:
        module.train(was_training)
    local_rows = np.concatenate(rows) if rows else np.zeros(empty, np.float32)
    gathered_rows = np.concatenate(runtime.all_gather_array(local_rows))
    gathered_positions = np.concatenate(runtime.all_gather_array(np.asarray(positions, dtype=np.int64)))
    # Padding repeats a few samples; their rows are the same computation, so the first one stands.
    unique, first = np.unique(gathered_positions, return_index=True)
    return unique, gathered_rows[first]


def _input_dtype(module: torch.nn.Module) -> torch.dtype:
    # A bf16 / fp16 engine's module wants inputs of its own dtype.
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return torch.float32


# ---------------------------------------------------------------------------
# checkpoints -> model


@dataclasses.dataclass(frozen=True)
class CheckpointSource:
    """Where a model's weights come from: a state dict file or a DeepSpeed checkpoint folder and tag."""

    state_dict_file: Path | None = None
    deepspeed_dir: Path | None = None
    tag: str | None = None
    folder: Path = Path(".")  # where the search for config.yaml starts

    def load(self) -> dict[str, torch.Tensor]:
        """The fp32 state dict."""
        if self.state_dict_file is not None:
            return export.load_state_dict(self.state_dict_file)
        return export.consolidated_state_dict(self.deepspeed_dir, self.tag)


def resolve_checkpoint(checkpoint: Path) -> CheckpointSource:
    """Read ``checkpoint`` as a run dir (its export, else its latest checkpoint), a DeepSpeed checkpoint
    folder (with ``latest``), one tag folder, or a ``.pt``/``.pth``/``.safetensors`` state dict."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        if checkpoint.suffix not in export.STATE_DICT_SUFFIXES:
            raise ValueError(f"{checkpoint}: a checkpoint file must be a state dict ({', '.join(export.STATE_DICT_SUFFIXES)})")
        return CheckpointSource(state_dict_file=checkpoint, folder=checkpoint.parent)
    if not checkpoint.is_dir():
        raise ValueError(f"{checkpoint}: checkpoint does not exist")
    if (checkpoint / EXPORT_PATH).is_file():
        return CheckpointSource(state_dict_file=checkpoint / EXPORT_PATH, folder=checkpoint)
    if (checkpoint / "checkpoints" / "latest").is_file():
        return CheckpointSource(deepspeed_dir=checkpoint / "checkpoints", folder=checkpoint)
    if (checkpoint / "latest").is_file():
        return CheckpointSource(deepspeed_dir=checkpoint, folder=checkpoint)
    if export.is_tag_folder(checkpoint):
        return CheckpointSource(deepspeed_dir=checkpoint.parent, tag=checkpoint.name, folder=checkpoint)
    raise ValueError(
        f"{checkpoint}: not a checkpoint (expected a run folder with {EXPORT_PATH} or checkpoints/latest, "
        "a DeepSpeed checkpoint folder with 'latest', one of its tag folders, or a .pt/.safetensors file)"
    )


def find_config(folder: Path, levels: int = CONFIG_SEARCH_LEVELS) -> Path | None:
    """The nearest ``config.yaml`` in ``folder`` or up to ``levels`` folders above it."""
    folder = Path(folder).resolve()
    for candidate in [folder, *folder.parents][: levels + 1]:
        if (candidate / CONFIG_NAME).is_file():
            return candidate / CONFIG_NAME
    return None


def load_model(checkpoint: Path, config_path: Path | None = None, overrides: Sequence[str] = ()) -> tuple[Config, IQAModel]:
    """The run's config and its model (CPU, eval mode) with the checkpoint's weights loaded strictly.

    The config is ``config_path`` or the run's ``config.yaml`` found beside the
    checkpoint (up to three folders up), with ``overrides`` applied. The
    model is built without weights and takes the checkpoint's: nothing is
    read from ``model.weights`` and nothing is downloaded.
    """
    source = resolve_checkpoint(Path(checkpoint))
    if config_path is None:
        config_path = find_config(source.folder)
        if config_path is None:
            raise ValueError(
                f"{checkpoint}: no {CONFIG_NAME} in its folder or the {CONFIG_SEARCH_LEVELS} above it; pass the run's config with --config"
            )
    cfg = config_module.load(Path(config_path), list(overrides))
    model_cfg = dataclasses.replace(cfg.model, weights="", is_random_init=True, is_grad_checkpointing=False)
    # Built on the meta device the model skips its random initialisation (minutes for the large
    # ViTs on a CPU) and takes the checkpoint's tensors as they are.
    with torch.device("meta"):
        model = build_model(model_cfg)
    state = source.load()
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    mismatched = [name for name in expected if name in state and state[name].shape != expected[name].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{checkpoint}: weights do not fit model.backbone={cfg.model.backbone} (image_size={cfg.model.image_size}) "
            f"of {config_path}: missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]}"
        )
    state = {name: tensor.to(expected[name].dtype) for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # A backbone with non-persistent buffers computes them at construction: build it for real.
        model = build_model(model_cfg)
        model.load_state_dict(state, strict=True)
    log.info("loaded %s (%s) with config %s", checkpoint, cfg.model.backbone, config_path)
    return cfg, model.eval()


# ---------------------------------------------------------------------------
# output files


def write_predictions_csv(path: Path, predictions: Predictions) -> Path:
    """``key,prediction,score`` rows in key order (empty score where unlabelled), written atomically."""
    path = Path(path)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["key", "prediction", "score"])
    for key, prediction, score in zip(predictions.keys.tolist(), predictions.predictions.tolist(), predictions.scores.tolist()):
        writer.writerow([key, repr(prediction), "" if math.isnan(score) else repr(score)])
    atomic_files.write_text(path, buffer.getvalue())
    return path


# ---------------------------------------------------------------------------
# targets: shard sets or raw datasets sharded once


def parse_target(name: str, spec: str) -> tuple[str | None, Path]:
    """``(reader kind or None, path)`` of a target ``name=spec`` where spec is ``DIR`` or ``KIND:DIR``.

    The kind is explicit, or ``name`` when it names a reader (``koniq`` means
    ``koniq10k``), or ``csv`` for a ``.csv`` file; None means a shard set is expected.
    """
    from dist_syndr.pools.readers import READERS

    if not name or "/" in name or name.startswith(".") or "=" in name:
        raise ValueError(f"target name {name!r}: must be a plain name (it names files and metrics)")
    prefix, separator, rest = spec.partition(":")
    if separator and (prefix in READERS or prefix in READER_ALIASES):
        return READER_ALIASES.get(prefix, prefix), Path(rest)
    path = Path(spec)
    kind = READER_ALIASES.get(name, name)
    if kind in READERS:
        return kind, path
    if path.suffix.lower() == ".csv":
        return "csv", path
    return None, path


def target_shard_set(name: str, spec: str, cache_dir: Path, *, num_workers: int = 2, seed: int = 0) -> ShardSet:
    """Target ``name=spec`` as a shard set: ``spec`` itself when it holds ``index.json``, otherwise the
    dataset read by its pools reader, sharded once into ``cache_dir/<name>`` (reused while its source is
    unchanged). Collective under a process group: ranks split the shards."""
    from dist_syndr.pools.readers import READERS

    kind, root = parse_target(name, spec)
    if (root / INDEX_NAME).is_file():
        return ShardSet(root)
    if not root.exists():
        raise ValueError(f"target {name}: {root} does not exist")
    if kind is None:
        raise ValueError(
            f"target {name}: {root} is not a shard set (no {INDEX_NAME}) and {name!r} names no dataset reader; "
            f"write it as {name}=KIND:{root} with KIND one of {', '.join(sorted(READERS))}"
        )
    out_dir = Path(cache_dir) / name
    recorded = {"target": name, "kind": kind, "root": str(root.resolve())}
    if (out_dir / INDEX_NAME).is_file():
        cached = ShardSet(out_dir)
        if cached.config == recorded:
            log.info("target %s: reusing %s (%d samples)", name, out_dir, len(cached))
            return cached
        log.warning("target %s: %s was sharded from %s; re-sharding from %s", name, out_dir, cached.config.get("root"), root)
    _shard_raw_target(kind, root, out_dir, recorded, num_workers=num_workers, seed=seed)
    return ShardSet(out_dir)


def _shard_raw_target(kind: str, root: Path, out_dir: Path, recorded: dict, *, num_workers: int, seed: int) -> None:
    from dist_syndr import sharding
    from dist_syndr.config import PoolConfig, ShardConfig
    from dist_syndr.shard_plan import build_plan

    # Every image the dataset labels: all distortion types and levels, every reference.
    pool = PoolConfig(kind=kind, root=str(root), types=list(range(1, 26)), training_refs_only=False, labels="dataset")
    plan = build_plan(Config(seed=seed, shard=ShardConfig(name=out_dir.name, pool=pool)))
    if not plan.items:
        raise ValueError(f"target {recorded['target']}: the {kind} reader found no images under {root}")
    rank, world_size = runtime.rank_world()
    options = sharding.WriteOptions(num_workers=num_workers)
    sharding.write_shard_set(plan.items, out_dir, options, recorded, rank=rank, world_size=world_size)
    runtime.barrier()  # rank 0 writes index.json after the others finished their shards


