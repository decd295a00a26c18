"""``bench.py loader``: our planned DALI pipeline and torch fallback against plain webdataset + PIL.

All three read the same shard set (crops, 512x384 by default, of scikit-image's
photographs, written by the sharding step) with the same batch size and the
same number of worker processes, one random crop per image, ImageNet
normalisation, float32 NCHW out. Three image formats are measured: two kinds
of PNG, because PIL's decoder is much slower on adaptively filtered PNGs (as
datasets ship them, kept byte for byte by the sharding step) than on the libpng
level-1 PNGs the sharding step writes itself (from BMP pools and the distortion
engine), and the LZ4 pixel bands of ``shard.image_format: lz4``, which a GPU
inflates without decoding (on the CPU the source workers inflate them):

- baseline: ``webdataset.WebDataset`` over the tars (each worker reads whole
  shards front to back), PIL decode (LZ4 members: ``imaging.decode``), numpy
  random crop, torch ``DataLoader``;
- ours, torch: :class:`~dist_syndr.loader.torch_loader.TorchLoader` over the
  epoch plan (members read by offset, hashed anchors);
- ours, DALI: :class:`~dist_syndr.loader.dali_pipeline.DaliLoader` over the same
  plan, on the CPU and, where a GPU is visible, with the mixed decoder (LZ4
  members: inflated on the GPU).

A last table (:mod:`dist_syndr.bench.member_formats`) sets the formats side by side:
bytes per image, one thread's decode time, the DALI loaders' images/s, and the same
figures for lossless JPEG 2000, the other lossless format a GPU decodes.

The consumer sleeps ``step_ms`` per batch, standing in for a training step
that does not use the CPU. ``images/s`` counts every image after the first
batch (start-up is its own column); ``consumer wait`` is the share of that
time spent blocked on the next batch. Each case runs ``repeats`` times,
alternating, and the best run is kept; ratios are against the baseline.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr.bench import member_formats
from dist_syndr.bench.harness import Report, SummaryRow, markdown_table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoaderPlan:
    """Shard set and loader settings of the benchmark."""

    num_images: int = 200
    width: int = 512
    height: int = 384
    samples_per_shard: int = 50
    batch_size: int = 32
    num_workers: int = 2
    epochs: int = 2
    step_ms: float = 5.0
    repeats: int = 3
    encodings: tuple[str, ...] = ("dataset", "sharded", "lz4")

    @staticmethod
    def quick() -> LoaderPlan:
        """A smoke-run plan that finishes in seconds."""
        return LoaderPlan(
            num_images=48,
            width=320,
            height=256,
            samples_per_shard=12,
            batch_size=8,
            repeats=1,
            encodings=("sharded", "lz4"),
        )


@dataclass(frozen=True)
class LoaderRun:
    """One measured run of one loader."""

    images: int
    seconds: float  # after the first batch
    wait_seconds: float  # of those, blocked on the next batch
    first_batch_seconds: float

    @property
    def images_per_second(self) -> float:
        """Images delivered per second after the first batch."""
        return self.images / self.seconds

    @property
    def wait_share(self) -> float:
        """Share of that time the consumer spent blocked on the next batch."""
        return self.wait_seconds / self.seconds


VERIFIED_TORCH = "ours: torch DataLoader over the plan, member checksums checked"
VERIFIED_DALI = "ours: DALI over the plan, CPU, member checksums checked"
VERIFICATION_PAIRS = {  # checked case -> the same loader unchecked
    VERIFIED_TORCH: "ours: torch DataLoader over the plan",
    VERIFIED_DALI: "ours: DALI over the plan, CPU",
}

ENCODINGS = {
    "dataset": "PNG as datasets ship them (PIL, level 6, adaptive filters), stored as is",
    "sharded": "PNG re-encoded by the sharding step from BMP (libpng, level 1)",
    "lz4": "LZ4 pixel bands written by the sharding step from BMP (shard.image_format: lz4)",
}
LABELS = {"dataset": "dataset PNG", "sharded": "sharded PNG", "lz4": "LZ4 pixels"}


def run(plan: LoaderPlan) -> Report:
    """Measure every loader on each kind of shard set; the Markdown report and one summary row per loader."""
    sections, summary, stats, bests = [], [], {}, {}
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as scratch:
        for encoding in plan.encodings:
            shard_root = make_shard_set(Path(scratch) / encoding, plan, encoding)
            best = bests[encoding] = _measure(shard_root, plan, encoding)
            stats[encoding] = member_formats.member_stats(shard_root)
            table = markdown_table(
                ["loader", "images/s", "consumer wait", "first batch (s)", "vs baseline"], _rows(best)
            )
            summary += _summary_rows(best, encoding)
            share = f"{100 * checksum_share(shard_root):.2f}%"
            cost = f"{verification_cost(best)} CPU time of the checksums against decoding the same members: {share}."
            sections.append(f"#### {ENCODINGS[encoding]}\n\n{table}\n\n{cost}")
        pool = Path(scratch) / next((e for e in plan.encodings if e != "dataset"), plan.encodings[0]) / "pool"
        num_jpeg2000 = min(member_formats.JPEG2000_SAMPLE, plan.num_images)
        stats["jpeg2000"] = member_formats.jpeg2000_stats(pool, num_jpeg2000)
    summary += member_formats.summary_rows(bests)
    table = member_formats.format_table(stats, bests, num_jpeg2000=num_jpeg2000)
    sections.append(f"#### Image member formats side by side (same crops, same run)\n\n{table}")
    setting = (
        f"{plan.num_images} photo crops of {plan.width}x{plan.height}, {plan.epochs} epochs, batch {plan.batch_size},"
        f" {plan.num_workers} workers each, one random 224x224 crop, consumer step {plan.step_ms:g} ms,"
        f" best of {plan.repeats}"
    )
    return Report(f"### Input pipeline ({setting})\n\n" + "\n\n".join(sections), tuple(summary))


def _summary_rows(best: dict[str, LoaderRun], encoding: str) -> list[SummaryRow]:
    (baseline_name, baseline), *cases = best.items()
    return [
        SummaryRow(
            "loader",
            f"{name.removeprefix('ours: ')} ({LABELS[encoding]})",
            f"{result.images_per_second:.1f} images/s",
            baseline_name.removeprefix("baseline: "),
            f"{baseline.images_per_second:.1f} images/s",
            result.images_per_second / baseline.images_per_second,
        )
        for name, result in cases
    ]


def _measure(shard_root: Path, plan: LoaderPlan, encoding: str) -> dict[str, LoaderRun]:
    """The best run of each loader, the baseline first."""
    from dist_syndr import runtime

    decoder = "LZ4 inflate" if encoding == "lz4" else "PIL"
    cases = {f"baseline: webdataset + {decoder}, torch DataLoader": lambda: _baseline(shard_root, plan)}
    cases["ours: torch DataLoader over the plan"] = lambda: _ours(shard_root, plan, "torch")
    cases[VERIFIED_TORCH] = lambda: _ours(shard_root, plan, "torch", verify="members")
    cases["ours: DALI over the plan, CPU"] = lambda: _ours(shard_root, plan, "cpu")
    cases[VERIFIED_DALI] = lambda: _ours(shard_root, plan, "cpu", verify="members")
    if runtime.dali_mode("auto") == "gpu":
        on_gpu = "LZ4 inflated on the GPU" if encoding == "lz4" else "mixed decoder"
        cases[f"ours: DALI over the plan, GPU ({on_gpu})"] = lambda: _ours(shard_root, plan, "gpu")
    best: dict[str, LoaderRun] = {}
    for repeat in range(plan.repeats):
        # Alternating the order spreads slow moments of a shared machine over all cases.
        for name, measure in cases.items() if repeat % 2 == 0 else reversed(cases.items()):
            result = measure()
            log.info("%s: %.1f images/s, wait %.0f%%", name, result.images_per_second, 100 * result.wait_share)
            if name not in best or result.images_per_second > best[name].images_per_second:
                best[name] = result
    return best


def verification_cost(best: dict[str, LoaderRun]) -> str:
    """The throughput lost to member checksums, each checked loader against itself unchecked (same run)."""
    costs = []
    for checked, unchecked in VERIFICATION_PAIRS.items():
        if checked in best and unchecked in best:
            loss = 1.0 - best[checked].images_per_second / best[unchecked].images_per_second
            costs.append(f"{unchecked.removeprefix('ours: ')}: {100 * loss:+.1f}%")
    return "Member verification, throughput lost (checked vs unchecked, same run): " + "; ".join(costs) + "."


def checksum_share(shard_root: Path) -> float:
    """Seconds spent hashing every member (image and metadata) over seconds spent decoding and cropping the
    images, both measured here on one thread: the share of a loader's work that member verification adds,
    free of the throughput noise of a shared machine."""
    from dist_syndr import imaging
    from dist_syndr.features.preprocess import normalise
    from dist_syndr.sharding.shard_set import ShardSet, member_checksum

    shard_set = ShardSet(shard_root)
    hashing = decoding = 0.0
    for entry in shard_set.samples:
        image = shard_set.read_member(entry.key, entry.image_extension)
        meta = shard_set.read_member(entry.key, "json")
        started = time.perf_counter()
        member_checksum(image)
        member_checksum(meta)
        hashed = time.perf_counter()
        normalise(imaging.decode(image, is_oriented=False)[:224, :224])
        decoding += time.perf_counter() - hashed
        hashing += hashed - started
    return hashing / decoding


def _rows(best: dict[str, LoaderRun]) -> list[list[str]]:
    baseline = next(iter(best.values()))
    rows = []
    for name, result in best.items():
        ratio = result.images_per_second / baseline.images_per_second
        rows.append(
            [
                name,
                f"{result.images_per_second:.1f}",
                f"{100 * result.wait_share:.0f}%",
                f"{result.first_batch_seconds:.2f}",
                "1.00x (baseline)" if result is baseline else f"{ratio:.2f}x",
            ]
        )
    return rows


def make_shard_set(folder: Path, plan: LoaderPlan, encoding: str) -> Path:
    """Photo crops sharded by the sharding step: PNG files kept as they are, or BMP files it encodes (as PNG, or
    as LZ4 pixel bands)."""
    from PIL import Image

    from dist_syndr.pools.embedded import photo_crops
    from dist_syndr.sharding import writer

    source = folder / "pool"
    source.mkdir(parents=True)
    suffix = "png" if encoding == "dataset" else "bmp"
    items = []
    for number, crop in enumerate(photo_crops(np.random.default_rng(0), plan.num_images, plan.width, plan.height)):
        path = source / f"photo{number:05d}.{suffix}"
        Image.fromarray(crop).save(path)
        items.append(writer.WorkItem(key=f"bench/photo{number:05d}", source_path=str(path), score=float(number % 11)))
    image_format = "lz4" if encoding == "lz4" else "png"
    options = writer.WriteOptions(
        samples_per_shard=plan.samples_per_shard, num_workers=plan.num_workers, image_format=image_format
    )
    writer.write_shard_set(items, folder / "shards", options, {"bench": True})
    return folder / "shards"


def _consume(batches, plan: LoaderPlan, clock: dict) -> None:
    # Drains the batches like a training loop whose step does not use the CPU, timing the waits.
    iterator = iter(batches)
    while True:
        started = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            return
        now = time.perf_counter()
        if clock["first"] is None:
            clock["first"] = now - clock["start"]
            clock["steady_start"] = now
        else:
            clock["wait"] += now - started
            clock["images"] += _count(batch)
        time.sleep(plan.step_ms / 1000)


def _count(batch) -> int:
    if isinstance(batch, (tuple, list)):
        return int(batch[0].shape[0])
    return len(batch)


def _timed(epochs) -> LoaderRun:
    clock = {"start": time.perf_counter(), "first": None, "wait": 0.0, "images": 0, "steady_start": 0.0}
    for make_batches, plan in epochs:
        _consume(make_batches(), plan, clock)
    return LoaderRun(clock["images"], time.perf_counter() - clock["steady_start"], clock["wait"], clock["first"])


def _ours(shard_root: Path, plan: LoaderPlan, kind: str, verify: str = "off") -> LoaderRun:
    from dist_syndr.config import DataConfig
    from dist_syndr.loader import plan_epoch
    from dist_syndr.loader.dali_pipeline import DaliLoader
    from dist_syndr.loader.torch_loader import TorchLoader
    from dist_syndr.sharding.shard_set import ShardSet

    shard_set = ShardSet(shard_root)
    config = DataConfig(batch_size=plan.batch_size, num_workers=plan.num_workers, verify_checksums=verify)
    if kind == "torch":
        loader = TorchLoader(shard_set, config, is_training=True)
    else:
        device_id = 0 if kind == "gpu" else None
        loader = DaliLoader(shard_set, config, is_training=True, device=kind, device_id=device_id)
    keys = shard_set.keys()
    with loader:
        epochs = []
        for epoch in range(plan.epochs):
            rank_plan = plan_epoch(keys, config, seed=0, epoch=epoch).for_rank(0)
            epochs.append((lambda rank_plan=rank_plan: loader.batches(rank_plan), plan))
        return _timed(epochs)


def _baseline(shard_root: Path, plan: LoaderPlan) -> LoaderRun:
    import torch
    import webdataset as wds

    urls = sorted(str(path) for path in shard_root.glob("shard-*.tar"))
    dataset = (
        wds.WebDataset(
            urls, shardshuffle=len(urls), nodesplitter=None, workersplitter=wds.split_by_worker, empty_check=False
        )
        .shuffle(100)
        .decode("pil")
        .map(_baseline_sample)
        .batched(plan.batch_size, partial=False)
    )
    loader = torch.utils.data.DataLoader(dataset, batch_size=None, num_workers=plan.num_workers, prefetch_factor=2)
    return _timed([(lambda: loader, plan) for _ in range(plan.epochs)])


def _baseline_sample(sample: dict):
    import torch

    from dist_syndr.features.preprocess import normalise

    if "lz4" in sample:  # webdataset has no decoder for LZ4 pixel members: their bytes come through
        from dist_syndr import imaging

        pixels = imaging.decode(sample["lz4"], is_oriented=False)
    else:
        pixels = np.asarray((sample.get("png") or sample.get("jpg")).convert("RGB"))
    rng = np.random.default_rng()
    x = int(rng.integers(0, pixels.shape[1] - 224 + 1))
    y = int(rng.integers(0, pixels.shape[0] - 224 + 1))
    crop = pixels[y : y + 224, x : x + 224]
    return torch.from_numpy(normalise(crop)), float(sample["json"]["score"])
