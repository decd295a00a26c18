"""State dict files: one plain mapping of names to tensors, written with a sha256 sidecar and checked when read.

``.pt``/``.pth`` files go through ``torch.save`` and are read back with
``weights_only=True`` (tensors only, nothing executed); ``.safetensors`` through
safetensors. :func:`save_state_dict` writes atomically, data first, then its
sidecar ``<file>.sha256``; :func:`load_state_dict` refuses a file whose sha256
does not match its sidecar.

Shapes: none (named tensors of the model's own shapes).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from dist_syndr import files

log = logging.getLogger(__name__)

STATE_DICT_SUFFIXES = (".pt", ".pth", ".safetensors")


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
