"""A study's report: the Markdown and CSV tables, the PNG of means with error bars, and the MLflow parent run.

The parent run (``study-<name>``) holds the study's settings as parameters, the
tables and the figure as artifacts, and every training run becomes its child
(``mlflow.parentRunId``). Its id is kept in the study folder, so a rerun reports
into the same parent.

Shapes: none.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from dist_syndr import files
from dist_syndr.study.results import MEASURES, RunValues, SummaryRow
from dist_syndr.study.runner import RunOutcome

PARENT_ID_NAME = "parent_run_id"


def markdown(rows: list[SummaryRow], diagnostics: dict[str, dict[str, float]], num_seeds: int) -> str:
    """Per target: one line per variant, each measure as ``mean ± sd``, then ``Δ [95% CI] p`` from the baseline."""
    sections = []
    for target in sorted({row.target for row in rows}):
        header = [
            "variant",
            *(f"{m} mean ± sd" for m in MEASURES),
            *(f"Δ{m} vs baseline [95% CI], p" for m in MEASURES),
        ]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for variant in dict.fromkeys(row.variant for row in rows):
            cells = {row.measure: row for row in rows if row.target == target and row.variant == variant}
            spreads = [_mean_sd(cells[m].spread) for m in MEASURES]
            differences = [_difference(cells[m].difference) for m in MEASURES]
            lines.append("| " + " | ".join([variant, *spreads, *differences]) + " |")
        sections.append(f"### Target `{target}` ({num_seeds} seeds)\n\n" + "\n".join(lines))
    names = sorted({name for means in diagnostics.values() for name in means})
    if names:
        lines = ["| variant | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 1)]
        for variant, means in diagnostics.items():
            lines.append(f"| {variant} | " + " | ".join(_number(means.get(name)) for name in names) + " |")
        sections.append(
            "### Clustering measures (last epoch, mean over seeds; logged where DRCDown ran)\n\n" + "\n".join(lines)
        )
    sections.append(
        "LAST: the final epoch. BEST: each run's epoch with the highest SRCC on that target, chosen on the test set "
        "(as the paper reports it), so optimistic. Δ: variant minus baseline with the same seed, mean over seeds; "
        "95% CI: percentile bootstrap of that mean (10,000 resamples, seed 0); p: two-sided paired t-test."
    )
    return "\n\n".join(sections) + "\n"


def csv_text(rows: list[SummaryRow]) -> str:
    """One line per (target, measure, variant), every number in full."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(
        ["target", "measure", "variant", "seeds", "mean", "sd", "diff_mean", "diff_ci_low", "diff_ci_high", "p_value"]
    )
    for row in rows:
        difference = row.difference
        extra = (
            ["", "", "", ""]
            if difference is None
            else [difference.mean, difference.low, difference.high, difference.p_value]
        )
        writer.writerow(
            [row.target, row.measure, row.variant, row.spread.count, row.spread.mean, row.spread.std, *extra]
        )
    return buffer.getvalue()


def plot(rows: list[SummaryRow], path: Path) -> Path:
    """Means with standard-deviation error bars per variant, one panel per target and measure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    targets = sorted({row.target for row in rows})
    figure, axes = plt.subplots(
        len(targets), len(MEASURES), figsize=(3.2 * len(MEASURES), 2.8 * len(targets)), squeeze=False
    )
    for i, target in enumerate(targets):
        for j, measure in enumerate(MEASURES):
            cells = [row for row in rows if row.target == target and row.measure == measure]
            means = [row.spread.mean for row in cells]
            errors = [0.0 if math.isnan(row.spread.std) else row.spread.std for row in cells]
            axes[i][j].bar([row.variant for row in cells], means, yerr=errors, capsize=4, color="#4c72b0")
            axes[i][j].set_title(f"{target}: {measure}", fontsize=9)
    figure.tight_layout()
    with files.atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)
    return path


def write_and_log(
    client, study_dir: Path, outcomes: list[RunOutcome], runs: list[RunValues], texts: dict, params: dict
) -> str:
    """Write ``texts`` (file name -> content) and the figure under ``study_dir``; log them to the parent run, made
    once; tag every training run as its child. Returns the parent run id."""
    for name, text in texts.items():
        files.write_text(study_dir / name, text)
    parent = _parent_run(client, study_dir, outcomes[0].run_id, params)
    for outcome in outcomes:
        client.set_tag(outcome.run_id, "mlflow.parentRunId", parent)
    for name in [*texts, "study.png"]:
        client.log_artifact(parent, str(study_dir / name), "study")
    for run in runs:
        client.set_tag(run.run_id, "study.variant", run.variant)
    client.set_terminated(parent, "FINISHED")
    return parent


def _parent_run(client, study_dir: Path, child_id: str, params: dict) -> str:
    recorded = study_dir / PARENT_ID_NAME
    if recorded.is_file():
        return recorded.read_text().strip()
    experiment = client.get_run(child_id).info.experiment_id
    parent = client.create_run(experiment, run_name=f"study-{study_dir.name}").info.run_id
    for key, value in params.items():
        client.log_param(parent, key, str(value)[:500])
    files.write_text(recorded, parent)
    return parent


def _mean_sd(spread) -> str:
    if spread.count == 0:
        return "-"
    return f"{spread.mean:.4f}" if math.isnan(spread.std) else f"{spread.mean:.4f} ± {spread.std:.4f}"


def _difference(difference) -> str:
    if difference is None:
        return "(baseline)"
    if difference.count == 0:
        return "-"
    interval = "" if math.isnan(difference.low) else f" [{difference.low:+.4f}, {difference.high:+.4f}]"
    p_value = "" if math.isnan(difference.p_value) else f", p={difference.p_value:.3g}"
    return f"{difference.mean:+.4f}{interval}{p_value}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"
