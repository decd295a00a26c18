"""Writing shard sets: work items -> WebDataset tars + ``index.json``, parallel and resumable.

Samples are cut into shards in plan order. Each shard is produced by one
worker process: every image is decoded once through :mod:`dist_syndr.imaging`
(refused above ``shard.max_pixels`` before decoding, EXIF orientation applied)
or made by the distortion engine, so a shard holds upright pixels, stored as
``shard.image_format`` says (:mod:`member_format`): ``png`` keeps plain JPEG
and PNG files (8-bit RGB or grey, orientation 1) byte for byte and stores every
other image (an EXIF orientation that moves pixels, other formats or modes,
engine outputs) as a lossless PNG of its upright 8-bit RGB pixels; ``lz4`` stores
every image as LZ4 row bands a GPU inflates. Each sample records the
pixel digest of those pixels. A shard is written to a tar under a temporary
name with fixed headers (so a given config always yields the same bytes), then
renamed. A sidecar
``shard-NNNNNN.json`` records the shard's members, offsets and sha256; a rerun
skips every shard whose tar still matches its sidecar, so a killed run resumes
where it stopped. Ranks split the shards; rank 0 assembles ``index.json``.

Every writer of a set holds its lock for the whole job (:func:`writing`: the
advisory lock ``<set>/.lock``, taken by rank 0 before any rank writes), so a
second job writing the same set stops, on every rank, with one line naming the
holder instead of pairing its tars with the other job's sidecars.

Shapes: images ``(H, W, 3)`` uint8 RGB.
"""

from __future__ import annotations

import concurrent.futures as futures
import contextlib
import hashlib
import io
import json
import logging
import multiprocessing
import tarfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dist_syndr import collectives, files, imaging, runtime
from dist_syndr.config import DEFAULT_MAX_PIXELS, ShardConfig
from dist_syndr.pools.scores import minmax_to_ten
from dist_syndr.sharding import engine_batches, member_format, torch_threads
from dist_syndr.sharding.index_columns import CHECKSUM_FIELD, PIXEL_DIGEST_FIELD, member_base
from dist_syndr.sharding.shard_set import INDEX_NAME, LOCK_NAME, member_checksum, scan_tar, write_index

log = logging.getLogger(__name__)

_STORED_AS_IS = {"JPEG": "jpg", "PNG": "png"}  # header format -> member extension of plain files kept byte for byte


@dataclass(frozen=True)
class WorkItem:
    """How one sample's image is produced and what is recorded about it."""

    key: str
    source_path: str | None = None  # image file to store
    ref_path: str | None = None  # pristine reference: engine input and weak-label reference
    is_engine: bool = False  # image = distort(reference, type, level, seed), or meta["chain"] of (type, level) in turn
    seed: int = 0
    score: float | None = None  # known label on [0, 10]; None asks for a weak label
    wants_weak_label: bool = False
    meta: dict = field(default_factory=dict)  # ref, type, level, origin, source


@dataclass(frozen=True)
class WriteOptions:
    """How shards are cut and written."""

    samples_per_shard: int = 1000
    png_compress_level: int = 1
    num_workers: int = 2
    on_error: str = "error"  # error | skip
    max_pixels: int = DEFAULT_MAX_PIXELS  # images and references declaring more pixels are refused unread
    image_format: str = "png"  # png | lz4 (member_format)
    device: str = "cpu"  # where engine batches are made (runtime's choice: cpu or cuda); encoding stays on CPUs
    images_per_engine_batch: int = 128  # at most (sharding/engine_batches.py); 0: one image at a time

    @staticmethod
    def from_config(shard: ShardConfig, device: str = "cpu") -> WriteOptions:
        """The write options of a ``shard`` config section, engine batches on ``device``."""
        return WriteOptions(
            shard.samples_per_shard,
            shard.png_compress_level,
            shard.num_workers,
            shard.on_error,
            shard.max_pixels,
            shard.image_format,
            device,
        )


def item_seed(run_seed: int, key: str) -> int:
    """A stable per-sample seed for the distortion engine."""
    return int.from_bytes(hashlib.sha256(f"{run_seed}:{key}".encode()).digest()[:4], "little")


def shard_name(index: int) -> str:
    """``shard-000042.tar``."""
    return f"shard-{index:06d}.tar"


def cut_into_shards(items: list[WorkItem], samples_per_shard: int) -> list[list[WorkItem]]:
    """Consecutive groups of ``samples_per_shard`` items (the last may be shorter)."""
    return [items[i : i + samples_per_shard] for i in range(0, len(items), samples_per_shard)]


@contextlib.contextmanager
def writing(out_dir: Path, *, rank: int = 0, world_size: int = 1) -> Iterator[None]:
    """Hold the shard set's lock (``<out_dir>/.lock``) for the block: rank 0 takes it before any rank writes;
    when another job holds it, every rank raises :class:`dist_syndr.files.LockedError` naming the holder.
    Collective when ``world_size > 1``."""
    lock_file = out_dir / LOCK_NAME if rank == 0 else None
    with collectives.exclusive_lock(lock_file, f"shard set {out_dir}", is_collective=world_size > 1):
        yield


def write_shard_set(
    items: list[WorkItem], out_dir: Path, options: WriteOptions, config: dict, *, rank: int = 0, world_size: int = 1
) -> Path | None:
    """Write (or finish) the shard set under its lock (:func:`writing`); rank 0 returns the index path, other
    ranks None."""
    with writing(out_dir, rank=rank, world_size=world_size):
        num_shards = write_shards(items, out_dir, options, rank=rank, world_size=world_size)
        return finish_index(out_dir, num_shards, config, rank=rank, world_size=world_size)


def write_shards(
    items: list[WorkItem],
    out_dir: Path,
    options: WriteOptions,
    *,
    first_shard: int = 0,
    rank: int = 0,
    world_size: int = 1,
) -> int:
    """Write this rank's unfinished shards of ``items``, numbered from ``first_shard``;
    returns how many shards ``items`` fill.

    A set can be written in segments (originals, then samples planned from them), each
    starting on a new shard; :func:`finish_index` then indexes all of them. The caller holds the
    set's lock (:func:`writing`) around all of them.
    """
    keys = [item.key for item in items]
    if len(set(keys)) != len(keys):
        raise ValueError("work items contain duplicate sample keys")
    out_dir.mkdir(parents=True, exist_ok=True)
    shards = dict(enumerate(cut_into_shards(items, options.samples_per_shard), start=first_shard))
    mine = [i for i in shards if i % world_size == rank]
    todo = [i for i in mine if not _is_finished(out_dir, i, shards[i], options.image_format)]
    log.info(
        "rank %d: %d of its %d shards already finished, %d to write", rank, len(mine) - len(todo), len(mine), len(todo)
    )
    batched = [i for i in todo if options.images_per_engine_batch > 0 and any(item.is_engine for item in shards[i])]
    _run_workers([i for i in todo if i not in batched], shards, out_dir, options)
    if batched:
        engine_batches.write_batched(batched, shards, out_dir, options, write_shard)
    return len(shards)


def finish_index(out_dir: Path, num_shards: int, config: dict, *, rank: int = 0, world_size: int = 1) -> Path | None:
    """After every rank's shards: rank 0 writes ``index.json`` over shards ``0 .. num_shards - 1``."""
    if world_size > 1:  # a single-writer call inside a distributed job must not meet other ranks' barriers
        collectives.barrier()
    if rank != 0:
        return None
    return _write_index(out_dir, num_shards, config)


def weak_qualities(out_dir: Path, shard_numbers: range) -> dict[str, float]:
    """Key -> weak-label ensemble quality of the samples in finished shards ``shard_numbers``
    (read from their sidecars).
    """
    qualities = {}
    for index in shard_numbers:
        sidecar = sidecar_path(out_dir, index)
        if not sidecar.is_file():
            raise ValueError(f"{sidecar}: missing; the shard was not written")
        for sample in json.loads(sidecar.read_text())["samples"]:
            if sample.get("weak_label"):
                qualities[sample["key"]] = sample["weak_label"]["quality"]
    return qualities


def _run_workers(todo: list[int], shards: dict[int, list[WorkItem]], out_dir: Path, options: WriteOptions) -> None:
    if not todo:
        return
    progress = tqdm(total=sum(len(shards[i]) for i in todo), desc="sharding", unit="img")
    if options.num_workers <= 1:
        with torch_threads.one_torch_thread():  # per-image work is small: intra-op threads only add overhead
            for i in todo:
                write_shard(i, shards[i], out_dir, options)
                progress.update(len(shards[i]))
        progress.close()
        return
    context = multiprocessing.get_context("spawn" if runtime.is_cuda_initialised() else "fork")
    worker_init = torch_threads.single_thread_worker
    with futures.ProcessPoolExecutor(options.num_workers, mp_context=context, initializer=worker_init) as pool:
        pending = {pool.submit(write_shard, i, shards[i], out_dir, options): i for i in todo}
        for done in futures.as_completed(pending):
            done.result()
            progress.update(len(shards[pending[done]]))
    progress.close()


def _plan_digest(items: list[WorkItem]) -> str:
    from dist_syndr.pools import weak_labels

    text = json.dumps([asdict(item) for item in items], sort_keys=True, default=str)
    if any(item.wants_weak_label for item in items):  # a shard labelled by another ensemble is rewritten
        text += json.dumps(weak_labels.ENSEMBLE)
    return hashlib.sha256(text.encode()).hexdigest()


def sidecar_path(out_dir: Path, index: int) -> Path:
    """``shard-000042.json``: the record of shard 42 that a rerun checks."""
    return out_dir / shard_name(index).replace(".tar", ".json")


def _is_finished(out_dir: Path, index: int, items: list[WorkItem], image_format: str) -> bool:
    sidecar, tar_path = sidecar_path(out_dir, index), out_dir / shard_name(index)
    if not (sidecar.is_file() and tar_path.is_file()):
        return False
    try:
        record = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return False
    if record.get("plan_digest") != _plan_digest(items) or record.get("image_format", "png") != image_format:
        return False
    if not all(PIXEL_DIGEST_FIELD in sample for sample in record["samples"]):  # written before pixel digests
        return False
    if tar_path.stat().st_size != record["bytes"] or files.sha256_file(tar_path) != record["sha256"]:
        log.warning("%s: checksum mismatch, rewriting it", tar_path)
        return False
    return True


def write_shard(
    index: int, items: list[WorkItem], out_dir: Path, options: WriteOptions, made: dict | None = None
) -> dict:
    """Write one shard and its sidecar atomically; return the sidecar record.

    ``made`` holds items already produced (key -> (bytes, extension, weak label), or the item's ValueError).
    """
    name = shard_name(index)
    final = out_dir / name
    with files.atomic_path(final) as temporary:
        samples, skipped = _write_tar(temporary, items, options, made or {})
        offsets = scan_tar(temporary)
    records = [_index_record(s, name, offsets) for s in samples]
    record = {
        "name": name,
        "num_samples": len(records),
        "bytes": final.stat().st_size,
        "sha256": files.sha256_file(final),
        "plan_digest": _plan_digest(items),
        "image_format": options.image_format,
        "samples": records,
        "skipped": skipped,
    }
    files.write_text(sidecar_path(out_dir, index), json.dumps(record, sort_keys=True))
    return record


def _write_tar(path: Path, items: list[WorkItem], options: WriteOptions, made: dict) -> tuple[list[dict], list[dict]]:
    """Write the items' members to the tar ``path``; returns the samples written and the inputs skipped."""
    samples, skipped = [], []
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as archive:
        reference_cache: dict[str, np.ndarray] = {}
        for item in items:
            try:
                result = made[item.key] if item.key in made else _produce(item, options, reference_cache)
                if isinstance(result, ValueError):
                    raise result
                image_bytes, extension, weak, digest = result
            except ValueError as error:
                if options.on_error != "skip":
                    raise
                skipped.append({"key": item.key, "path": item.source_path or item.ref_path, "reason": str(error)})
                continue
            meta = dict(item.meta, key=item.key, score=item.score)
            if weak is not None:
                meta["weak_label"] = weak
            base = member_base(item.key)
            meta_bytes = json.dumps(meta, sort_keys=True).encode()
            _add_member(archive, f"{base}.{extension}", image_bytes)
            _add_member(archive, f"{base}.json", meta_bytes)
            checksums = {extension: member_checksum(image_bytes), "json": member_checksum(meta_bytes)}
            samples.append(
                {"key": item.key, "extension": extension, "meta": meta, CHECKSUM_FIELD: checksums, "digest": digest}
            )
    return samples, skipped


def _index_record(sample: dict, shard: str, offsets: dict[str, tuple[int, int]]) -> dict:
    base = member_base(sample["key"])
    meta = sample["meta"]
    return {
        "key": sample["key"],
        "shard": shard,
        "members": {ext: list(offsets[f"{base}.{ext}"]) for ext in (sample["extension"], "json")},
        CHECKSUM_FIELD: sample[CHECKSUM_FIELD],  # of each member's bytes, checked before anything decodes them
        PIXEL_DIGEST_FIELD: sample["digest"],  # of the upright pixels: evaluation crops are drawn from it
        "score": meta.get("score"),
        "weak_label": meta.get("weak_label"),
        "ref": meta.get("ref"),
        "type": meta.get("type"),
        "level": meta.get("level"),
        "origin": meta.get("origin", "original"),
        "source": meta.get("source", ""),
    }


def _add_member(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    # Fixed owner, mode and time: the same inputs always give the same tar bytes.
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    archive.addfile(info, io.BytesIO(data))


def _produce(
    item: WorkItem, options: WriteOptions, cache: dict[str, np.ndarray]
) -> tuple[bytes, str, dict | None, int]:
    """The stored image bytes, their extension, the weak-label record (or None) and the pixel digest."""
    from dist_syndr.pools import images

    if item.is_engine:
        pixels = _cached_reference(item.ref_path, cache, options.max_pixels)
        for step, (distortion_type, level) in enumerate(
            item.meta.get("chain") or [(item.meta["type"], item.meta["level"])]
        ):
            pixels = images.distort_array(pixels, distortion_type, level, item.seed + step)
        kept = None
    else:
        data = images.read_bytes(Path(item.source_path))
        decoded = imaging.decode_image(data, max_pixels=options.max_pixels, name=item.source_path)
        pixels = decoded.pixels
        # Sideways, another format or mode: only the upright 8-bit RGB pixels may be stored (losslessly).
        kept = (data, _STORED_AS_IS[decoded.header.format]) if decoded.is_stored_upright else None
    data, extension = member_format.image_member(
        pixels, options.image_format, png_compress_level=options.png_compress_level, kept=kept
    )
    weak = None
    if item.wants_weak_label:
        from dist_syndr.pools import weak_labels

        qualities = weak_labels.metric_qualities(pixels, _cached_reference(item.ref_path, cache, options.max_pixels))
        weak = {"metrics": qualities, "quality": weak_labels.ensemble_quality(qualities)}
    return data, extension, weak, imaging.pixel_digest(pixels)


def _cached_reference(path: str | None, cache: dict[str, np.ndarray], max_pixels: int) -> np.ndarray:
    from dist_syndr.pools import images

    if path is None:
        raise ValueError("a reference image is needed but the sample names none")
    if path not in cache:
        cache.clear()  # items are grouped by reference: one decoded reference at a time
        cache[path] = imaging.decode(images.read_bytes(Path(path)), max_pixels=max_pixels, name=path)
    return cache[path]


def _write_index(out_dir: Path, num_shards: int, config: dict) -> Path:
    shards, samples, skipped = [], [], []
    for index in range(num_shards):
        sidecar = sidecar_path(out_dir, index)
        if not sidecar.is_file():
            raise ValueError(f"{sidecar}: missing; a rank did not finish its shards")
        record = json.loads(sidecar.read_text())
        shards.append({k: record[k] for k in ("name", "num_samples", "bytes", "sha256")})
        samples.extend(record["samples"])
        skipped.extend(record["skipped"])
    _assign_weak_scores(samples)
    if skipped:
        log.warning("%d input(s) skipped (unreadable); listed under 'skipped' in %s", len(skipped), INDEX_NAME)
    path = write_index(out_dir, config=config, shards=shards, records=samples, skipped=skipped)
    log.info("wrote %s: %d samples in %d shards", path, len(samples), len(shards))
    return path


def _assign_weak_scores(samples: list[dict]) -> None:
    """One min-max over the pool's weak-label qualities gives their [0, 10] scores."""
    weak = [s for s in samples if s.get("score") is None and s.get("weak_label")]
    if not weak:
        return
    if len(weak) == 1:
        weak[0]["score"] = 10.0 * weak[0]["weak_label"]["quality"]
        return
    scores = minmax_to_ten(np.array([s["weak_label"]["quality"] for s in weak]))
    for sample, score in zip(weak, scores, strict=True):
        sample["score"] = float(score)
