"""``bench.py score``: the scoring job against a one-image-at-a-time PIL + model loop, same model, same crops.

A folder of 512x384 JPEGs (crops of scikit-image's photographs) is scored twice
with a randomly initialised model (``vit_tiny_patch16_224`` at 224 pixels on the
CPU; :meth:`ScorePlan.gpu`: ``vit_base_patch16_224`` on the GPU, both ways on the device):

- baseline: how a per-image command-line tool scores a folder: for each file,
  PIL decode, the crops, one forward pass of that image's crops, the mean;
- ours: :func:`dist_syndr.scoring.job.run_job` (what ``launchers/score.py``
  runs, with its default decoding workers: none on a CPU): crops of many
  images in full batches, rows appended as they finish; in fp32 and bf16,
  eager and compiled (``--compile on``).

Both use the same crop protocol and give the same scores (checked to 1e-4 in
fp32 eager); ``images/s`` excludes model loading and compiling, which the
report gives apart with the number of images after which compiling pays back.
One row per crop protocol, precision and compile setting.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dist_syndr import runtime
from dist_syndr.bench.harness import Report, SummaryRow, markdown_table


@dataclass(frozen=True)
class ScorePlan:
    """Folder and scoring settings."""

    num_images: int = 64
    width: int = 512
    height: int = 384
    crop: int = 224
    protocols: tuple[tuple[str, int], ...] = (("centre", 1), ("random", 5))
    # (precision, compiled); bf16 only where the CPU has bf16 matrix instructions
    cases: tuple[tuple[str, bool], ...] = (("fp32", False), ("bf16", False), ("bf16", True))
    batch_size: int = 64
    num_workers: int | None = None  # decoding processes (None: the job's default)
    repeats: int = 3
    model: str = "vit_tiny_patch16_224"
    device: Literal["cpu", "cuda"] = "cpu"  # where both the loop and the job run

    @staticmethod
    def quick() -> ScorePlan:
        return ScorePlan(
            num_images=12, width=320, height=256, crop=64, protocols=(("centre", 1),),
            cases=(("fp32", False), ("fp32", True)), batch_size=8, repeats=1,
        )  # fmt: skip

    @staticmethod
    def gpu() -> ScorePlan:
        """On the GPU: ViT-B/16, 192 JPEGs, fp32 and bf16 eager (compiling costs a minute a model; the gpu
        tests check the compiled job), best of 2. The GPU kit's ``score`` stage budgets it from this plan."""
        return ScorePlan(
            num_images=192, cases=(("fp32", False), ("bf16", False)), repeats=2, model="vit_base_patch16_224",
            device="cuda",
        )  # fmt: skip

    @staticmethod
    def for_this_machine() -> ScorePlan:
        """:meth:`gpu` where CUDA is visible, the CPU plan elsewhere."""
        return ScorePlan.gpu() if runtime.has_cuda() else ScorePlan()


def make_run(folder: Path, plan: ScorePlan) -> tuple[Path, list[Path]]:
    """A run folder with random-init weights and a config, and the folder of JPEGs; returns both."""
    from PIL import Image

    from dist_syndr import config
    from dist_syndr.features.model import build_model
    from dist_syndr.pools.embedded import photo_crops
    from dist_syndr.runs.weights import save_state_dict

    overrides = [f"model.backbone={plan.model}", "model.is_random_init=true", f"model.image_size={plan.crop}"]
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
    """The baseline loop: decode, crop and score each file alone (in the scorer's precision, on its device)."""
    from PIL import Image

    from dist_syndr.features.precision import autocast
    from dist_syndr.features.preprocess import normalise

    scores = []
    for path in paths:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"))
        windows, _ = scorer.protocol.windows(pixels)
        crops = torch.from_numpy(np.stack([normalise(window) for window in windows])).to(scorer.device)
        with torch.no_grad(), autocast(scorer.device, scorer.precision):
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
    """Measure both ways for each crop protocol and case; the Markdown report and one summary row per case."""
    cases = [case for case in plan.cases if case[0] == "fp32" or plan.device == "cuda" or runtime.has_fast_bf16("cpu")]
    rows, summary = [], []
    with tempfile.TemporaryDirectory(prefix="bench-score-") as scratch:
        run_dir, paths = make_run(Path(scratch), plan)
        for mode, crops in plan.protocols:
            measured = {case: _measure(run_dir, paths, Path(scratch) / "scores.csv", plan, (mode, crops, *case))
                        for case in cases}  # fmt: skip
            fp32 = measured[cases[0]]
            for (precision, compiled), result in measured.items():
                eager = measured.get((precision, False), result)
                case = f"{crops} {mode} crop{'s' if crops > 1 else ''} of {plan.crop}, {precision}" + (
                    ", compiled" if compiled else ""
                )
                rows.append(_row(case, result, fp32, eager))
                summary.append(
                    SummaryRow(
                        "score",
                        f"score.py, {case}",
                        f"{result['ours']:.2f} images/s",
                        "one image at a time, fp32 (PIL + model)" + (" on the GPU" if plan.device == "cuda" else ""),
                        f"{fp32['baseline']:.2f} images/s",
                        result["ours"] / fp32["baseline"],
                    )
                )
    header = ["crops, precision", "one at a time (images/s)", "score.py job (images/s)", "speed-up",
              "vs fp32 one at a time", "max |score - fp32 score|", "compiling (s)",
              "pays back after (images)"]  # fmt: skip
    text = (
        f"### Scoring {plan.num_images} JPEGs of {plan.width}x{plan.height} with {plan.model} on {_where(plan)} "
        f"({_workers(plan)} decoding workers, batches of "
        f"{plan.batch_size} crops, best of {plan.repeats})\n\n{markdown_table(header, rows)}\n\n"
        "One at a time runs eager in the row's precision; the job's images/s exclude compiling, which the last "
        "two columns give: the seconds once per job and the images after which the compiled job is ahead of the "
        "eager one. Both ways agree to 1e-4 in fp32 eager; the sixth column is what bf16 and compiling change."
    )
    return Report(text, tuple(summary))


def _row(case: str, result: dict, fp32: dict, eager: dict) -> list[str]:
    baseline, best = result["baseline"], result["ours"]
    difference = float(np.abs(result["scores"] - fp32["scores"]).max())
    compile_s, pays_back = "", ""
    if result["compile_s"] is not None:
        compile_s = f"{result['compile_s']:.1f}"
        saved_per_image = 1 / eager["ours"] - 1 / best
        pays_back = f"{result['compile_s'] / saved_per_image:,.0f}" if saved_per_image > 0 else "never"
    return [case, f"{baseline:.2f}", f"{best:.2f}", f"{best / baseline:.2f}x", f"{best / fp32['baseline']:.2f}x",
            f"{difference:.2g}", compile_s, pays_back]  # fmt: skip


def _workers(plan: ScorePlan) -> int:
    from dist_syndr.scoring.job import decoding_workers

    return decoding_workers(torch.device(plan.device)) if plan.num_workers is None else plan.num_workers


def _where(plan: ScorePlan) -> str:
    if plan.device == "cuda":
        return runtime.device_name(runtime.torch_device()) + ", both ways"
    return f"the CPU, {torch.get_num_threads()} torch threads"


def _measure(run_dir: Path, paths: list[Path], out: Path, plan: ScorePlan, case: tuple) -> dict:
    from dist_syndr.scoring.scorer import Scorer

    mode, crops, precision, compiled = case
    scorer = Scorer.load(
        run_dir, plan.device, crops=crops, crop_mode=mode, batch_size=plan.batch_size, precision=precision
    )
    one_at_a_time(scorer, paths[:2])  # first-use costs outside the timing
    if compiled:
        scorer.compile()
        ours(scorer, paths[:2], out, plan)  # compiles
    times: dict[str, list[float]] = {"baseline": [], "ours": []}
    for _ in range(plan.repeats):
        started = time.perf_counter()
        expected = one_at_a_time(scorer, paths)
        times["baseline"].append(time.perf_counter() - started)
        started = time.perf_counter()
        actual = ours(scorer, paths, out, plan)
        times["ours"].append(time.perf_counter() - started)
    # bf16: batch composition moves the last bits; fp32 on a GPU: cuDNN's default TF32 convolutions (the patch
    # embedding) pick kernels by batch size.
    tolerance = (2e-3 if plan.device == "cuda" else 1e-4) if precision == "fp32" and not compiled else 5e-2
    if not np.allclose(actual, expected, atol=tolerance):
        raise RuntimeError(f"{case}: the scoring job and the loop disagree by {np.abs(actual - expected).max()}")
    return {
        "baseline": len(paths) / min(times["baseline"]),
        "ours": len(paths) / min(times["ours"]),
        "scores": actual,
        "compile_s": scorer.compiled.compile_seconds if compiled else None,
    }
