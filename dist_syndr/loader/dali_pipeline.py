"""The DALI input pipeline: planned tar members -> decode (or inflate) -> fixed-anchor crop -> normalise.

::

    fn.external_source (parallel Python workers) -> image inputs, anchors, score, position, status
    decode: PNG/JPEG through fn.decoders.image(_slice), "mixed" with a GPU, "cpu" without;
            LZ4 pixel members inflated on the GPU (fn.decoders.inflate), or by the source workers on the CPU
    fn.slice per anchor, fn.crop_mirror_normalize -> float32 CHW, ImageNet mean/std
    DALIGenericIterator -> Batch

The graph and its source are :mod:`dist_syndr.loader.dali_graph`; this module runs
them. The source callable is stateless as DALI requires: it finds its epoch's feed
(rows, statuses, seed, epoch) in a small ``.npz`` file written here
before the pipeline starts or is reset, keyed by DALI's epoch index,
so one pipeline and its worker processes serve every epoch although the
samples change each time. Each rank's list is padded with a placeholder image
to whole batches (status "padding"), and those rows never leave the loader.

Errors: a member that is truncated, has no image header or is smaller than
the crop fails in the source with a message naming the shard and the key. A
decoder failure is caught at the iterator, the samples in flight are rerun
through the same graph one at a time to find the bad one, and the error names
its shard and key.
Under ``on_error=skip`` both are dropped from their batch instead (the batch
shrinks, the number of batches does not) and counted; after a decoder
failure the pipeline is rebuilt and resumes at the failed batch.

Shapes: ``B`` batch size, ``n`` crops per image, ``C`` crop side.
"""

from __future__ import annotations

import gc
import logging
import os
import re
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from dist_syndr import files
from dist_syndr.config import DataConfig
from dist_syndr.loader.batch import STATUS_OK, STATUS_PADDING, STATUS_SKIPPED, Batch
from dist_syndr.loader.crops import CropSpec
from dist_syndr.loader.dali_graph import PlannedSource, build_pipeline, member_inputs
from dist_syndr.loader.members import MemberReader, SampleError, SampleTable, warn_skipped
from dist_syndr.loader.plan import RankPlan
from dist_syndr.sharding.shard_set import ShardSet

log = logging.getLogger(__name__)

_SOURCE_ERROR = re.compile(r"SampleError: (.+)")


class DaliLoader:
    """Batches of planned samples through DALI; ``device`` is ``gpu`` (mixed decoding) or ``cpu``."""

    def __init__(
        self,
        shard_set: ShardSet,
        config: DataConfig,
        *,
        is_training: bool,
        device: str = "cpu",
        device_id: int | None = None,
    ):
        if device not in ("cpu", "gpu"):
            raise ValueError(f"DALI device must be cpu or gpu, got {device!r}")
        self.config = config
        self.spec = CropSpec.from_config(config, is_training=is_training)
        self.device = device
        self.device_id = device_id
        self.table = SampleTable.from_shard_set(shard_set, is_verified=config.verify_checksums != "off")
        self.reader = MemberReader(self.table, config.max_pixels)
        self.inputs = member_inputs(self.table, device)  # how the graph gets pixels: decoded, or LZ4 inflated
        self.num_skipped = 0
        scratch = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
        self._feed_root = Path(tempfile.mkdtemp(prefix="dist_syndr-feed-", dir=scratch))
        self._remove_feeds = weakref.finalize(self, shutil.rmtree, self._feed_root, ignore_errors=True)
        self._pipeline = None
        self._iterator = None
        self._num_builds = 0
        self._dali_epoch = 0
        self._is_exhausted = False  # the last DALI epoch ran to its end, so reset() may start the next

    # -- public -------------------------------------------------------------

    def batches(self, plan: RankPlan) -> Iterator[Batch]:
        """Every batch of ``plan`` in order (samples skipped under ``on_error=skip`` left out)."""
        if plan.batch_size != self.config.batch_size:
            raise ValueError(
                f"plan batch size {plan.batch_size} differs from data.batch_size={self.config.batch_size}"
            )
        rows = self.table.rows(plan.keys)
        known_bad: dict[int, str] = {}  # plan position -> why it is skipped (decoder failures)
        num_skipped_before = self.num_skipped
        position = 0
        is_finished = False
        try:
            while position < len(rows):
                # Runs until the epoch ends, or until a sample fails: then known_bad has grown and
                # the pipeline is rebuilt to resume at the failed batch.
                for batch in self._run(plan, rows, position, known_bad):
                    position += plan.batch_size
                    yield batch
            is_finished = True
        finally:
            if not is_finished:  # abandoned mid-epoch: DALI cannot reset before the end, so rebuild next time
                self._discard_pipeline()
        warn_skipped(plan.epoch, self.num_skipped - num_skipped_before)

    def close(self) -> None:
        """Stop the pipeline and its workers and remove the feed files."""
        self._discard_pipeline()
        self.reader.close()
        self._remove_feeds()

    def __enter__(self) -> DaliLoader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- pipeline lifetime --------------------------------------------------

    def _run(self, plan: RankPlan, rows: np.ndarray, position: int, known_bad: dict[int, str]) -> Iterator[Batch]:
        iterator, is_reused = self._start(plan, rows, position, known_bad)
        while True:
            try:
                if is_reused:  # resetting already schedules the first batches, so it can fail like them
                    iterator.reset()
                    is_reused = False
                outputs = next(iterator)[0]
            except StopIteration:
                assert position >= len(rows), f"DALI ended the epoch at position {position} of {len(rows)}"
                self._is_exhausted = True
                return
            except Exception as error:  # DALI raises RuntimeError / Exception carrying worker tracebacks
                self._discard_pipeline()
                known_bad.update(self._diagnose(error, plan, rows, position, known_bad))
                return
            position += plan.batch_size
            yield self._to_batch(outputs, plan, rows, known_bad)

    def _start(self, plan: RankPlan, rows: np.ndarray, position: int, known_bad: dict[int, str]):
        # The feed for the next DALI epoch is written first; a finished pipeline is then reset onto
        # it (by the caller, where failures are handled), anything else is rebuilt.
        is_reused = self._iterator is not None and self._is_exhausted
        if is_reused:
            self._dali_epoch += 1
        else:
            self._discard_pipeline()
            self._num_builds += 1
            self._dali_epoch = 0
        feed_dir = self._feed_root / f"build-{self._num_builds}"
        feed_dir.mkdir(exist_ok=True)
        self._write_feed(feed_dir, plan, rows, position, known_bad)
        self._is_exhausted = False
        if not is_reused:
            self._pipeline, self._iterator = self._build(feed_dir)
        return self._iterator, is_reused

    def _write_feed(
        self, feed_dir: Path, plan: RankPlan, rows: np.ndarray, position: int, known_bad: dict[int, str]
    ) -> None:
        batch_size = plan.batch_size
        count = len(rows) - position
        padded = -(-count // batch_size) * batch_size
        feed_rows = np.full(padded, -1, dtype=np.int64)
        feed_rows[:count] = rows[position:]
        status = np.full(padded, STATUS_PADDING, dtype=np.uint8)
        status[:count] = STATUS_OK
        for bad in known_bad:
            if bad >= position:
                status[bad - position] = STATUS_SKIPPED
        positions = np.arange(position, position + padded, dtype=np.int64)
        # The source workers poll for this file: it appears whole or not at all (no fsync: it lives one epoch).
        with files.atomic_path(feed_dir / f"epoch-{self._dali_epoch:06d}.npz", is_durable=False) as temporary:
            with temporary.open("wb") as handle:
                np.savez(
                    handle,
                    rows=feed_rows,
                    status=status,
                    positions=positions,
                    seed=np.int64(plan.seed),
                    epoch=np.int64(plan.epoch),
                )

    def _build(self, feed_dir: Path):
        from nvidia.dali.plugin.pytorch import DALIGenericIterator

        # Forked workers inherit every uncollected object of this process and may finalise it mid-task; on
        # CPython 3.11.7 a finaliser that runs while a worker builds an AST (np.load parses .npz headers with it)
        # leaves the interpreter's AST depth counter off: "SystemError: AST constructor recursion depth
        # mismatch" (cpython#106905). Collecting first: 4 failures in 4 runs of tests/test_member_format.py
        # after tests/test_lz4_pixels.py before, none in 5 after.
        gc.collect()
        source = PlannedSource(self.reader, self.spec, feed_dir, self.config.on_error, self.inputs)
        pipeline = build_pipeline(source, self.spec, self.config, device=self.device, device_id=self.device_id)
        output_map = [f"crop{i}" for i in range(self.spec.num_crops)] + ["scores", "positions", "status"]
        # prepare_first_batch=False: nothing runs before the first next(), where failures are handled.
        iterator = DALIGenericIterator([pipeline], output_map, auto_reset=False, size=-1, prepare_first_batch=False)
        return pipeline, iterator

    def _discard_pipeline(self) -> None:
        if self._pipeline is None and self._iterator is None:
            return
        self._iterator = None
        self._pipeline = None
        self._is_exhausted = False
        gc.collect()  # DALI stops its Python workers when the pipeline object is collected

    # -- outputs and errors -------------------------------------------------

    def _to_batch(
        self, outputs: dict[str, torch.Tensor], plan: RankPlan, rows: np.ndarray, known_bad: dict[int, str]
    ) -> Batch:
        status = outputs["status"].reshape(-1).numpy()
        positions = outputs["positions"].reshape(-1).numpy()
        if self.spec.num_crops == 1:  # no stacking copy for the common training case
            crops = outputs["crop0"].unsqueeze(1)
        else:
            crops = torch.stack([outputs[f"crop{i}"] for i in range(self.spec.num_crops)], dim=1)
        keep = np.flatnonzero(status == STATUS_OK)
        skipped = []
        for index in np.flatnonzero(status == STATUS_SKIPPED):
            where = int(positions[index])
            skipped.append(plan.keys[where])
            reason = known_bad.get(where) or self._reason(int(rows[where]))
            log.warning("skipping %s (data.on_error=skip)", reason)
        self.num_skipped += len(skipped)
        if len(keep) < len(status):
            crops = crops[torch.as_tensor(keep, device=crops.device)]
        return Batch(
            images=crops.reshape(-1, *crops.shape[2:]),
            scores=outputs["scores"].reshape(-1)[torch.as_tensor(keep)].float(),
            keys=[plan.keys[int(positions[i])] for i in keep],
            num_crops=self.spec.num_crops,
            skipped_keys=tuple(skipped),
        )

    def _reason(self, row: int) -> str:
        try:
            self.reader.read_checked(row, self.spec.size)
        except SampleError as error:
            return str(error)
        return f"{self.table.describe(row)}: unreadable"

    def _diagnose(
        self, error: Exception, plan: RankPlan, rows: np.ndarray, position: int, known_bad: dict[int, str]
    ) -> dict[int, str]:
        # Positions to skip after a failure at `position`, or a ValueError naming the sample.
        source_message = _source_error(error)
        if source_message is not None:  # only raised with on_error=error
            raise ValueError(source_message) from None
        summary = _summary(error)
        # Errors may surface a few batches early (prefetch), so the whole in-flight window is suspect.
        window = range(position, min(len(rows), position + (self.config.prefetch + 1) * plan.batch_size))
        candidates = [p for p in window if p not in known_bad]
        failing = self._pinpoint(plan, rows, candidates)
        if not failing:
            keys = ", ".join(plan.keys[p] for p in candidates[: plan.batch_size])
            raise RuntimeError(f"DALI pipeline failed near samples {keys}; none fails alone: {summary}") from error
        reasons = {
            p: f"{self.table.describe(int(rows[p]))}: image bytes are corrupt (DALI decoder: {summary})"
            for p in failing
        }
        if self.config.on_error != "skip":
            raise ValueError(reasons[failing[0]]) from None
        return reasons

    def _pinpoint(self, plan: RankPlan, rows: np.ndarray, candidates: list[int]) -> list[int]:
        # Reruns the candidates through this very graph one sample at a time. PIL is no judge
        # here: it decodes some damaged JPEGs that DALI's decoder rejects, and the reverse.
        failing: list[int] = []
        remaining = list(candidates)
        while remaining:
            self._num_builds += 1
            feed_dir = self._feed_root / f"pinpoint-{self._num_builds}"
            feed_dir.mkdir()
            np.savez(
                feed_dir / "epoch-000000.npz",
                rows=rows[remaining],
                status=np.full(len(remaining), STATUS_OK, dtype=np.uint8),
                positions=np.array(remaining, dtype=np.int64),
                seed=np.int64(plan.seed),
                epoch=np.int64(plan.epoch),
            )
            # Source-side problems become skipped placeholders here: only decoder failures are sought.
            source = PlannedSource(self.reader, self.spec, feed_dir, "skip", self.inputs)
            pipeline = build_pipeline(
                source, self.spec, self.config, device=self.device, device_id=self.device_id, is_one_by_one=True
            )
            done = 0
            try:
                for _ in remaining:
                    pipeline.run()
                    done += 1
            except Exception:
                failing.append(remaining[done])
            del pipeline
            gc.collect()
            remaining = remaining[done + 1 :]
        return failing


def _source_error(error: BaseException) -> str | None:
    seen = error
    while seen is not None:
        match = _SOURCE_ERROR.search(str(seen))
        if match is not None:
            return match.group(1).strip()
        seen = seen.__cause__ or seen.__context__
    return None


def _summary(error: BaseException) -> str:
    # DALI puts what went wrong on the line after "encountered:".
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for number, line in enumerate(lines[:-1]):
        if line.endswith("encountered:"):
            # "Failed to decode sample #2": that number is a place in DALI's batch, not ours.
            return re.sub(r"\s*sample #\d+", "", lines[number + 1]).rstrip(" :")
    return lines[-1] if lines else type(error).__name__
