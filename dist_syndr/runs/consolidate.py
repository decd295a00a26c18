"""Consolidated fp32 weights: one plain state dict of the model from a DeepSpeed checkpoint of any ZeRO stage.

A DeepSpeed checkpoint folder holds one folder per tag (``epoch0003``,
``epoch0003-step000120``); without a tag the one :func:`dist_syndr.runs.folder.last_tag`
names is read (``complete``, else DeepSpeed's ``latest``). Every file is read
through :mod:`dist_syndr.runs.model_states`: weights only, nothing a stranger
wrote is executed, unless ``is_trusted``. What a tag holds depends on the ZeRO stage:

- stage 0: ``mp_rank_00_model_states.pt`` stores the whole module. Under bf16
  or fp16 that copy is 16-bit, and the fp32 master weights live in the
  optimizer state beside it (``fp32_groups`` of DeepSpeed's unfused 16-bit
  optimizer, ``fp32_groups_flat`` of the fused one); they are taken from
  there so the export is the exact fp32 model.
- stages 1-3: every rank's ``*_optim_states.pt`` holds its partition of the
  fp32 master weights; DeepSpeed's own ``zero_to_fp32`` functions merge them
  (with buffers, and with frozen parameters under stages 2-3). Stage 1 does
  not record frozen parameters; they never change, so the module copy in
  ``mp_rank_00_model_states.pt`` supplies them (cast to fp32).

The result has exactly the keys of the module's ``state_dict()`` in its
order, floating tensors in fp32 and integer buffers as they were. A tag that
cannot be read (a rank's file half-written by a killed job) is one ValueError
line naming the file and the tag ``complete`` names.

Shapes: none (named tensors of the model's own shapes).
"""

from __future__ import annotations

import contextlib
import io
import logging
import pickle
from pathlib import Path

import torch

from dist_syndr.runs import folder as run_folder
from dist_syndr.runs import model_states

log = logging.getLogger(__name__)

STAGE0_MODEL_STATES = "mp_rank_00_model_states.pt"
STAGE3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


# ---------------------------------------------------------------------------
# DeepSpeed checkpoint -> state dict


def resolve_tag(checkpoint_dir: Path, tag: str | None = None) -> str:
    """``tag`` itself (checked to exist) or the one :func:`dist_syndr.runs.folder.last_tag` names."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise ValueError(f"{checkpoint_dir}: checkpoint folder does not exist")
    if tag is None:
        tag = run_folder.last_tag(checkpoint_dir)
    if not tag or not (checkpoint_dir / tag).is_dir():
        tags = run_folder.checkpoint_tags(checkpoint_dir)
        raise ValueError(f"{checkpoint_dir}: checkpoint tag {tag!r} not found (tags: {tags or 'none'})")
    return tag


def is_tag_folder(folder: Path) -> bool:
    """True when ``folder`` is one DeepSpeed checkpoint tag (it holds model-states files)."""
    return Path(folder).is_dir() and any(Path(folder).glob("*model_states.pt"))


def consolidated_state_dict(
    checkpoint_dir: Path, tag: str | None = None, *, is_trusted: bool = False
) -> dict[str, torch.Tensor]:
    """The model's full fp32 state dict from DeepSpeed checkpoint ``checkpoint_dir`` (tag ``tag`` or the last
    complete one).

    Keys and their order are those of the module's ``state_dict()``; ValueError
    naming the file when the checkpoint is incomplete, unreadable or not DeepSpeed's;
    :class:`dist_syndr.runs.model_states.UntrustedCheckpointError` when a file asks
    for code (``is_trusted`` unpickles fully).
    """
    checkpoint_dir = Path(checkpoint_dir)
    tag = resolve_tag(checkpoint_dir, tag)
    folder = checkpoint_dir / tag
    try:
        if any(folder.glob("*_optim_states.pt")):
            state = _zero_state_dict(checkpoint_dir, tag, is_trusted)
        else:
            state = _stage0_state_dict(folder, is_trusted)
    except model_states.UntrustedCheckpointError:
        raise
    except ValueError as error:
        raise ValueError(f"{error}{_complete_hint(checkpoint_dir, tag)}") from None
    log.info("consolidated %d tensors (%d values) from %s", len(state), sum(t.numel() for t in state.values()), folder)
    return state


def _complete_hint(checkpoint_dir: Path, tag: str) -> str:
    try:
        complete = run_folder.complete_tag(checkpoint_dir)
    except ValueError:
        return ""
    if complete is None or complete == tag:
        return ""
    return f"; the last tag every rank finished is {complete} ({checkpoint_dir / complete})"


def _stage0_state_dict(folder: Path, is_trusted: bool) -> dict[str, torch.Tensor]:
    saved = _load_model_states(folder / STAGE0_MODEL_STATES, is_trusted)
    module = saved["module"]
    masters = _stage0_masters(saved.get("optimizer"), saved.get("buffer_names") or (), module, folder)
    return {name: _fp32(masters.get(name, tensor)) for name, tensor in module.items()}


def _stage0_masters(optimizer_state, buffer_names, module: dict, folder: Path) -> dict[str, torch.Tensor]:
    """The fp32 master copies of a 16-bit stage-0 run, by parameter name ({} under fp32 training)."""
    if not isinstance(optimizer_state, dict):
        return {}
    if "fp32_groups" in optimizer_state:
        pieces = [t.reshape(-1) for group in optimizer_state["fp32_groups"] for t in group]
    elif "fp32_groups_flat" in optimizer_state:
        pieces = [t.reshape(-1) for t in optimizer_state["fp32_groups_flat"]]
    else:
        return {}
    values = torch.cat(pieces).float() if pieces else torch.zeros(0)
    # The optimizer's groups hold the trainable parameters in module order (IQAModel.parameter_groups:
    # backbone, then head) without the frozen ones. The 16-bit module weights are the masters rounded,
    # so walking both in order and matching each rounded window proves the alignment; a parameter
    # whose window does not match is a frozen one and keeps its module copy.
    buffers = set(buffer_names)
    masters, frozen, offset = {}, [], 0
    for name, saved in module.items():
        if name in buffers or not saved.is_floating_point():
            continue
        window = values[offset : offset + saved.numel()]
        if window.numel() == saved.numel() and torch.equal(window.to(saved.dtype), saved.reshape(-1)):
            masters[name] = window.view(saved.shape)
            offset += saved.numel()
        else:
            frozen.append(name)
    if offset != values.numel():
        raise ValueError(f"{folder}: the optimizer's fp32 master weights do not line up with the module's parameters")
    lossy = [name for name in frozen if module[name].dtype != torch.float32]
    if lossy:
        log.warning(
            "%s: %d frozen parameter(s) exported from the 16-bit module copy, e.g. %s", folder, len(lossy), lossy[0]
        )
    return masters


def _zero_state_dict(checkpoint_dir: Path, tag: str, is_trusted: bool) -> dict[str, torch.Tensor]:
    from deepspeed.utils import zero_to_fp32

    folder = checkpoint_dir / tag
    for path in sorted(folder.glob("*_states.pt")):
        model_states.load(path, is_trusted=is_trusted)  # refuse a foreign or broken file before DeepSpeed reads it
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter), model_states.restricted_loads(is_trusted):  # it prints progress
            merged = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except pickle.UnpicklingError as error:
        raise model_states.refusal(folder, error) from None
    except (FileNotFoundError, ValueError, KeyError, RuntimeError, AssertionError) as error:
        raise ValueError(f"{folder}: cannot merge the ZeRO partitions ({_short(error)})") from None
    log.debug("zero_to_fp32: %s", chatter.getvalue())
    states_file = (
        folder / STAGE3_MODEL_STATES if (folder / STAGE3_MODEL_STATES).is_file() else folder / STAGE0_MODEL_STATES
    )
    module = _load_model_states(states_file, is_trusted)["module"]
    state, missing, lossy = {}, [], []
    for name, saved in module.items():
        if name in merged:
            state[name] = _fp32(merged[name])
        elif saved.numel() > 0:  # stage 1 keeps no record of frozen parameters: the module copy has them
            state[name] = _fp32(saved)
            if saved.is_floating_point() and saved.dtype != torch.float32:
                lossy.append(name)
        else:
            missing.append(name)
    if missing:
        raise ValueError(f"{folder}: no weights for {len(missing)} tensor(s), e.g. {missing[:3]}")
    if lossy:
        log.warning(
            "%s: %d frozen parameter(s) exported from the 16-bit module copy, e.g. %s", folder, len(lossy), lossy[0]
        )
    return state


def _load_model_states(path: Path, is_trusted: bool) -> dict:
    if not path.is_file():
        raise ValueError(f"{path.parent}: no {path.name}; not a complete DeepSpeed checkpoint tag")
    # Memory-mapped, so a stage-0 file's optimizer moments are never read in.
    saved = model_states.load(path, is_trusted=is_trusted)
    if not isinstance(saved, dict) or not isinstance(saved.get("module"), dict):
        raise ValueError(f"{path}: no 'module' state dict inside; not a DeepSpeed model-states file")
    return saved


def _short(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:200] + (" ..." if len(text) > 200 else "")


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    # A copy: the result must not depend on the (memory-mapped) checkpoint file staying on disk.
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()
