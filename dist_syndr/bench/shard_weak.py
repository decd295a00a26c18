"""``bench.py shard``'s weak-labelled engine case: a new distortion pool built at pool scale, and its labels' evidence.

The case: ``num_contents`` pristine photo crops x 5 types x 5 levels at 512x384,
``pool.labels: weak``. Baseline: the per-image path as it ran before engine
batches -- one image distorted (``images.distort_array``), then SSIM, MS-SSIM,
GMSD, VIF and FSIM from piq on it -- in one process on one thread, over the first
``baseline_contents`` contents; its rate doubled stands for two cores. Ours, in
the same run on the same pool: the sharding step (plan, engine batches, tars,
index) with 1 and 2 workers, the step's per-image path (``images_per_engine_batch=0``,
2 workers) whose bytes the batched step must repeat, and a GPU row where one is
visible. Every case runs ``repeats`` times in interleaved rounds and keeps its
best rate (shared cores are noisy). The projection for a 700k-image pool divides by the measured rates
only (CPU core-hours, and GPU-hours only where a GPU was measured).

The metric table gives each metric's cost per image at the case's size (ours
with the reference's side done once for its 25 images, and piq's own function)
and how well each metric, the chosen ensemble and the former five rank
KADID-10k's 125 (type, level) cells like the human means (the fixture
``../shared/fixtures/kadid10k/dmos.csv``; skipped, saying so, where absent) on
the embedded photographs at ``agreement_size``.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr import imaging, runtime
from dist_syndr.bench.harness import SummaryRow, markdown_table

POOL_IMAGES = 700_000
DMOS_CSV = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures" / "kadid10k" / "dmos.csv"
FORMER_ENSEMBLE = ("ssim", "ms_ssim", "gmsd", "vif", "fsim")


@dataclass(frozen=True)
class WeakPlan:
    """Sizes of the weak-labelled engine case and of the agreement measurement."""

    num_contents: int = 12
    width: int = 512
    height: int = 384
    types: tuple[int, ...] = (1, 3, 10, 11, 16)
    baseline_contents: int = 3
    agreement_size: tuple[int, int] = (256, 192)
    agreement_photos: int = 8
    repeats: int = 3

    @staticmethod
    def quick() -> WeakPlan:
        return WeakPlan(
            num_contents=2,
            width=192,
            height=176,
            baseline_contents=1,
            agreement_size=(128, 96),
            agreement_photos=2,
            repeats=1,
        )


def run(plan: WeakPlan) -> tuple[str, list[SummaryRow]]:
    """The Markdown sections and the summary row of the case."""
    with tempfile.TemporaryDirectory(prefix="bench-shard-weak-") as scratch:
        root = Path(scratch)
        pristine = _pristine(root / "pristine", plan)
        cases = _time_cases(pristine, root, plan)
    costs = _metric_costs(plan)
    sections = [
        f"### Weak-labelled engine pool: {plan.num_contents} contents x types {list(plan.types)} x 5 levels at "
        f"{plan.width}x{plan.height} (distort + weak labels + encode + write)\n\n{_case_table(cases)}",
        f"### Projection: a {POOL_IMAGES:,}-image weak-labelled pool from the rates above\n\n{_projection(cases)}",
        _metric_section(plan, costs),
    ]
    baseline, batched = cases["baseline"], cases["batched, 2 workers"]
    row = SummaryRow(
        "shard",
        "weak-labelled engine pool, batched step, 2 workers",
        f"{batched['rate']:.1f} images/s",
        "per-image path: distort + 5 piq metrics, 1 process, x2 cores",
        f"{2 * baseline['rate']:.1f} images/s",
        batched["rate"] / (2 * baseline["rate"]),
    )
    return "\n\n".join(sections), [row]


def _pristine(folder: Path, plan: WeakPlan) -> Path:
    from PIL import Image

    from dist_syndr.pools.embedded import photo_crops

    folder.mkdir(parents=True)
    for number, crop in enumerate(photo_crops(np.random.default_rng(2), plan.num_contents, plan.width, plan.height)):
        Image.fromarray(crop).save(folder / f"content{number:02d}.png")
    return folder


def _step_config(pristine: Path, plan: WeakPlan):
    from dist_syndr import config

    overrides = [
        "shard.pool.kind=folder",
        f"shard.pool.root={pristine}",
        "shard.pool.distort=true",
        "shard.pool.labels=weak",
        f"shard.pool.types={list(plan.types)}",
        "shard.samples_per_shard=100",
    ]
    return config.load(None, overrides)


def _time_cases(pristine: Path, root: Path, plan: WeakPlan) -> dict[str, dict]:
    """Every case ``plan.repeats`` times, in rounds (noise on shared cores hits them all alike); the best of each."""
    from dist_syndr.sharding import plan as shard_plan
    from dist_syndr.sharding import writer

    cfg = _step_config(pristine, plan)
    items = shard_plan.build_plan(cfg).items
    baseline_items = items[: plan.baseline_contents * len(plan.types) * 5]
    _per_image_piq(baseline_items[:2])  # imports and first-use costs outside the timings
    runs = [("per-image path, 2 workers", "cpu", 2, 0), ("batched, 1 worker", "cpu", 1, 128)]
    runs += [("batched, 2 workers", "cpu", 2, 128)]
    if runtime.has_cuda():
        runs.append(("batched, GPU + 2 encoding workers", "cuda", 2, 128))
    cases: dict[str, dict] = {}
    for round_number in range(plan.repeats):
        _keep_best(cases, "baseline", _rate(len(baseline_items), _per_image_piq, baseline_items))
        for name, device, workers, batch in runs:
            out = root / f"{name.replace(' ', '-').replace(',', '')}-{round_number}"
            options = writer.WriteOptions(
                samples_per_shard=100, num_workers=workers, device=device, images_per_engine_batch=batch
            )
            timed = _rate(len(items), shard_plan.run_shard_step, cfg, out, options)
            _keep_best(cases, name, timed | {"workers": workers, "device": device, "files": _files(out)})
    reference = cases["per-image path, 2 workers"]["files"]
    for case in cases.values():
        if "files" in case:
            case["same"] = case["files"] == reference if case["device"] == "cpu" else None
    return cases


def _keep_best(cases: dict[str, dict], name: str, timed: dict) -> None:
    if name not in cases or timed["rate"] > cases[name]["rate"]:
        cases[name] = timed


def _rate(count: int, function, *args) -> dict:
    started = time.perf_counter()
    function(*args)
    seconds = time.perf_counter() - started
    return {"rate": count / seconds, "seconds": seconds, "count": count}


def _files(folder: Path) -> dict[str, str]:
    from dist_syndr import files
    from dist_syndr.sharding.shard_set import LOCK_NAME

    return {p.name: files.sha256_file(p) for p in sorted(folder.iterdir()) if p.name != LOCK_NAME}  # not the job


def _per_image_piq(items) -> None:
    """The baseline: each image distorted alone, then the five piq metrics on it, one thread."""
    import piq
    import torch

    from dist_syndr.pools import images

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    references: dict[str, np.ndarray] = {}
    try:
        with torch.inference_mode():
            for item in items:
                if item.ref_path not in references:
                    references.clear()
                    references[item.ref_path] = imaging.decode(
                        images.read_bytes(Path(item.ref_path)), name=item.ref_path
                    )
                reference = references[item.ref_path]
                pixels = images.distort_array(reference, item.meta["type"], item.meta["level"], item.seed)
                x = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255.0
                y = torch.from_numpy(np.array(reference)).permute(2, 0, 1)[None].float() / 255.0  # a writable copy
                for function in (piq.ssim, piq.multi_scale_ssim, piq.gmsd, piq.vif_p, piq.fsim):
                    function(x, y, data_range=1.0)
    finally:
        torch.set_num_threads(previous)


def _case_table(cases: dict[str, dict]) -> str:
    baseline = cases["baseline"]
    two_cores = 2 * baseline["rate"]
    rows = [
        [
            "baseline: per-image path, distort + SSIM, MS-SSIM, GMSD, VIF, FSIM (piq), 1 process",
            f"{baseline['rate']:.2f} (x2 cores: {two_cores:.2f})",
            f"{baseline['rate']:.2f}",
            "1.00x (2 cores)",
            "-",
        ]
    ]
    for name, case in cases.items():
        if name == "baseline":
            continue
        cores = case["workers"] if case["device"] == "cpu" else 0
        per_core = f"{case['rate'] / cores:.2f}" if cores else "- (GPU)"
        ratio = f"{case['rate'] / (cores * baseline['rate'] if cores else two_cores):.2f}x"
        same = {True: "yes", False: "NO", None: "- (GPU rounding)"}[case["same"]]
        same = "(the reference)" if name == "per-image path, 2 workers" else same
        rows.append([f"ours: sharding step, {name}", f"{case['rate']:.2f}", per_core, ratio, same])
    header = ["path", "images/s", "images/s per core", "vs baseline on as many cores", "same tars and index"]
    return markdown_table(header, rows) + (
        "\n\nBest of the rounds for every row; the baseline over its first contents' items only (the same "
        "types and levels); 'same' compares every file of the set with the step's per-image path's."
    )


def _projection(cases: dict[str, dict]) -> str:
    rows = [["baseline: per-image path, piq", f"{POOL_IMAGES / cases['baseline']['rate'] / 3600:.1f} CPU core-hours"]]
    for name in ("batched, 1 worker", "batched, 2 workers"):
        case = cases[name]
        per_core = case["rate"] / case["workers"]
        rows.append([f"ours: sharding step, {name}", f"{POOL_IMAGES / per_core / 3600:.1f} CPU core-hours"])
    gpu = [name for name, case in cases.items() if case.get("device") == "cuda"]
    for name in gpu:
        rows.append([f"ours: sharding step, {name}", f"{POOL_IMAGES / cases[name]['rate'] / 3600:.2f} GPU-hours"])
    if not gpu:
        rows.append(["ours: sharding step on a GPU", "not measured (no GPU visible in this run)"])
    return markdown_table(["path", f"{POOL_IMAGES:,} images"], rows)


def _metric_costs(plan: WeakPlan) -> dict:
    from dist_syndr.pools import images, weak_agreement
    from dist_syndr.pools.embedded import photo_crops

    reference = photo_crops(np.random.default_rng(4), 1, plan.width, plan.height)[0]
    distorted = [images.distort_array(reference, t, v, 10 * t + v) for t in plan.types for v in range(1, 6)]
    costs = weak_agreement.metric_costs(reference, distorted)
    result = {"costs": costs, "agreement": None}
    if DMOS_CSV.is_file():
        human = weak_agreement.kadid_cell_means(DMOS_CSV)
        photos = weak_agreement.photographs(
            *plan.agreement_size, weak_agreement.AGREEMENT_PHOTOS[: plan.agreement_photos]
        )
        result["agreement"] = (weak_agreement.engine_cell_qualities(photos), human)
    return result


def _metric_section(plan: WeakPlan, measured: dict) -> str:
    from dist_syndr.pools import fr_metrics, weak_agreement, weak_labels

    costs, agreement = measured["costs"], measured["agreement"]
    width, height = plan.agreement_size
    where = (
        f"on {plan.agreement_photos} embedded photographs at {width}x{height}"
        if agreement
        else f"not measured: the KADID-10k fixture {DMOS_CSV} is absent"
    )

    def srcc(metrics: tuple[str, ...]) -> str:
        if agreement is None or any(m not in agreement[0] for m in metrics):
            return "-"
        return f"{weak_agreement.rank_agreement(agreement[0], agreement[1], metrics):.3f}"

    rows = [
        [name, f"{costs[name]['ours_ms']:.1f}", f"{costs[name]['piq_ms']:.1f}", srcc((name,))]
        for name in fr_metrics.METRICS
    ]
    for label, metrics in (("chosen ensemble", weak_labels.ENSEMBLE), ("former ensemble", FORMER_ENSEMBLE)):
        ours = sum(costs[m]["ours_ms"] for m in metrics)
        theirs = sum(costs[m]["piq_ms"] for m in metrics)
        rows.append([f"{label}: {' + '.join(metrics)}", f"{ours:.1f}", f"{theirs:.1f}", srcc(metrics)])
    header = [
        "metric",
        f"ours, ms/image ({plan.width}x{plan.height})",
        "piq, ms/image",
        "Spearman with KADID-10k cell means",
    ]
    return (
        f"### Weak-label metrics: cost per image (1 CPU thread) and agreement with human cell means ({where})"
        f"\n\n{markdown_table(header, rows)}\n\nOurs: the reference's side once for its {len(plan.types) * 5} images, "
        "its cost shared out; SSIM is nearly free beside MS-SSIM (one of its scales) but timed alone here."
    )
