"""A trained model from any checkpoint: a run folder, a DeepSpeed checkpoint folder or tag, or a weights file.

:func:`resolve_checkpoint` says where the weights come from, by the rules of
:mod:`dist_syndr.runs.folder`: a run folder's export while it holds the tag
``checkpoints/complete`` names, else that tag; a checkpoint folder's ``complete``
tag (DeepSpeed's ``latest`` only without one). :func:`load_model` finds the
run's ``config.yaml`` beside the checkpoint, builds the model without
downloading anything and loads the weights strictly. Nothing is unpickled
beyond tensors and the allow-listed types unless ``is_trusted``
(:mod:`dist_syndr.runs.model_states`). Importing this module needs no
DeepSpeed; only consolidating a ZeRO checkpoint (:mod:`dist_syndr.runs.consolidate`) does.

Shapes: none (named tensors of the model's own shapes).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from dist_syndr import config as config_module
from dist_syndr.config import Config
from dist_syndr.features.model import IQAModel, build_model
from dist_syndr.runs import consolidate, weights
from dist_syndr.runs.folder import CONFIG_NAME, EXPORT_WEIGHTS, LATEST_NAME, POINTER_NAME, RunFolder

log = logging.getLogger(__name__)

CONFIG_SEARCH_LEVELS = 3


@dataclasses.dataclass(frozen=True)
class CheckpointSource:
    """Where a model's weights come from: a state dict file or a DeepSpeed checkpoint folder and tag."""

    state_dict_file: Path | None = None
    deepspeed_dir: Path | None = None
    tag: str | None = None
    folder: Path = Path(".")  # where the search for config.yaml starts

    def load(self, *, is_trusted: bool = False) -> dict[str, torch.Tensor]:
        """The fp32 state dict (``is_trusted``: DeepSpeed's pickles are unpickled fully)."""
        if self.state_dict_file is not None:
            return weights.load_state_dict(self.state_dict_file)
        return consolidate.consolidated_state_dict(self.deepspeed_dir, self.tag, is_trusted=is_trusted)

    def describe(self) -> str:
        """The file or tag the weights come from, for logs and provenance."""
        if self.state_dict_file is not None:
            return str(self.state_dict_file)
        return str(self.deepspeed_dir / self.tag) if self.tag else str(self.deepspeed_dir)


def resolve_checkpoint(checkpoint: Path) -> CheckpointSource:
    """Read ``checkpoint`` as a run folder (its current export, else its last complete checkpoint), a DeepSpeed
    checkpoint folder (``complete``, else ``latest``), one tag folder, or a ``.pt``/``.pth``/``.safetensors`` state
    dict."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_file():
        if checkpoint.suffix not in weights.STATE_DICT_SUFFIXES:
            raise ValueError(
                f"{checkpoint}: a checkpoint file must be a state dict ({', '.join(weights.STATE_DICT_SUFFIXES)})"
            )
        return CheckpointSource(state_dict_file=checkpoint, folder=checkpoint.parent)
    if not checkpoint.is_dir():
        raise ValueError(f"{checkpoint}: checkpoint does not exist")
    run = RunFolder(checkpoint)
    if (checkpoint / "checkpoints").is_dir() or run.weights_path.is_file():
        export = run.current_export()
        if export is not None:
            return CheckpointSource(state_dict_file=export, folder=checkpoint)
        if _has_pointer(run.checkpoints):
            tag = consolidate.resolve_tag(run.checkpoints)
            return CheckpointSource(deepspeed_dir=run.checkpoints, tag=tag, folder=checkpoint)
    if _has_pointer(checkpoint):
        return CheckpointSource(deepspeed_dir=checkpoint, tag=consolidate.resolve_tag(checkpoint), folder=checkpoint)
    if consolidate.is_tag_folder(checkpoint):
        return CheckpointSource(deepspeed_dir=checkpoint.parent, tag=checkpoint.name, folder=checkpoint)
    raise ValueError(
        f"{checkpoint}: not a checkpoint (expected a run folder with {EXPORT_WEIGHTS} or checkpoints/{POINTER_NAME}, "
        f"a DeepSpeed checkpoint folder with '{POINTER_NAME}' or '{LATEST_NAME}', one of its tag folders, "
        "or a .pt/.safetensors file)"
    )


def _has_pointer(checkpoints: Path) -> bool:
    return (checkpoints / POINTER_NAME).is_file() or (checkpoints / LATEST_NAME).is_file()


def find_config(folder: Path, levels: int = CONFIG_SEARCH_LEVELS) -> Path | None:
    """The nearest ``config.yaml`` in ``folder`` or up to ``levels`` folders above it."""
    folder = Path(folder).resolve()
    for candidate in [folder, *folder.parents][: levels + 1]:
        if (candidate / CONFIG_NAME).is_file():
            return candidate / CONFIG_NAME
    return None


def config_path_of(checkpoint: Path, config_path: Path | None = None) -> Path:
    """``config_path``, or the run's ``config.yaml`` found beside ``checkpoint`` (ValueError when there is none)."""
    if config_path is not None:
        return Path(config_path)
    return _found_config(resolve_checkpoint(Path(checkpoint)), checkpoint)


def _found_config(source: CheckpointSource, checkpoint: Path) -> Path:
    found = find_config(source.folder)
    if found is None:
        raise ValueError(
            f"{checkpoint}: no {CONFIG_NAME} in its folder or the {CONFIG_SEARCH_LEVELS} above it;"
            " pass the run's config with --config"
        )
    return found


def load_model(
    checkpoint: Path, config_path: Path | None = None, overrides: Sequence[str] = (), *, is_trusted: bool = False
) -> tuple[Config, IQAModel]:
    """The run's config and its model (CPU, eval mode) with the checkpoint's weights loaded strictly.

    The config is ``config_path`` or the run's ``config.yaml`` found beside the
    checkpoint (up to three folders up), with ``overrides`` applied. The
    model is built without weights and takes the checkpoint's: nothing is
    read from ``model.weights`` and nothing is downloaded. ``is_trusted``:
    DeepSpeed's files are unpickled fully (``--trust-checkpoint``).
    """
    source = resolve_checkpoint(Path(checkpoint))
    config_path = Path(config_path) if config_path is not None else _found_config(source, checkpoint)
    cfg = config_module.load(config_path, list(overrides))
    model_cfg = dataclasses.replace(cfg.model, weights="", is_random_init=True, is_grad_checkpointing=False)
    # Built on the meta device the model skips its random initialisation (minutes for the large
    # ViTs on a CPU) and takes the checkpoint's tensors as they are.
    with torch.device("meta"):
        model = build_model(model_cfg)
    state = source.load(is_trusted=is_trusted)
    expected = model.state_dict()
    missing = [name for name in expected if name not in state]
    unexpected = [name for name in state if name not in expected]
    mismatched = [name for name in expected if name in state and state[name].shape != expected[name].shape]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"{checkpoint}: weights do not fit model.backbone={cfg.model.backbone}"
            f" (image_size={cfg.model.image_size}) "
            f"of {config_path}: missing {missing[:3]}, unexpected {unexpected[:3]}, shape mismatch {mismatched[:3]}"
        )
    state = {name: tensor.to(expected[name].dtype) for name, tensor in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        # A backbone with non-persistent buffers computes them at construction: build it for real.
        model = build_model(model_cfg)
        model.load_state_dict(state, strict=True)
    log.info("loaded %s (%s) with config %s", source.describe(), cfg.model.backbone, config_path)
    return cfg, model.eval()
