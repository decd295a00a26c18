"""Where a run stands, saved with every DeepSpeed checkpoint so a killed run resumes exactly.

:class:`TrainState` is the loop's position: the epoch in progress, batches
done in it (the same on every rank), the global step, the epoch's DRCDown
keep-list (it depends on the weights at the epoch's start, so a resumed epoch
must reuse it rather than recompute it), each rank's running loss sums and RNG
states, and the best epoch per target so far. It travels in DeepSpeed's
``client_state``.

Checkpoints are tagged ``epochNNNN`` (an epoch finished and evaluated) or
``epochNNNN-stepSSSSSS`` (mid-epoch). A tag counts only once every rank has
written it: rank 0 then records it in ``<checkpoints>/complete``
(:meth:`dist_syndr.runs.folder.RunFolder.mark_complete`), and :func:`resume`
loads that tag, never a half-written one. Older tags beyond ``keep`` are
removed after the pointer moves.

Shapes: ``kept_positions`` ``(K,)`` int64 positions into the epoch's original keys.
"""

from __future__ import annotations

import logging
import random
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from dist_syndr import collectives, runtime
from dist_syndr.runs.folder import RunFolder

log = logging.getLogger(__name__)


@dataclass
class RankProgress:
    """One rank's running sums over the epoch in progress, and its RNG states."""

    loss_sum: float = 0.0
    images: int = 0
    rng: dict = field(default_factory=dict)


@dataclass
class TrainState:
    """The loop's position; every field is plain data so it pickles into the checkpoint."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    kept_positions: np.ndarray | None = None
    reshape_stats: dict[str, float] = field(default_factory=dict)
    ranks: list[RankProgress] = field(default_factory=list)
    best: dict[str, dict[str, float]] = field(default_factory=dict)  # target -> metrics of its best epoch (+ "epoch")

    @property
    def is_mid_epoch(self) -> bool:
        """True when ``epoch`` has started (keep-list chosen, batches possibly done)."""
        return self.kept_positions is not None

    def finish_epoch(self) -> None:
        """Move to the start of the next epoch."""
        self.epoch += 1
        self.batches_done = 0
        self.kept_positions = None
        self.reshape_stats = {}
        self.ranks = []

    def update_best(self, metrics: dict[str, float], targets: list[str], epoch: int) -> dict[str, float]:
        """Keep each target's best epoch by SRCC (the paper's choice on the test set); returns ``best/...`` metrics."""
        for target in targets:
            srcc = metrics.get(f"{target}/srcc", float("nan"))
            current = self.best.get(target)
            if current is None or (np.isfinite(srcc) and not srcc <= current["srcc"]):
                prefix = f"{target}/"
                self.best[target] = {k[len(prefix) :]: v for k, v in metrics.items() if k.startswith(prefix)} | {
                    "epoch": float(epoch)
                }
        return {f"best/{t}/{k}": v for t, values in self.best.items() for k, v in values.items()}


def capture_rng() -> dict:
    """This process's Python, NumPy, torch CPU and CUDA RNG states."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": runtime.cuda_rng_states(),
    }


def restore_rng(states: dict) -> None:
    """Put back what :func:`capture_rng` returned."""
    if states:
        random.setstate(states["python"])
        np.random.set_state(states["numpy"])
        torch.set_rng_state(states["torch"])
        runtime.restore_cuda_rng_states(states.get("cuda"))


def checkpoint_tag(state: TrainState) -> str:
    """``epochNNNN`` at an epoch boundary (``state.epoch`` is the next one), else ``epochNNNN-stepSSSSSS``."""
    if state.is_mid_epoch:
        return f"epoch{state.epoch:04d}-step{state.batches_done:06d}"
    return f"epoch{state.epoch - 1:04d}"


def save(model_engine, run: RunFolder, state: TrainState, progress: RankProgress, *, keep: int) -> str:
    """Checkpoint on every rank, then (rank 0) mark the tag complete and prune old tags; returns the tag."""
    progress.rng = capture_rng()
    state.ranks = collectives.all_gather_objects(progress) if state.is_mid_epoch else []
    tag = checkpoint_tag(state)
    model_engine.save_checkpoint(str(run.checkpoints), tag=tag, client_state={"train_state": asdict(state)})
    collectives.barrier()  # every rank's files are on disk before the tag counts
    if runtime.rank_world()[0] == 0:
        run.mark_complete(tag)
        run.prune(keep=keep, current=tag)
    collectives.barrier()
    return tag


def resume(model_engine, run: RunFolder) -> tuple[TrainState, RankProgress] | None:
    """Load the last complete checkpoint into the engine (DeepSpeed's loader: this run's own files); None when
    there is none."""
    tag = run.complete_tag()
    if tag is None:
        return None
    path, client_state = model_engine.load_checkpoint(str(run.checkpoints), tag=tag)
    if path is None or "train_state" not in (client_state or {}):
        raise ValueError(f"{run.checkpoints / tag}: checkpoint could not be loaded or carries no train state")
    state = _state_from_dict(client_state["train_state"])
    rank = runtime.rank_world()[0]
    progress = state.ranks[rank] if state.ranks else RankProgress()
    restore_rng(progress.rng)
    log.info(
        "resumed from %s (epoch %d, %d batches done, step %d)", tag, state.epoch, state.batches_done, state.global_step
    )
    return state, progress


def _state_from_dict(values: dict) -> TrainState:
    ranks = [RankProgress(**r) if isinstance(r, dict) else r for r in values.get("ranks", [])]
    return TrainState(**{**values, "ranks": ranks})
