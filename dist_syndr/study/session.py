"""One study from start to report: plan the runs, train what is missing, read them back, summarise, report.

What ``launchers/study.py`` runs. The study folder is
``<train.output_dir>/studies/<name>``: ``study.md``, ``study.csv``, ``study.png``,
the parent run's id and one log per training.

Shapes: none.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from dist_syndr import config
from dist_syndr.study import report, results, runner
from dist_syndr.study.plan import plan_study
from dist_syndr.tracking.tracker import tracking_uri


@dataclass(frozen=True)
class StudyReport:
    """What a study produced."""

    folder: Path
    parent_run_id: str
    outcomes: list[runner.RunOutcome]
    rows: list[results.SummaryRow]
    markdown: str


def run_study(
    preset: Path,
    variants: list[str],
    num_seeds: int,
    overrides: list[str],
    *,
    name: str | None = None,
    parallel: int = 1,
) -> StudyReport:
    """Train (or reuse) every variant x seed of ``preset`` and report; seeds are the preset's seed onwards."""
    if num_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {num_seeds}")
    cfg = config.load(preset, overrides)
    name = name or f"{cfg.run_name}-study"
    seeds = [cfg.seed + offset for offset in range(num_seeds)]
    runs = plan_study(name, variants, seeds, overrides)
    folder = Path(cfg.train.output_dir) / "studies" / name
    outcomes = runner.run_all(preset, runs, folder / "logs", parallel=parallel)

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=tracking_uri(Path("mlruns")))
    values = results.collect(client, outcomes)
    rows = results.summarise(values, variants, seeds)
    text = report.markdown(rows, results.diagnostics_means(values, variants), len(seeds))
    report.plot(rows, folder / "study.png")
    params = {"preset": preset, "variants": ",".join(variants), "seeds": ",".join(map(str, seeds))}
    params["overrides"] = " ".join(overrides) or "-"
    texts = {"study.md": f"# Study {name}\n\n{text}", "study.csv": report.csv_text(rows)}
    parent = report.write_and_log(client, folder, outcomes, values, texts, params)
    return StudyReport(folder, parent, outcomes, rows, text)
