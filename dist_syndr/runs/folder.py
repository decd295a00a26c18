"""A training run's folder: the one owner of its layout, its checkpoint pointers, its export's provenance and its lock.

::

    <train.output_dir>/<run_name>/
        config.yaml  deepspeed.json  shard_sets.json  mlflow_run_id
        checkpoints/<tag>/           DeepSpeed's files, one folder per tag (epochNNNN, epochNNNN-stepSSSSSS)
        checkpoints/complete         {"tag": ...}: the last tag every rank finished writing (this trainer's)
        checkpoints/latest           DeepSpeed's: rank 0 writes it before the other ranks finish
        export/model_fp32.pt(.sha256)  export/provenance.json  export/model_card.json|.md  export/mlflow_model/
        keep_lists/  ranks/  tracking/ (the MLflow journal)  .lock

Training and every consumer read "the last checkpoint" the same way
(:func:`last_tag`): the tag ``complete`` names; DeepSpeed's ``latest`` only in a
folder plain DeepSpeed wrote (no ``complete``), with a warning, since after a kill
at ZeRO >= 1 on several ranks it can name a tag some ranks never finished. An
export records the tag and step it came from (``export/provenance.json``); a
consumer takes it only while ``complete`` names that tag. A job that writes the
folder holds its lock (:func:`dist_syndr.files.exclusive_lock`) for its whole run.

Shapes: none.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from dist_syndr import config, files
from dist_syndr.tracking.tracker import LOCAL_DIR_NAME

log = logging.getLogger(__name__)

POINTER_NAME = "complete"
LATEST_NAME = "latest"
CONFIG_NAME = "config.yaml"
EXPORT_WEIGHTS = Path("export") / "model_fp32.pt"
PROVENANCE_NAME = "provenance.json"
LOCK_NAME = ".lock"
RUN_ID_NAME = "mlflow_run_id"
TAG_PATTERN = re.compile(r"epoch(\d+)(?:-step(\d+))?")


@dataclass(frozen=True)
class ExportProvenance:
    """Where an export's weights came from: the checkpoint tag, the optimizer step, the weights file's sha256."""

    tag: str
    global_step: int
    sha256: str


@dataclass(frozen=True)
class RunFolder:
    """The folder ``root`` of one training run; paths and pointers, no I/O at construction."""

    root: Path

    @classmethod
    def of(cls, output_dir: str | Path, run_name: str) -> RunFolder:
        """``<output_dir>/<run_name>``; ValueError when ``run_name`` is not a plain folder name."""
        config.check_plain_name(run_name, "run_name")
        return cls(Path(output_dir) / run_name)

    @staticmethod
    def is_run_folder(path: Path) -> bool:
        """True when ``path`` holds a run's ``config.yaml`` beside its checkpoints or export."""
        path = Path(path)
        return (path / CONFIG_NAME).is_file() and ((path / "checkpoints").is_dir() or (path / "export").is_dir())

    @property
    def config_path(self) -> Path:
        return self.root / CONFIG_NAME

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def weights_path(self) -> Path:
        """``export/model_fp32.pt``: the consolidated fp32 weights."""
        return self.root / EXPORT_WEIGHTS

    @property
    def journal_dir(self) -> Path:
        return self.root / LOCAL_DIR_NAME

    @property
    def lock_path(self) -> Path:
        return self.root / LOCK_NAME

    @property
    def run_id_path(self) -> Path:
        """``mlflow_run_id``: written once the tracking store knows the run."""
        return self.root / RUN_ID_NAME

    def is_finished(self) -> bool:
        """True when the export holds the last complete checkpoint and the tracking store knows the run."""
        return self.run_id_path.is_file() and self.current_export() is not None

    def lock(self):
        """Hold this folder's lock for a block (a second job gets :class:`dist_syndr.files.LockedError`)."""
        return files.exclusive_lock(self.lock_path, f"run folder {self.root}")

    def has_training_files(self) -> bool:
        """True when checkpoints or an export of an earlier training are here."""
        return bool(checkpoint_tags(self.checkpoints)) or self.weights_path.is_file()

    def complete_tag(self) -> str | None:
        """The tag ``checkpoints/complete`` names (None without the pointer)."""
        return complete_tag(self.checkpoints)

    def mark_complete(self, tag: str) -> None:
        """Point ``checkpoints/complete`` at ``tag`` (once every rank has written it)."""
        files.write_text(self.checkpoints / POINTER_NAME, json.dumps({"tag": tag}))

    def prune(self, *, keep: int, current: str) -> None:
        """Remove all but the newest ``keep`` tags (never ``current``)."""
        tags = checkpoint_tags(self.checkpoints)
        for tag in tags[: max(0, len(tags) - keep)]:
            if tag != current:
                shutil.rmtree(self.checkpoints / tag, ignore_errors=True)

    def export_provenance(self) -> ExportProvenance | None:
        """What ``export/provenance.json`` records (None for exports written before it existed)."""
        path = self.export_dir / PROVENANCE_NAME
        if not path.is_file():
            return None
        try:
            return ExportProvenance(**json.loads(path.read_text()))
        except (ValueError, TypeError) as error:
            raise ValueError(f"{path}: unreadable export provenance ({error})") from None

    def record_export(self, provenance: ExportProvenance) -> None:
        """Write ``export/provenance.json`` (after the weights it describes)."""
        files.write_text(self.export_dir / PROVENANCE_NAME, json.dumps(asdict(provenance), sort_keys=True) + "\n")

    def current_export(self) -> Path | None:
        """``export/model_fp32.pt`` when it holds the weights of the tag ``complete`` names, else None.

        An export older than ``complete`` (training went on after it) is stale: None, with a warning.
        Exports written before provenance was recorded count as current.
        """
        if not self.weights_path.is_file():
            return None
        provenance, tag = self.export_provenance(), self.complete_tag()
        if provenance is None or tag is None or provenance.tag == tag:
            return self.weights_path
        log.warning(
            "%s: came from checkpoint %s, but checkpoints/complete names the newer %s: reading %s instead"
            " (launchers/export.py or a finished training rewrites the export)",
            self.weights_path,
            provenance.tag,
            tag,
            tag,
        )
        return None


def check_fresh_start(run: RunFolder) -> None:
    """``train.resume=never``: ValueError when ``run`` already holds an earlier training's files."""
    if run.has_training_files():
        raise ValueError(
            f"train.resume=never: {run.root} already holds checkpoints or an export of an earlier run; "
            "choose another run_name, remove the folder, or set train.resume=auto to continue it"
        )


def complete_tag(checkpoints: Path) -> str | None:
    """The tag ``<checkpoints>/complete`` names (None without the pointer); ValueError when it is unreadable or
    names a missing tag."""
    pointer = Path(checkpoints) / POINTER_NAME
    if not pointer.is_file():
        return None
    try:
        tag = json.loads(pointer.read_text())["tag"]
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{pointer}: unreadable checkpoint pointer ({error})") from None
    if not (Path(checkpoints) / tag).is_dir():
        raise ValueError(f"{pointer}: names checkpoint {tag}, which is missing")
    return tag


def latest_tag(checkpoints: Path) -> str | None:
    """The tag DeepSpeed's ``<checkpoints>/latest`` names (None without the file)."""
    latest = Path(checkpoints) / LATEST_NAME
    return latest.read_text().strip() or None if latest.is_file() else None


def last_tag(checkpoints: Path) -> str:
    """The tag a consumer reads: ``complete``'s; DeepSpeed's ``latest`` only where there is no ``complete``
    (a folder plain DeepSpeed wrote), with a warning. ValueError naming the tags there when neither exists."""
    checkpoints = Path(checkpoints)
    tag = complete_tag(checkpoints)
    if tag is not None:
        return tag
    tag = latest_tag(checkpoints)
    if tag is None:
        raise ValueError(
            f"{checkpoints}: no '{POINTER_NAME}' or '{LATEST_NAME}' pointer; pass one tag folder "
            f"(tags: {checkpoint_tags(checkpoints) or 'none'})"
        )
    if not (checkpoints / tag).is_dir():
        raise ValueError(f"{checkpoints / LATEST_NAME}: names checkpoint {tag}, which is missing")
    log.warning(
        "%s: no '%s' pointer (not written by this trainer); following DeepSpeed's '%s' (%s), which does not prove "
        "that every rank finished it",
        checkpoints,
        POINTER_NAME,
        LATEST_NAME,
        tag,
    )
    return tag


def checkpoint_tags(checkpoints: Path) -> list[str]:
    """The tag folders in ``checkpoints``, oldest first (mid-epoch tags of epoch e before ``epoch e`` itself)."""
    checkpoints = Path(checkpoints)
    if not checkpoints.is_dir():
        return []
    tags = [p.name for p in checkpoints.iterdir() if p.is_dir() and TAG_PATTERN.fullmatch(p.name)]
    return sorted(tags, key=_chronological)


def _chronological(tag: str) -> tuple[int, int]:
    epoch, step = TAG_PATTERN.fullmatch(tag).groups()
    return int(epoch), int(step) if step is not None else 10**9
