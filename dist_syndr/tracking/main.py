"""Compare training runs side by side, and push tracking journals a server outage left behind.

    python launchers/compare.py RUN_ID [RUN_ID ...]
    python launchers/compare.py --experiment dist_syndr
    python launchers/compare.py --sync runs/<run_name> [runs/<other> ...]      # push pending records only
    python launchers/compare.py RUN_ID RUN_ID --sync runs/a runs/b             # push, then compare

The table (config differences, LAST and BEST epoch srcc/plcc per target, mean
training images/s, kept counts) is printed and written as Markdown and CSV to
``--out``; both files are logged to a small ``compare`` run in the same MLflow
experiment unless ``--no-log``. The store is ``--tracking-uri``, else
``MLFLOW_TRACKING_URI``, else the local ``mlruns/`` store the trainer uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dist_syndr import cli, runtime
from dist_syndr.tracking import compare
from dist_syndr.tracking import tracker as tracking

LOCAL_STORE = Path("mlruns")  # the trainer's default store, relative to where it ran


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_ids", nargs="*", metavar="RUN_ID", help="MLflow run ids to compare")
    parser.add_argument("--experiment", help="compare every run of this MLflow experiment")
    parser.add_argument(
        "--sync",
        type=Path,
        nargs="+",
        action="extend",
        default=[],
        metavar="DIR",
        help="run folder or journal to push first",
    )
    parser.add_argument("--tracking-uri", help="MLflow store to read (default: MLFLOW_TRACKING_URI or mlruns/)")
    parser.add_argument(
        "--out", type=Path, default=Path("runs/compare"), help="folder for the Markdown and CSV tables"
    )
    parser.add_argument("--no-log", action="store_true", help="do not log the tables to a 'compare' MLflow run")
    args = parser.parse_args(argv)
    if args.run_ids and args.experiment:
        parser.error("give run ids or --experiment, not both")
    if not (args.run_ids or args.experiment or args.sync):
        parser.error("nothing to do: give run ids, --experiment or --sync")

    # ---- push pending tracking journals
    for folder in args.sync:
        report = tracking.sync(folder, show_progress=True)
        print(report.describe())
        if not report.is_complete:
            print(
                f"error: {report.local_dir}: sync stopped early ({report.error}); run it again later", file=sys.stderr
            )
            return 1
    if not (args.run_ids or args.experiment):
        return 0

    # ---- fetch, compare, write
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=_store_uri(args.tracking_uri))
    run_ids = args.run_ids or compare.experiment_run_ids(client, args.experiment)
    records = compare.fetch_runs(client, run_ids)
    table = compare.compare(records)
    paths = compare.write_tables(table, args.out)
    print(compare.to_markdown(table))
    print(f"written: {paths[0]} and {paths[1]}")

    # ---- record the comparison beside the runs
    if not args.no_log:
        compare_run = compare.log_comparison(client, records[0].experiment_id, table, paths)
        print(f"logged as MLflow run {compare_run} ({compare.COMPARE_RUN_NAME})")
    return 0


def _store_uri(explicit: str | None) -> str:
    """``--tracking-uri``, ``MLFLOW_TRACKING_URI`` or the trainer's local store, which must exist
    (comparing from the wrong folder should not create an empty one)."""
    if explicit or os.environ.get("MLFLOW_TRACKING_URI"):
        return explicit or os.environ["MLFLOW_TRACKING_URI"]
    if not (LOCAL_STORE / "mlflow.db").is_file():
        raise ValueError(
            f"no MLflow store at {LOCAL_STORE / 'mlflow.db'}: run from the training folder, or give --tracking-uri"
        )
    return tracking.tracking_uri(LOCAL_STORE)


if __name__ == "__main__":
    runtime.setup_logging("INFO", rank=0)  # here, not in main(): callers of main() keep their own logging
    cli.run(main)
