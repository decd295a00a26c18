"""A trained model in formats a deployment loads without this package: ONNX, TorchScript, safetensors.

The exported graph is the model alone: ``(batch, 3, C, C)`` normalised float32 crops
in, ``(batch,)`` scores out, with a dynamic batch. Preprocessing (ImageNet
normalisation, the crop protocol, averaging over crops) and the score scale are in
the model card written beside the file. Every export is checked before it is kept:
the file is loaded back (onnxruntime for ONNX, ``torch.jit.load`` for TorchScript,
safetensors for weights) and run on a batch of a different size than the one it was
traced with; outputs must equal PyTorch's within ``tolerance``.

Shapes: crops ``(B, 3, C, C)`` float32, scores ``(B,)`` float32.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dist_syndr import files
from dist_syndr.runs import card as card_file
from dist_syndr.runs import weights

log = logging.getLogger(__name__)

FORMATS = ("onnx", "torchscript", "safetensors")
SUFFIXES = {"onnx": ".onnx", "torchscript": ".torchscript.pt", "safetensors": ".safetensors"}
TOLERANCE = 1e-4
ONNX_OPSET = 18


@dataclass(frozen=True)
class ExportCheck:
    """How an exported file compared with the PyTorch model."""

    path: Path
    format: str
    batch_size: int  # of the check batch (differs from the traced one: the batch is dynamic)
    max_abs_difference: float


def export_model(
    model: torch.nn.Module, crop: int, fmt: str, path: Path, *, tolerance: float = TOLERANCE
) -> ExportCheck:
    """Write ``model`` as ``fmt`` to ``path`` atomically and check it; ValueError when the check fails."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    model = model.float().eval()
    generator = torch.Generator().manual_seed(0)
    example = torch.randn(2, 3, crop, crop, generator=generator)
    check = torch.randn(3, 3, crop, crop, generator=generator)
    with torch.no_grad():
        expected = model(check).numpy()
    if fmt == "safetensors":
        weights.save_state_dict(model.state_dict(), path)
        try:
            difference = _difference(_safetensors_outputs(model, path, check), expected, tolerance, path, fmt)
        except ValueError:
            Path(path).unlink()
            raise
    else:
        write, run = (_write_onnx, _onnx_outputs) if fmt == "onnx" else (_write_torchscript, _torchscript_outputs)
        with files.atomic_path(path) as temporary:  # a file that fails its check is never left behind
            write(model, example, temporary)
            difference = _difference(run(temporary, check), expected, tolerance, path, fmt)
    log.info("%s: %s export checked on a batch of %d: max |difference| %.3g", path, fmt, len(check), difference)
    return ExportCheck(Path(path), fmt, len(check), difference)


def _difference(actual: np.ndarray, expected: np.ndarray, tolerance: float, path: Path, fmt: str) -> float:
    difference = float(np.abs(np.asarray(actual, dtype=np.float64) - expected).max())
    if not difference <= tolerance:
        raise ValueError(f"{path}: the {fmt} export differs from PyTorch by {difference:.3g} (> {tolerance})")
    return difference


def _write_onnx(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=65536)
    with contextlib.redirect_stdout(None):  # the exporter prints its progress
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=["crops"],
            output_names=["scores"],
            dynamo=True,
            dynamic_shapes={"images": {0: batch}},
            opset_version=ONNX_OPSET,
            external_data=False,
        )


def _onnx_outputs(path: Path, crops: torch.Tensor) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["scores"], {"crops": crops.numpy()})[0]


def _write_torchscript(model: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    # torch.jit is deprecated in favour of torch.export, but TorchScript files still load in C++ and older stacks;
    # the trace is checked on another batch size below, which catches what the tracer warns about.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.save(str(path))


def _torchscript_outputs(path: Path, crops: torch.Tensor) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        loaded = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return loaded(crops).numpy()


def _safetensors_outputs(model: torch.nn.Module, path: Path, crops: torch.Tensor) -> np.ndarray:
    import copy

    reloaded = copy.deepcopy(model)
    reloaded.load_state_dict(weights.load_state_dict(path), strict=True)
    with torch.no_grad():
        return reloaded(crops).numpy()


def export_checkpoint(
    checkpoint: Path, fmt: str, out: Path | None = None, *, config_path: Path | None = None, is_trusted: bool = False
) -> tuple[ExportCheck, Path]:
    """Export a run folder, checkpoint or weights file as ``fmt`` (default path: ``<run>/export/model<suffix>``)
    with its model card beside it (``<file>.card.json`` and ``.card.md``); returns the check and the card path.
    ``is_trusted``: DeepSpeed's pickles are unpickled fully."""
    from dist_syndr.export import cards
    from dist_syndr.runs.checkpoints import find_config, load_model, resolve_checkpoint

    source = resolve_checkpoint(Path(checkpoint))
    cfg, model = load_model(Path(checkpoint), config_path, is_trusted=is_trusted)
    run_dir = find_config(source.folder)
    run_dir = run_dir.parent if run_dir is not None else source.folder
    if out is None:
        out = run_dir / "export" / f"model{SUFFIXES[fmt]}"
    check = export_model(model, cfg.data.crop, fmt, Path(out))
    card = card_file.read(run_dir / "export" / card_file.CARD_NAME) or cards.base_card(cfg, config_path)
    card["export"] = {
        "format": fmt,
        "file": Path(out).name,
        "sha256": files.sha256_file(out),
        "inputs": {"crops": ["batch", 3, cfg.data.crop, cfg.data.crop]},
        "outputs": {"scores": ["batch"]},
        "checked": f"max |difference| {check.max_abs_difference:.3g} against PyTorch on a batch of {check.batch_size}",
    }
    card_path, _ = card_file.write(card, Path(out).with_name(f"{Path(out).name}.card.json"))
    return check, card_path
