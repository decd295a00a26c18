"""A scoring job over files: expand the inputs, skip what an earlier run finished, split the rest over ranks,
score, merge. What ``launchers/score.py`` runs.

Under ``torchrun``/``deepspeed`` each rank takes every ``world_size``-th remaining file
and appends to its own part file; rank 0 merges them after a barrier. Without a
launcher no process group is made.

The job holds ``<out>.lock`` from start to end (rank 0 takes it before any rank
writes; a second job on the same output ends, on every rank, in one line naming
the holder), and rank 0 checks ``<out>.meta.json`` against the model it loaded: a
rerun with other weights, crops, precision or decoder is refused before any rank
scores (:func:`dist_syndr.scoring.output.claim_output`).

Shapes: none (paths and rows).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dist_syndr import collectives, runtime
from dist_syndr.scoring import output
from dist_syndr.scoring.compiled import should_compile
from dist_syndr.scoring.inputs import expand_paths
from dist_syndr.scoring.scorer import Scorer

log = logging.getLogger(__name__)

FLUSH_EVERY = 64  # results between flushes of the part files
BARRIER_TIMEOUT_S = 6 * 3600  # ranks finish their shares at different times; the final barrier waits this long


@dataclass(frozen=True)
class JobSummary:
    """What a job did: inputs found, scored before (skipped now), scored and failed in this run, rows written."""

    num_inputs: int
    num_already_scored: int
    num_scored: int
    num_failed: int
    num_rows: int

    def line(self, out: Path) -> str:
        """The one-line summary the launcher prints."""
        failed = f"{self.num_failed} skipped (listed in {output.errors_path(out)})" if self.num_failed else "0 skipped"
        return (
            f"{out}: {self.num_rows} images scored ({self.num_scored} now, {self.num_already_scored} by an earlier "
            f"run) of {self.num_inputs} inputs; {failed}"
        )


def run_job(
    scorer_factory,
    specs: list[str],
    out: Path,
    *,
    max_pixels: int,
    num_workers: int | None = None,
    decoder: str = "pil",
    compile_mode: str = "off",
) -> JobSummary:
    """Score every image ``specs`` name into ``out``; ``scorer_factory()`` builds the :class:`Scorer`.
    ``num_workers``: decoding processes (None: :func:`decoding_workers`); ``compile_mode``: ``auto|on|off``
    (:func:`dist_syndr.scoring.compiled.should_compile`)."""
    output.check_output_path(out)
    rank, world_size, _ = runtime.env_rank_world()
    if world_size > 1:
        runtime.init(timeout_s=BARRIER_TIMEOUT_S)
    lock_file = output.lock_path(out) if rank == 0 else None
    with collectives.exclusive_lock(lock_file, f"scoring output {out}", is_collective=world_size > 1):
        paths = expand_paths(specs)
        done = output.finished_paths(out)  # every rank reads it before any writes (the claim below waits for all)
        todo = [path for path in paths if str(path) not in done]
        mine = todo[rank::world_size]
        log.info(
            "%d inputs, %d scored before, %d to score (%d on this rank)", len(paths), len(done), len(todo), len(mine)
        )
        scorer: Scorer = scorer_factory()
        refusal = output.claim_output(out, output.scoring_record(scorer, decoder)) if rank == 0 else None
        collectives.refuse_if_any(refusal, is_collective=world_size > 1)
        if should_compile(compile_mode, len(mine), scorer.device):
            scorer.compile(strict=compile_mode == "on")
        num_workers = decoding_workers(scorer.device) if num_workers is None else num_workers
        log.info(
            "scoring with %s on %s (%s%s), %d decoding workers", scorer.protocol.describe(), scorer.device,
            scorer.precision, ", compiled" if scorer.compiled else "", num_workers,
        )  # fmt: skip
        writer = output.PartWriter(out, rank)
        try:
            results = scorer.score_files(mine, num_workers=num_workers, max_pixels=max_pixels, decoder=decoder)
            for count, result in enumerate(tqdm(results, total=len(mine), unit="img", disable=rank != 0), start=1):
                writer.add(result)
                if result.error is not None:
                    log.warning("%s: skipped (%s)", result.name, result.error)
                if count % FLUSH_EVERY == 0:
                    writer.flush()
        finally:
            writer.close()
        counts = collectives.all_gather_objects((writer.num_scored, writer.num_failed)) if world_size > 1 else None
        scored, failed = map(sum, zip(*counts, strict=True)) if counts else (writer.num_scored, writer.num_failed)
        rows = 0
        if rank == 0:
            rows, failed = output.merge(out, paths)
        if world_size > 1:
            collectives.barrier()  # every rank is done before rank 0 lets the lock go
    if world_size > 1:
        runtime.shutdown()
    return JobSummary(len(paths), len(paths) - len(todo), scored, failed, rows)


def decoding_workers(device: torch.device) -> int:
    """Decoding processes by default: none on a CPU, where the forward pass already takes every core (decoding
    between batches in this process measured faster than two workers on two cores, ``bench.py score``), and up
    to four beside a GPU, one per core this rank's share of the machine has."""
    if device.type != "cuda":
        return 0
    return max(1, min(4, (os.cpu_count() or 1) // runtime.local_world_size() - 1))
