"""Side-by-side comparison of training runs from MLflow: config differences, last and best epochs.

:func:`fetch_runs` reads runs from a store into :class:`RunRecord` values;
:func:`compare` is a pure function of those records; :func:`to_markdown` and
:func:`to_csv` render the table, :func:`write_tables` writes both atomically and
:func:`log_comparison` records them as artifacts of a small ``compare`` run.

Per evaluation target (``<target>/srcc`` and ``<target>/plcc`` logged at
step = epoch) the table gives the LAST epoch and the BEST epoch, best meaning
the highest ``<target>/srcc`` (earliest on ties; the paper picks its reported
epoch that way on the test set, so both are always shown).

Shapes: none.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import math
from pathlib import Path

from dist_syndr import files

COMPARE_RUN_NAME = "compare"
KIND_TAG = "dist_syndr.kind"  # "compare" on the runs this module logs; they are never compared
_EPOCH_KEYS = ("images_per_second", "kept")  # epoch-level metrics the table reads besides the targets
_NOT_CONFIG = frozenset({"run_name"})  # shown as its own row


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """What the table needs of one run."""

    run_id: str
    run_name: str
    status: str
    experiment_id: str
    params: dict[str, str]
    history: dict[str, dict[int, float]]  # epoch-level metric -> {epoch: value}


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A table with one column per run: ``rows`` are (label, one value per run; ``None`` = absent)."""

    run_ids: list[str]
    columns: list[str]
    rows: list[tuple[str, list[object]]]

    def row(self, label: str) -> list[object]:
        """The values of the row named ``label``."""
        for name, values in self.rows:
            if name == label:
                return values
        raise KeyError(label)


_NOT_TARGETS = ("train/", "best/", "diag/", "eval/")  # step metrics, running bests, diagnostics, launchers/evaluate.py


def targets_of(record: RunRecord) -> list[str]:
    """Evaluation targets of a run: every ``<target>/srcc`` the trainer logs per epoch."""
    return sorted(
        key[: -len("/srcc")] for key in record.history if key.endswith("/srcc") and not key.startswith(_NOT_TARGETS)
    )


def evaluated_targets(record: RunRecord) -> list[str]:
    """Targets scored by ``launchers/evaluate.py`` (``eval/<target>/srcc``)."""
    return sorted(
        key[len("eval/") : -len("/srcc")]
        for key in record.history
        if key.startswith("eval/") and key.endswith("/srcc")
    )


def best_epoch(history: dict[int, float]) -> int | None:
    """The epoch with the highest value (NaN ignored, earliest on ties); ``None`` when there is none."""
    finite = [(epoch, value) for epoch, value in history.items() if not math.isnan(value)]
    if not finite:
        return None
    return min(finite, key=lambda item: (-item[1], item[0]))[0]


def compare(records: list[RunRecord]) -> Comparison:
    """The comparison table of ``records`` (pure: no store access)."""
    if not records:
        raise ValueError("nothing to compare: no runs given")
    rows: list[tuple[str, list[object]]] = [
        ("run name", [r.run_name for r in records]),
        ("run id", [r.run_id for r in records]),
        ("status", [r.status for r in records]),
    ]
    for key in sorted(set().union(*(r.params for r in records)) - _NOT_CONFIG):
        values = [r.params.get(key) for r in records]
        if len(set(values)) > 1:
            rows.append((f"config: {key}", values))
    for target in sorted(set().union(*(targets_of(r) for r in records))):
        rows.extend(_target_rows(target, records))
    for target in sorted(set().union(*(evaluated_targets(r) for r in records))):
        for metric in ("srcc", "plcc"):  # the latest evaluate.py result of the run's weights
            rows.append(
                (
                    f"{target}: {metric} (evaluate.py)",
                    [_at(r.history.get(f"eval/{target}/{metric}", {}), max) for r in records],
                )
            )
    epochs_logged = [sorted(r.history.get("kept", {}) or r.history.get("images_per_second", {})) for r in records]
    rows.append(("epochs logged", [len(epochs) or None for epochs in epochs_logged]))
    rows.append(
        ("train images/s (mean over epochs)", [_mean(r.history.get("images_per_second", {})) for r in records])
    )
    rows.append(("kept (first epoch)", [_at(r.history.get("kept", {}), min) for r in records]))
    rows.append(("kept (last epoch)", [_at(r.history.get("kept", {}), max) for r in records]))
    columns = [f"{r.run_name} ({r.run_id[:8]})" for r in records]
    return Comparison([r.run_id for r in records], columns, rows)


def _target_rows(target: str, records: list[RunRecord]) -> list[tuple[str, list[object]]]:
    last_epoch, last_srcc, last_plcc, best, best_srcc, best_plcc = ([] for _ in range(6))
    for record in records:
        srcc = record.history.get(f"{target}/srcc", {})
        plcc = record.history.get(f"{target}/plcc", {})
        last = max(srcc) if srcc else None
        top = best_epoch(srcc)
        last_epoch.append(last)
        last_srcc.append(srcc.get(last))
        last_plcc.append(plcc.get(last))
        best.append(top)
        best_srcc.append(srcc.get(top))
        best_plcc.append(plcc.get(top))
    return [
        (f"{target}: LAST epoch", last_epoch),
        (f"{target}: srcc @ LAST", last_srcc),
        (f"{target}: plcc @ LAST", last_plcc),
        (f"{target}: BEST epoch (max srcc)", best),
        (f"{target}: srcc @ BEST", best_srcc),
        (f"{target}: plcc @ BEST", best_plcc),
    ]


def _mean(history: dict[int, float]) -> float | None:
    values = [v for v in history.values() if not math.isnan(v)]
    return sum(values) / len(values) if values else None


def _at(history: dict[int, float], pick) -> float | None:
    return history[pick(history)] if history else None


def summary(comparison: Comparison, labels: list[str]) -> Comparison:
    """The rows named ``labels`` (those present, in that order): a compact view of a comparison."""
    present = dict(comparison.rows)
    return Comparison(
        comparison.run_ids, comparison.columns, [(label, present[label]) for label in labels if label in present]
    )


def to_markdown(comparison: Comparison) -> str:
    """The table as GitHub Markdown (numbers to 4 decimals, ``–`` for absent)."""
    header = ["", *comparison.columns]
    lines = [_markdown_line(header), _markdown_line(["---"] * len(header))]
    for label, values in comparison.rows:
        lines.append(_markdown_line([label, *(_format(v, decimals=4) for v in values)]))
    return "\n".join(lines) + "\n"


def to_csv(comparison: Comparison) -> str:
    """The same table as CSV (full precision, empty for absent)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["field", *comparison.columns])
    for label, values in comparison.rows:
        writer.writerow([label, *(_format(v, decimals=None) for v in values)])
    return buffer.getvalue()


def _markdown_line(cells: list[str]) -> str:
    return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"


def _format(value: object, *, decimals: int | None) -> str:
    if value is None:
        return "–" if decimals is not None else ""
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.{decimals}f}" if decimals is not None else repr(value)
    return str(value)


def write_tables(comparison: Comparison, out_dir: Path) -> tuple[Path, Path]:
    """Write ``compare-<hash of the run ids>.md`` and ``.csv`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha1(",".join(sorted(comparison.run_ids)).encode()).hexdigest()[:10]
    paths = out_dir / f"compare-{digest}.md", out_dir / f"compare-{digest}.csv"
    for path, text in zip(paths, (to_markdown(comparison), to_csv(comparison)), strict=True):
        files.write_text(path, text)
    return paths


# ---- store access


def fetch_runs(client, run_ids: list[str]) -> list[RunRecord]:
    """Read ``run_ids`` from ``client``'s store (an ``mlflow.MlflowClient``); unknown ids are a ValueError."""
    from mlflow.exceptions import MlflowException

    records = []
    for run_id in run_ids:
        try:
            run = client.get_run(run_id)
        except MlflowException as error:
            raise ValueError(f"run {run_id}: not found in {client.tracking_uri} ({error.error_code})") from error
        keys = [
            k
            for k in run.data.metrics
            if k in _EPOCH_KEYS or (k.endswith(("/srcc", "/plcc")) and not k.startswith("train/"))
        ]
        history = {}
        for key in sorted(keys):
            points = sorted(client.get_metric_history(run_id, key), key=lambda m: (m.timestamp, m.step))
            history[key] = {m.step: m.value for m in points}  # an epoch logged twice (resumed run): the later value
        records.append(
            RunRecord(
                run_id,
                run.info.run_name or "",
                run.info.status,
                run.info.experiment_id,
                dict(run.data.params),
                history,
            )
        )
    return records


def experiment_run_ids(client, name: str) -> list[str]:
    """Ids of an experiment's active runs, oldest first, without earlier ``compare`` runs."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise ValueError(f"experiment {name!r}: not found in {client.tracking_uri}")
    run_ids, token = [], None
    while True:
        page = client.search_runs(
            [experiment.experiment_id], order_by=["attributes.start_time ASC"], max_results=1000, page_token=token
        )
        run_ids += [run.info.run_id for run in page if run.data.tags.get(KIND_TAG) != COMPARE_RUN_NAME]
        token = page.token
        if not token:
            break
    if not run_ids:
        raise ValueError(f"experiment {name!r}: no runs to compare in {client.tracking_uri}")
    return run_ids


def log_comparison(client, experiment_id: str, comparison: Comparison, paths: tuple[Path, ...]) -> str:
    """Log the written tables as artifacts of a new ``compare`` run; returns its id."""
    tags = {KIND_TAG: COMPARE_RUN_NAME, "dist_syndr.compared_runs": ",".join(comparison.run_ids)[:5000]}
    run_id = client.create_run(experiment_id, run_name=COMPARE_RUN_NAME, tags=tags).info.run_id
    client.log_param(run_id, "num_runs", len(comparison.run_ids))
    for path in paths:
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id
