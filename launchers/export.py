"""Export a trained model for deployment: ONNX, TorchScript or safetensors, with a model card beside it.

    python launchers/export.py --checkpoint runs/<run> --format onnx
    python launchers/export.py --checkpoint runs/<run> --format torchscript --out model.pt
    python launchers/export.py --checkpoint weights.safetensors --config runs/<run>/config.yaml --format onnx

The exported graph takes (batch, 3, C, C) ImageNet-normalised float32 crops and
returns one score per crop (dynamic batch); the card says how to crop, normalise
and average. Every export is loaded back and checked against PyTorch first.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, runtime
from dist_syndr.export import formats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or weights")
    parser.add_argument("--format", choices=formats.FORMATS, required=True)
    parser.add_argument("--out", type=Path, help="output file (default: <run>/export/model.<format suffix>)")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (found beside the checkpoint otherwise)")
    cli.add_trust_checkpoint(parser)
    args = parser.parse_args(argv)
    runtime.setup_logging("INFO")
    options = {"config_path": args.config, "is_trusted": args.trust_checkpoint}
    check, card = formats.export_checkpoint(args.checkpoint, args.format, args.out, **options)
    print(
        f"{check.path}: {check.format}, max |difference| {check.max_abs_difference:.2g} against PyTorch on a "
        f"batch of {check.batch_size}; model card {card}"
    )
    return 0


if __name__ == "__main__":
    cli.run(main)
