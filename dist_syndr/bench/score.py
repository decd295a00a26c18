"""``bench.py score``: the scoring job against a one-image-at-a-time PIL + model loop, same model, same crops.

A folder of 512x384 JPEGs (crops of scikit-image's photographs) is scored twice
with a randomly initialised ``vit_tiny_patch16_224`` at 224 pixels:

- baseline: how a per-image command-line tool scores a folder: for each file,
  PIL decode, the crops, one forward pass of that image's crops, the mean;
- ours: :func:`dist_syndr.scoring.job.run_job` (what ``launchers/score.py``
  runs): decoding in worker processes, crops of many images in one batch,
  rows appended as they finish.

Both use the same crop protocol and give the same scores (checked to 1e-4);
``images/s`` excludes model loading. One case per crop protocol.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dist_syndr.bench.harness import Report, SummaryRow, markdown_table


@dataclass(frozen=True)
class ScorePlan:
    """Folder and scoring settings."""

    num_images: int = 64
    width: int = 512
    height: int = 384
    crop: int = 224
    protocols: tuple[tuple[str, int], ...] = (("centre", 1), ("random", 5))
    precisions: tuple[str, ...] = ("fp32", "bf16")  # bf16 only where the CPU has bf16 matrix instructions
    batch_size: int = 64
    num_workers: int = 2
    repeats: int = 2

    @staticmethod
    def quick() -> ScorePlan:
        return ScorePlan(
            num_images=12, width=320, height=256, crop=64, protocols=(("centre", 1),), precisions=("fp32",), repeats=1
        )


def make_run(folder: Path, plan: ScorePlan) -> tuple[Path, list[Path]]:
    """A run folder with random-init weights and a config, and the folder of JPEGs; returns both."""
    from PIL import Image

    from dist_syndr import config
    from dist_syndr.evaluate.export import save_state_dict
    from dist_syndr.features.model import build_model
    from dist_syndr.pools.embedded import photo_crops

    overrides = ["model.backbone=vit_tiny_patch16_224", "model.is_random_init=true", f"model.image_size={plan.crop}"]
    cfg = config.load(None, [*overrides, f"data.crop={plan.crop}", "run_name=bench-score"])
    torch.manual_seed(0)
    run_dir = folder / "run"
    config.dump(cfg, run_dir / "config.yaml")
    save_state_dict(build_model(cfg.model).state_dict(), run_dir / "export" / "model_fp32.pt")
    paths = []
    for number, crop in enumerate(photo_crops(np.random.default_rng(0), plan.num_images, plan.width, plan.height)):
        paths.append(folder / "photos" / f"photo{number:04d}.jpg")
        paths[-1].parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(paths[-1], quality=90)
    return run_dir, paths


def one_at_a_time(scorer, paths: list[Path]) -> np.ndarray:
    """The baseline loop: decode, crop and score each file alone (in the scorer's precision)."""
    from PIL import Image

    from dist_syndr.features.precision import autocast
    from dist_syndr.features.preprocess import normalise

    scores = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        windows, _ = scorer.protocol.windows(pixels, str(path))
        crops = torch.from_numpy(np.stack([normalise(window) for window in windows]))
        with torch.no_grad(), autocast("cpu", scorer.precision):
            scores.append(float(scorer.model(crops).float().mean()))
    return np.array(scores)


def ours(scorer, paths: list[Path], out: Path, plan: ScorePlan) -> np.ndarray:
    """The scoring job, as ``launchers/score.py`` runs it."""
    import csv

    from dist_syndr.scoring.job import run_job

    for stale in out.parent.glob(f"{out.name}*"):
        stale.unlink()
    run_job(lambda: scorer, [str(p) for p in paths], out, num_workers=plan.num_workers, max_pixels=10**9)
    rows = {row["path"]: float(row["score"]) for row in csv.DictReader(out.open())}
    return np.array([rows[str(path)] for path in paths])


def run(plan: ScorePlan) -> Report:
    """Measure both ways for each crop protocol and precision; the Markdown report and one summary row per case."""
    from dist_syndr import runtime

    precisions = [p for p in plan.precisions if p == "fp32" or runtime.has_fast_cpu_bf16()]
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        run_dir, paths = make_run(Path(scratch), plan)
        for mode, crops in plan.protocols:
            fp32 = {}
            for precision in precisions:
                measured = _measure(run_dir, paths, Path(scratch) / "scores.csv", plan, (mode, crops, precision))
                fp32 = fp32 or measured
                baseline, best = measured["baseline"], measured["ours"]
                difference = float(np.abs(measured["scores"] - fp32["scores"]).max())
                case = f"{crops} {mode} crop{'s' if crops > 1 else ''} of {plan.crop}, {precision}"
                rows.append([case, f"{baseline:.2f}", f"{best:.2f}", f"{best / baseline:.2f}x",
                             f"{best / fp32['baseline']:.2f}x", f"{difference:.2g}"])  # fmt: skip
                summary.append(
                    SummaryRow(
                        "score",
                        f"score.py, {case}",
                        f"{best:.2f} images/s",
                        "one image at a time, fp32 (PIL + model)",
                        f"{fp32['baseline']:.2f} images/s",
                        best / fp32["baseline"],
                    )  # fmt: skip
                )
    header = ["crops, precision", "one at a time (images/s)", "score.py job (images/s)", "speed-up",
              "vs fp32 one at a time", "max |score - fp32 score|"]  # fmt: skip
    text = (
        f"### Scoring {plan.num_images} JPEGs of {plan.width}x{plan.height} with vit_tiny_patch16_224 on the CPU "
        f"({torch.get_num_threads()} torch threads, {plan.num_workers} decoding workers, batches of "
        f"{plan.batch_size} crops, best of {plan.repeats})\n\n{markdown_table(header, rows)}\n\n"
        "In each row both ways give the same scores (1e-4); the last column is what bf16 changes."
    )
    return Report(text, tuple(summary))


def _measure(run_dir: Path, paths: list[Path], out: Path, plan: ScorePlan, case: tuple[str, int, str]) -> dict:
    from dist_syndr.scoring.scorer import Scorer

    mode, crops, precision = case
    scorer = Scorer.load(run_dir, "cpu", crops=crops, crop_mode=mode, batch_size=plan.batch_size, precision=precision)
    one_at_a_time(scorer, paths[:2])  # first-use costs outside the timing
    times: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(plan.repeats):
        started = time.perf_counter()
        expected = one_at_a_time(scorer, paths)
        times["baseline"].append(time.perf_counter() - started)
        started = time.perf_counter()
        actual = ours(scorer, paths, out, plan)
        times["ours"].append(time.perf_counter() - started)
    tolerance = 1e-4 if precision == "fp32" else 5e-2  # bf16: batch composition moves the last bits more
    if not np.allclose(actual, expected, atol=tolerance):
        raise RuntimeError(f"{case}: the scoring job and the loop disagree by {np.abs(actual - expected).max()}")
    return {"baseline": len(paths) / min(times["baseline"]), "ours": len(paths) / min(times["ours"]), "scores": actual}
