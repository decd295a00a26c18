"""The sharding step's engine items in batches on the step's device: one decoded reference, all its variants.

A shard's engine items (``WorkItem.is_engine``: images the distortion engine makes from a pristine
reference) are cut into batches of whole references, in plan order (a reference's run is split only
where it alone passes ``WriteOptions.images_per_engine_batch`` images). A batch is made in three steps:

1. its references are decoded once;
2. the batched engine (:func:`dist_syndr.pools.distortions.distort`) makes every (type, level) in one
   call over the batch's references of that size; chains of distortions go image by image;
3. the weak labels are computed in one pass (:func:`dist_syndr.pools.weak_labels.label_images`, whose
   reference-side work is done once per reference), then every image is PNG-encoded.

Where the work runs is the device's choice (``WriteOptions.device``, from :mod:`dist_syndr.runtime`):

* ``cpu``: ``num_workers`` processes each make whole batches, steps 1-3, with one torch thread each
  (on shared cores processes scale, intra-op threads do not); one worker: in this process.
* a GPU: this process makes steps 1-2 and the labels on the device while ``num_workers`` CPU
  processes encode the batches before it (encoding overlaps the next batch).

This process writes each shard's tar (:func:`writer.write_shard`, in a background thread) once all
its batches are back; any other item of that shard goes through the per-image path there. An image's
pixels and label depend only on its reference, type, level and seed (the engine and the metrics are
batch-invariant), so on the CPU every tar is byte-identical to the per-image path's
(``images_per_engine_batch=0``), and a resumed step skips finished shards as before. An item that fails is redone
alone, so its error (raised, or listed under ``skipped``) reads as the per-image path's.

Shapes: references and images ``(H, W, 3)`` uint8 on the host, ``(B, 3, H, W)`` uint8 on the device.
"""

from __future__ import annotations

import collections
import concurrent.futures as futures
import contextlib
import logging
import multiprocessing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dist_syndr import imaging, runtime
from dist_syndr.sharding import torch_threads

log = logging.getLogger(__name__)

Made = dict  # key -> (image bytes, extension, weak label or None) | ValueError
# Batches for CPU workers: small enough to spread a shard over every worker (a CPU gains nothing from more
# images per call: the labels go image by image there); one reference's 25 types x 5 levels make 4.
_CPU_BATCH_IMAGES = 32
_NO_REFERENCE = "a reference image is needed but the sample names none"


@dataclass(frozen=True)
class Batch:
    """Engine items of one shard (``WorkItem``s of :mod:`dist_syndr.sharding.writer`), whole references first."""

    shard: int
    items: tuple


@dataclass(frozen=True)
class MemberOptions:
    """How a made image is stored (what a worker needs of the write options)."""

    image_format: str = "png"
    png_compress_level: int = 1


def batches_of(shard: int, items: list, max_images: int) -> list[Batch]:
    """The engine items of shard ``shard`` in batches of at most ``max_images``, references kept together."""
    runs, batches, current = [], [], []
    for item in (item for item in items if item.is_engine):
        if runs and runs[-1][0].ref_path == item.ref_path:
            runs[-1].append(item)
        else:
            runs.append([item])
    for run in runs:
        for start in range(0, len(run), max_images):
            chunk = run[start : start + max_images]
            if current and len(current) + len(chunk) > max_images:
                batches.append(Batch(shard, tuple(current)))
                current = []
            current.extend(chunk)
    if current:
        batches.append(Batch(shard, tuple(current)))
    return batches


def write_batched(
    todo: list[int], shards: dict[int, list], out_dir: Path, options, write_shard: Callable[..., dict]
) -> None:
    """Write shards ``todo`` (each holding engine items) with their engine items made in batches."""
    import torch
    from tqdm.auto import tqdm

    device = torch.device(options.device)
    is_made_in_workers = _is_made_in_workers(device)
    limit = (
        min(options.images_per_engine_batch, _CPU_BATCH_IMAGES)
        if is_made_in_workers
        else options.images_per_engine_batch
    )
    batches = [batch for index in todo for batch in batches_of(index, shards[index], limit)]
    waiting = collections.Counter(batch.shard for batch in batches)
    where = f"{options.num_workers} CPU worker(s)" if is_made_in_workers else f"{device} (encoding on CPU workers)"
    log.info("%d shards: %d engine batches of at most %d images, made on %s", len(todo), len(batches), limit, where)
    made: dict[int, Made] = {index: {} for index in todo}
    progress = tqdm(total=sum(len(batch.items) for batch in batches), desc="sharding (engine batches)", unit="img")
    is_skipping = options.on_error == "skip"
    with futures.ThreadPoolExecutor(1, thread_name_prefix="tar-writer") as tar_writer:
        writes = []

        def collect(batch: Batch, results: Made) -> None:
            made[batch.shard].update(results)
            progress.update(len(batch.items))
            waiting[batch.shard] -= 1
            if waiting[batch.shard] == 0:
                index = batch.shard
                writes.append(tar_writer.submit(write_shard, index, shards[index], out_dir, options, made.pop(index)))
            for write in [w for w in writes if w.done()]:
                write.result()  # a failed tar stops the step now, not after every batch

        if is_made_in_workers:
            _make_on_cpu_workers(batches, options, is_skipping, collect)
        else:
            with torch_threads.one_torch_thread() if device.type == "cpu" else contextlib.nullcontext():
                _make_on_device(batches, device, options, is_skipping, collect)
        for write in writes:
            write.result()
    progress.close()


def _is_made_in_workers(device) -> bool:
    """CPU workers make whole batches on a CPU; on a GPU this process makes them (tests force the latter)."""
    return device.type == "cpu"


def _make_on_cpu_workers(batches: list[Batch], options, is_skipping: bool, collect) -> None:
    member = MemberOptions(options.image_format, options.png_compress_level)
    if options.num_workers <= 1:
        with torch_threads.one_torch_thread():
            for batch in batches:
                collect(batch, produce(batch.items, member, is_skipping, options.max_pixels))
        return
    context = multiprocessing.get_context("spawn" if runtime.is_cuda_initialised() else "fork")
    with _pool(options.num_workers, context) as pool:
        pending = {
            pool.submit(produce, batch.items, member, is_skipping, options.max_pixels): batch for batch in batches
        }
        for done in futures.as_completed(pending):
            collect(pending[done], done.result())


def _make_on_device(batches: list[Batch], device, options, is_skipping: bool, collect) -> None:
    member, num_workers = MemberOptions(options.image_format, options.png_compress_level), max(1, options.num_workers)
    pending: list[tuple[futures.Future, Batch]] = []
    # Fork only while no CUDA context exists (a forked child could not use it); the pool starts lazily.
    is_spawned = device.type == "cuda" or runtime.is_cuda_initialised()
    with _pool(num_workers, multiprocessing.get_context("spawn" if is_spawned else "fork")) as pool:
        for batch in batches:
            made = make(batch.items, device, is_skipping, options.max_pixels)
            pending.append((pool.submit(encode, made, member), batch))
            while len(pending) > 2 * num_workers:  # bounded host memory: wait for the oldest encodings
                done, finished = pending.pop(0)
                collect(finished, done.result())
        for done, finished in pending:
            collect(finished, done.result())


@contextlib.contextmanager
def _pool(num_workers: int, context):
    pool = futures.ProcessPoolExecutor(num_workers, mp_context=context, initializer=torch_threads.single_thread_worker)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def produce(items: tuple, member: MemberOptions, is_skipping: bool, max_pixels: int) -> Made:
    """A CPU worker's whole job for one batch: make it on the CPU and encode it."""
    import torch

    return encode(make(items, torch.device("cpu"), is_skipping, max_pixels), member)


def encode(made: dict, member: MemberOptions) -> Made:
    """The stored member of every made image (``shard.image_format``) with its pixel digest (errors passed
    through)."""
    from dist_syndr.sharding import member_format

    encoded = {}
    for key, result in made.items():
        if isinstance(result, ValueError):
            encoded[key] = result
        else:
            pixels, weak = result
            data, extension = member_format.image_member(
                pixels, member.image_format, png_compress_level=member.png_compress_level
            )
            encoded[key] = (data, extension, weak, imaging.pixel_digest(pixels))
    return encoded


def make(items: tuple, device, is_skipping: bool, max_pixels: int) -> dict:
    """key -> (pixels ``(H, W, 3)`` uint8 on the host, weak label or None), or the item's ValueError.

    Errors are raised unless ``is_skipping``; either way a failing batch is redone item by item, so each
    item gets the error the per-image path would give it.
    """
    try:
        return _make_together(items, device, max_pixels)
    except ValueError:
        made = {}
        for item in items:
            try:
                made[item.key] = _make_together((item,), device, max_pixels)[item.key]
            except ValueError as error:
                if not is_skipping:
                    raise
                made[item.key] = error
        return made


def _make_together(items: tuple, device, max_pixels: int) -> dict:
    import torch

    from dist_syndr.pools import weak_labels

    references = {path: _reference(path, max_pixels) for path in dict.fromkeys(item.ref_path for item in items)}
    made = {}
    by_shape: dict[tuple, list[str]] = {}
    for path, pixels in references.items():
        by_shape.setdefault(pixels.shape, []).append(path)
    for paths in by_shape.values():
        members = [item for item in items if item.ref_path in paths]
        stack = torch.from_numpy(np.stack([references[path] for path in paths])).permute(0, 3, 1, 2)
        stack = stack.to(device).contiguous()
        rows = [paths.index(item.ref_path) for item in members]
        distorted = _distort(members, stack, rows)
        wanting = [i for i, item in enumerate(members) if item.wants_weak_label]
        labels = dict.fromkeys(range(len(members)))
        if wanting:
            found = weak_labels.label_images(distorted[wanting], stack, [rows[i] for i in wanting])
            labels.update(zip(wanting, found, strict=True))
        host = distorted.permute(0, 2, 3, 1).contiguous().cpu().numpy()
        for i, item in enumerate(members):
            made[item.key] = (host[i], labels[i])
    return {item.key: made[item.key] for item in items}


def _distort(members: list, stack, rows: list[int]):
    """Every member's image ``(B, 3, H, W)``: one engine call per (type, level), chains step by step."""
    import torch

    from dist_syndr.pools import distortions

    out = [None] * len(members)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, item in enumerate(members):
        chain = item.meta.get("chain")
        if chain:
            image = stack[rows[i] : rows[i] + 1]
            for step, (distortion_type, level) in enumerate(chain):
                image = distortions.distort(image, distortion_type, level, [item.seed + step])
            out[i] = image[0]
        else:
            groups.setdefault((item.meta["type"], item.meta["level"]), []).append(i)
    for (distortion_type, level), positions in groups.items():
        index = torch.tensor([rows[i] for i in positions], device=stack.device)
        seeds = [members[i].seed for i in positions]
        for i, image in zip(positions, distortions.distort(stack[index], distortion_type, level, seeds), strict=True):
            out[i] = image
    return torch.stack(out)


def _reference(path: str | None, max_pixels: int) -> np.ndarray:
    from dist_syndr.pools import images

    if path is None:
        raise ValueError(_NO_REFERENCE)
    return imaging.decode(images.read_bytes(Path(path)), max_pixels=max_pixels, name=path)
