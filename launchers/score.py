"""Score images with a trained model: files, folders (recursive), glob patterns or list files.

    python launchers/score.py --checkpoint runs/<run> --out scores.csv photos/ extra/*.jpg list.txt
    python launchers/score.py --checkpoint model.safetensors --config runs/<run>/config.yaml --out s.jsonl x.png
    torchrun --nproc_per_node 2 launchers/score.py ...   # ranks split the files; rank 0 writes the output

Rows: path, score (the training scale, [0, 10]), spread (std over crops), crops,
resized, score_original (the training labels' own scale, where the run knows it).
Unreadable files go to <out>.errors.csv with the reason; a rerun scores
only what the output lacks. Exit status: 0 all scored, 3 some inputs skipped,
2 bad arguments, 1 a storage error (under a launcher rank 0 gives it; the others exit 0).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from dist_syndr import cli, runtime
from dist_syndr.imaging import DEFAULT_MAX_PIXELS
from dist_syndr.scoring.compiled import COMPILE_MIN_IMAGES, COMPILE_MODES
from dist_syndr.scoring.crops import CROP_MODES
from dist_syndr.scoring.dali_decode import DECODERS
from dist_syndr.scoring.job import run_job
from dist_syndr.scoring.scorer import Scorer

EXIT_SKIPPED = 3


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="image files, folders, glob patterns, or .txt/.csv lists of paths")
    parser.add_argument("--checkpoint", type=Path, required=True, help="run folder, checkpoint folder or weights")
    parser.add_argument("--out", type=Path, required=True, help="results file (.csv or .jsonl)")
    parser.add_argument("--config", type=Path, help="the run's config.yaml (found beside the checkpoint otherwise)")
    parser.add_argument("--crops", type=int, help="crops per image (default: the run's data.eval_crops)")
    parser.add_argument("--crop-mode", choices=CROP_MODES, help="default: the run's data.eval_crop_mode")
    parser.add_argument("--batch-size", type=int, default=64, help="crops per forward pass")
    parser.add_argument(
        "--workers", type=int, help="decoding processes (0: decode in this one; default: 0 on a CPU, up to 4 on a GPU)"
    )
    parser.add_argument("--device", default="auto", help="auto (the GPU when present), cpu or cuda")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are skipped")
    parser.add_argument(
        "--decoder", default="auto", choices=DECODERS, help="auto: DALI's mixed decoder on a GPU, PIL on a CPU"
    )
    parser.add_argument(
        "--compile", default="auto", choices=COMPILE_MODES,
        help=f"torch.compile the model (auto: for jobs of {COMPILE_MIN_IMAGES}+ images, where it pays back)",
    )  # fmt: skip
    cli.add_trust_checkpoint(parser)
    args = parser.parse_args(argv)
    runtime.setup_logging("INFO", runtime.env_rank_world()[0])

    def scorer() -> Scorer:
        options = {"crops": args.crops, "crop_mode": args.crop_mode, "batch_size": args.batch_size}
        options |= {"precision": args.precision, "is_trusted": args.trust_checkpoint}
        return Scorer.load(args.checkpoint, args.device, config_path=args.config, **options)

    options = {"num_workers": args.workers, "max_pixels": args.max_pixels, "decoder": args.decoder}
    options["compile_mode"] = args.compile
    summary = run_job(scorer, args.paths, args.out, **options)
    if runtime.env_rank_world()[0] != 0:
        return 0  # rank 0 alone reports: a launcher stops every rank as soon as one exits non-zero
    print(summary.line(args.out))
    return EXIT_SKIPPED if summary.num_failed else 0


if __name__ == "__main__":
    cli.run(main)
