"""Consolidated fp32 weights: one plain state dict of the model from a DeepSpeed checkpoint of any ZeRO stage.

A DeepSpeed checkpoint folder holds one folder per tag (``epoch0003``,
``epoch0003-step000120``) and a ``latest`` file naming the newest. What a tag
holds depends on the ZeRO stage:

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
order, floating tensors in fp32 and integer buffers as they were.
:func:`save_state_dict` writes it atomically with a sha256 sidecar that
:func:`load_state_dict` verifies.

Shapes: none (named tensors of the model's own shapes).
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import torch

from dist_syndr import files

log = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")
STAGE0_MODEL_STATES = "mp_rank_00_model_states.pt"
STAGE3_MODEL_STATES = "zero_pp_rank_0_mp_rank_00_model_states.pt"


# ---------------------------------------------------------------------------
# DeepSpeed checkpoint -> state dict


def resolve_tag(checkpoint_dir: Path, tag: str | None = None) -> str:
    """``tag`` itself (checked to exist) or the one DeepSpeed's ``latest`` file names."""
    checkpoint_dir = Path(checkpoint_dir)
    if not checkpoint_dir.is_dir():
        raise ValueError(f"{checkpoint_dir}: checkpoint folder does not exist")
    if tag is None:
        latest = checkpoint_dir / "latest"
        if not latest.is_file():
            raise ValueError(f"{checkpoint_dir}: no 'latest' file; pass a tag (one of {_tags(checkpoint_dir)})")
        tag = latest.read_text().strip()
    if not tag or not (checkpoint_dir / tag).is_dir():
        raise ValueError(f"{checkpoint_dir}: checkpoint tag {tag!r} not found (tags: {_tags(checkpoint_dir)})")
    return tag


def is_tag_folder(folder: Path) -> bool:
    """True when ``folder`` is one DeepSpeed checkpoint tag (it holds model-states files)."""
    return Path(folder).is_dir() and any(Path(folder).glob("*model_states.pt"))


def consolidated_state_dict(checkpoint_dir: Path, tag: str | None = None) -> dict[str, torch.Tensor]:
    """The model's full fp32 state dict from DeepSpeed checkpoint ``checkpoint_dir`` (tag ``tag`` or ``latest``).

    Keys and their order are those of the module's ``state_dict()``; ValueError
    naming the folder when the checkpoint is incomplete or not DeepSpeed's.
    """
    checkpoint_dir = Path(checkpoint_dir)
    tag = resolve_tag(checkpoint_dir, tag)
    folder = checkpoint_dir / tag
    is_zero = any(folder.glob("*_optim_states.pt"))
    if is_zero:
        state = _zero_state_dict(checkpoint_dir, tag)
    else:
        state = _stage0_state_dict(folder)
    log.info("consolidated %d tensors (%d values) from %s", len(state), sum(t.numel() for t in state.values()), folder)
    return state


def _stage0_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    saved = _load_model_states(folder / STAGE0_MODEL_STATES)
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


def _zero_state_dict(checkpoint_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    from deepspeed.utils import zero_to_fp32

    folder = checkpoint_dir / tag
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):  # zero_to_fp32 prints its progress
            merged = zero_to_fp32.get_fp32_state_dict_from_zero_checkpoint(str(checkpoint_dir), tag=tag)
    except (FileNotFoundError, ValueError, KeyError) as error:
        raise ValueError(f"{folder}: cannot merge the ZeRO partitions ({error})") from None
    log.debug("zero_to_fp32: %s", chatter.getvalue())
    states_file = (
        folder / STAGE3_MODEL_STATES if (folder / STAGE3_MODEL_STATES).is_file() else folder / STAGE0_MODEL_STATES
    )
    module = _load_model_states(states_file)["module"]
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


def _load_model_states(path: Path) -> dict:
    if not path.is_file():
        raise ValueError(f"{path.parent}: no {path.name}; not a complete DeepSpeed checkpoint tag")
    # DeepSpeed pickles its config objects into the file: only our own checkpoints are read here.
    # Memory-mapped, so a stage-0 file's optimizer moments are never read in.
    saved = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
    if not isinstance(saved, dict) or not isinstance(saved.get("module"), dict):
        raise ValueError(f"{path}: no 'module' state dict inside; not a DeepSpeed model-states file")
    return saved


def _fp32(tensor: torch.Tensor) -> torch.Tensor:
    # A copy: the result must not depend on the (memory-mapped) checkpoint file staying on disk.
    dtype = torch.float32 if tensor.is_floating_point() else tensor.dtype
    return tensor.detach().to(device="cpu", dtype=dtype, copy=True).contiguous()


def _tags(checkpoint_dir: Path) -> list[str]:
    return sorted(p.name for p in checkpoint_dir.iterdir() if p.is_dir()) if checkpoint_dir.is_dir() else []


# ---------------------------------------------------------------------------
# files with checksums


def checksum_path(path: Path) -> Path:
    """The sha256 sidecar of ``path`` (``model_fp32.pt`` -> ``model_fp32.pt.sha256``)."""
    return Path(path).with_name(f"{Path(path).name}.sha256")


def save_state_dict(state: dict[str, torch.Tensor], path: Path) -> Path:
    """Write ``state`` to ``path`` (``.pt``/``.pth`` via torch.save, ``.safetensors``) atomically,
    with a sha256 sidecar.
    """
    path = Path(path)
    if path.suffix not in STATE_DICT_SUFFIXES:
        raise ValueError(f"{path}: state dict files end in {', '.join(STATE_DICT_SUFFIXES)}")
    tensors = {name: tensor.detach().cpu().contiguous() for name, tensor in state.items()}
    # Data first, then its checksum: a crash in between leaves a mismatch that load_state_dict reports.
    with files.atomic_path(path) as temporary:
        if path.suffix == ".safetensors":
            from safetensors.torch import save_file

            save_file({name: tensor.clone() for name, tensor in tensors.items()}, str(temporary))  # no shared storage
        else:
            torch.save(tensors, temporary)
        digest = files.sha256_file(temporary)
    files.write_text(checksum_path(path), f"{digest}  {path.name}\n")
    log.info("wrote %s (%d tensors, sha256 %s)", path, len(tensors), digest[:12])
    return path


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A state dict file, its sha256 checked against the sidecar when there is one (warning when there is none)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: state dict file does not exist")
    sidecar = checksum_path(path)
    if sidecar.is_file():
        expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
        if files.sha256_file(path) != expected:
            raise ValueError(f"{path}: sha256 does not match {sidecar.name} (file corrupt or replaced)")
    else:
        log.warning("%s: no %s sidecar; loading without a checksum check", path, sidecar.name)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for foreign or damaged pickles
        raise ValueError(
            f"{path}: not a readable torch state dict ({type(error).__name__}: {str(error)[:200]})"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a flat mapping of names to tensors")
    return state


def export_checkpoint(checkpoint_dir: Path, path: Path, tag: str | None = None) -> Path:
    """Consolidate ``checkpoint_dir`` (tag or ``latest``) and save it to ``path``; call it on one rank."""
    return save_state_dict(consolidated_state_dict(checkpoint_dir, tag), path)
