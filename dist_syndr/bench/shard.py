"""``bench.py shard``: sharding throughput against a naive PIL + tarfile writer, and the distortion engine.

Baseline ("naive"): one process, PIL decodes each source image, saves it as PNG
at PIL's default level 6 and appends it to a ``tarfile`` archive. Ours: the
sharding step with 1 and 2 worker processes (PNG level 1, fixed tar headers,
sidecars and checksums included). Both run on the same generated pool of
512x384 BMP crops of scikit-image's photographs, in the same benchmark run;
ratios are ours / naive.
The engine table gives distortion images/s per KADID type at 512x384.
The weak-labelled engine case, its 700k-image projection and the weak-label
metrics' costs and agreement come from :mod:`dist_syndr.bench.shard_weak`.
"""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dist_syndr import runtime
from dist_syndr.bench import shard_weak
from dist_syndr.bench.harness import Report, SummaryRow, markdown_table
from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS
from dist_syndr.pools.embedded import photo_crops


@dataclass(frozen=True)
class ShardPlan:
    """Pool size and image size for the benchmark."""

    num_images: int = 240
    width: int = 512
    height: int = 384
    engine_images_per_type: int = 8
    engine_references: int = 6
    weak: shard_weak.WeakPlan = field(default_factory=shard_weak.WeakPlan)

    @staticmethod
    def quick() -> ShardPlan:
        return ShardPlan(
            num_images=24,
            width=128,
            height=96,
            engine_images_per_type=2,
            engine_references=2,
            weak=shard_weak.WeakPlan.quick(),
        )


def make_pool(folder: Path, plan: ShardPlan) -> list[Path]:
    """``plan.num_images`` BMP photo crops (the format of on-disk distortion pools such as kadid_add81)."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i, crop in enumerate(photo_crops(rng, plan.num_images, plan.width, plan.height)):
        path = folder / f"pool{i:05d}.bmp"
        Image.fromarray(crop).save(path)
        paths.append(path)
    return paths


def naive_write(paths: list[Path], target: Path) -> None:
    """The baseline: PIL decode, PNG at the default level, ``tarfile`` append, one process."""
    from PIL import Image

    with tarfile.open(target, "w") as archive:
        for path in paths:
            buffer = io.BytesIO()
            Image.open(path).convert("RGB").save(buffer, format="PNG")
            info = tarfile.TarInfo(f"{path.stem}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)


def ours_write(paths: list[Path], target: Path, workers: int) -> None:
    """The sharding step's writer on the same files."""
    from dist_syndr.sharding import writer

    items = [writer.WorkItem(key=f"bench/{p.stem}", source_path=str(p), score=5.0) for p in paths]
    options = writer.WriteOptions(samples_per_shard=max(1, len(paths) // (4 * workers)), num_workers=workers)
    writer.write_shard_set(items, target, options, {"bench": True})


ENGINE_TYPES = (1, 3, 10, 11, 16, 21)
"""A mix of cheap and costly distortions for the engine-pool comparison."""


def engine_items(references: list[Path]):
    """Work items distorting every reference with ``ENGINE_TYPES`` at 5 levels."""
    from dist_syndr.sharding import writer

    items = []
    for reference in references:
        for distortion_type in ENGINE_TYPES:
            for level in range(1, 6):
                key = f"bench/{reference.stem}_{distortion_type:02d}_{level:02d}"
                meta = {
                    "ref": f"bench/{reference.stem}",
                    "type": distortion_type,
                    "level": level,
                    "origin": "distorted",
                }
                items.append(
                    writer.WorkItem(
                        key=key, ref_path=str(reference), is_engine=True, seed=writer.item_seed(0, key), meta=meta
                    )
                )
    return items


def naive_engine_write(references: list[Path], target: Path) -> None:
    """The baseline with distortion: engine, then PIL PNG level 6 and ``tarfile``, one process."""
    from PIL import Image

    from dist_syndr.pools import images

    with tarfile.open(target, "w") as archive:
        for item in engine_items(references):
            reference = np.asarray(Image.open(item.ref_path).convert("RGB"))
            pixels = images.distort_array(reference, item.meta["type"], item.meta["level"], item.seed)
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, format="PNG")
            info = tarfile.TarInfo(f"{item.key}.png")
            info.size = buffer.tell()
            buffer.seek(0)
            archive.addfile(info, buffer)


def ours_engine_write(references: list[Path], target: Path, workers: int) -> None:
    """The sharding step on the same engine work."""
    from dist_syndr.sharding import writer

    items = engine_items(references)
    options = writer.WriteOptions(samples_per_shard=len(ENGINE_TYPES) * 5, num_workers=workers)
    writer.write_shard_set(items, target, options, {"bench": True})


def _timed(function, *args) -> float:
    started = time.perf_counter()
    function(*args)
    return time.perf_counter() - started


def run(plan: ShardPlan) -> Report:
    """Measure both writers and the engine; the Markdown report and one summary row per sharding case."""
    with tempfile.TemporaryDirectory(prefix="bench-shard-") as scratch:
        root = Path(scratch)
        paths = make_pool(root / "pool", plan)
        ours_write(paths[:4], root / "warm", 1)  # imports and first-use costs outside the timing
        file_times = [_timed(naive_write, paths, root / "naive.tar")]
        file_times += [_timed(ours_write, paths, root / f"ours{w}", w) for w in (1, 2)]
        references = paths[: plan.engine_references]
        engine_times = [_timed(naive_engine_write, references, root / "naive-engine.tar")]
        engine_times += [_timed(ours_engine_write, references, root / f"engine{w}", w) for w in (1, 2)]
    num_engine_images = len(references) * len(ENGINE_TYPES) * 5
    file_pool = f"{len(paths)} BMP photo crops of {plan.width}x{plan.height} (encode + write)"
    engine_pool = f"{len(references)} references x types {list(ENGINE_TYPES)} x 5 levels (distort + encode + write)"
    sections = [
        f"### Sharding an on-disk pool: {file_pool}\n\n{_writer_table(len(paths), file_times)}",
        f"### Sharding with the distortion engine: {engine_pool}\n\n{_writer_table(num_engine_images, engine_times)}",
        f"### Distortion engine alone (CPU, {plan.width}x{plan.height}, batches of {plan.engine_images_per_type})"
        f"\n\n{engine_table(plan)}",
    ]
    rows = _summary_rows("on-disk pool", len(paths), file_times) + _summary_rows(
        "distortion engine pool", num_engine_images, engine_times
    )
    weak_sections, weak_rows = shard_weak.run(plan.weak)
    return Report("\n\n".join([*sections, weak_sections]), tuple(rows + weak_rows))


def _summary_rows(pool: str, count: int, times: list[float]) -> list[SummaryRow]:
    naive = times[0]
    baseline = "naive: PIL PNG level 6 + tarfile, 1 process"
    rows = []
    for workers, seconds in zip((1, 2), times[1:], strict=False):
        case = f"{pool}, sharding step, {workers} worker" + ("s" if workers > 1 else "")
        rows.append(
            SummaryRow(
                "shard",
                case,
                f"{count / seconds:.1f} images/s",
                baseline,
                f"{count / naive:.1f} images/s",
                naive / seconds,
            )
        )
    return rows


def _writer_table(count: int, times: list[float]) -> str:
    naive, one, two = times
    rows = [
        ["naive: PIL PNG level 6 + tarfile, 1 process", f"{count / naive:.1f}", "1.00x (baseline)"],
        ["ours: sharding step, 1 worker", f"{count / one:.1f}", f"{naive / one:.2f}x naive"],
        [
            "ours: sharding step, 2 workers",
            f"{count / two:.1f}",
            f"{naive / two:.2f}x naive, {one / two:.2f}x 1 worker",
        ],
    ]
    return markdown_table(["writer", "images/s", "ratio"], rows)


def engine_table(plan: ShardPlan) -> str:
    """Images/s of every KADID type at 5 levels, batched, on the machine's default device."""
    import torch

    from dist_syndr.pools import distortions

    rng = np.random.default_rng(1)
    batch = np.stack(photo_crops(rng, plan.engine_images_per_type, plan.width, plan.height))
    images = torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous()
    images = images.to(runtime.torch_device())
    seeds = list(range(images.shape[0]))
    rows = []
    for distortion_type in range(1, NUM_DISTORTION_TYPES + 1):
        distortions.distort(images[:1], distortion_type, 3, seeds[:1])  # warm-up
        started = time.perf_counter()
        for level in range(1, NUM_LEVELS + 1):
            distortions.distort(images, distortion_type, level, seeds)
        runtime.synchronize(images.device)
        per_second = images.shape[0] * NUM_LEVELS / (time.perf_counter() - started)
        rows.append([str(distortion_type), distortions.TYPE_NAMES[distortion_type], f"{per_second:.1f}"])
    return markdown_table(["type", "name", "images/s"], rows)
