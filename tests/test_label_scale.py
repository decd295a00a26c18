"""The training labels' own scale: readers keep each label as the dataset gave it, the sharding step records
the one min-max map of its pool, and scoring maps predictions back (``score_original``)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from dist_syndr import config
from dist_syndr.pools.generic import read_csv_pool
from dist_syndr.pools.scores import LabelScale, fit_label_scale, minmax_to_ten
from dist_syndr.runs import card as model_card
from dist_syndr.scoring.scorer import Scorer
from dist_syndr.sharding.plan import build_plan, run_shard_step
from dist_syndr.sharding.shard_set import ShardSet
from dist_syndr.sharding.writer import WriteOptions
from tests.test_evaluation import _run_dir, _tiny_model, _write_images


def test_the_fitted_scale_inverts_the_min_max_map_and_refuses_what_is_not_one_map():
    dmos = np.array([1.0, 2.5, 4.2, 3.3, 1.7])
    scale = fit_label_scale("kadid10k", minmax_to_ten(dmos), dmos)
    assert (scale.at_0, scale.at_10) == pytest.approx((1.0, 4.2))
    np.testing.assert_allclose(scale.to_original(minmax_to_ten(dmos)), dmos)
    flipped = fit_label_scale("live", minmax_to_ten(dmos, is_lower_better=True), dmos)  # DMOS: lower is better
    assert (flipped.at_0, flipped.at_10) == pytest.approx((4.2, 1.0))
    assert LabelScale.from_dict(scale.as_dict()) == scale and LabelScale.from_dict(None) is None
    two_datasets = np.concatenate([minmax_to_ten(dmos), minmax_to_ten(dmos * 20)])
    assert fit_label_scale("mixed", two_datasets, np.concatenate([dmos, dmos * 20])) is None
    assert fit_label_scale("weak", [0.0, 10.0], [None, 3.0]) is None
    assert fit_label_scale("flat", [5.0, 5.0], [3.0, 3.0]) is None


def _csv_pool(folder, mos):
    folder.mkdir(parents=True)
    lines = ["path,score"]
    for number, value in enumerate(mos):
        Image.fromarray(np.full((40, 48, 3), 40 * number, np.uint8)).save(folder / f"img{number}.png")
        lines.append(f"img{number}.png,{value}")
    (folder / "mos.csv").write_text("\n".join(lines) + "\n")
    return folder / "mos.csv"


def test_a_labelled_pool_records_its_scale_in_the_index_and_scoring_maps_back(tmp_path):
    mos = [1.2, 3.4, 2.8, 4.6]  # a 1-5 MOS, higher is better
    labels = _csv_pool(tmp_path / "pool", mos)
    assert [s.raw_score for s in read_csv_pool(labels)] == mos
    overrides = ["shard.pool.kind=csv", f"shard.pool.root={labels}", "shard.pool.labels=dataset"]
    cfg = config.load(None, [*overrides, "shard.samples_per_shard=2", "runtime.device=cpu"])
    assert build_plan(cfg).label_scale == {"name": "mos", "at_0": pytest.approx(1.2), "at_10": pytest.approx(4.6)}
    run_shard_step(cfg, tmp_path / "set", WriteOptions(samples_per_shard=2, num_workers=1))
    written = ShardSet(tmp_path / "set").config["label_scale"]
    assert written["at_0"] == pytest.approx(1.2) and written["at_10"] == pytest.approx(4.6)

    run_dir = _run_dir(tmp_path, _tiny_model(3))  # a run whose card carries that scale, as training writes it
    card = {"training_set": {"path": str(tmp_path / "set"), "label_scale": written}}
    (run_dir / "export" / model_card.CARD_NAME).write_text(json.dumps(card))
    photos = [path for path, _ in _write_images(tmp_path / "photos", count=3)]
    scorer = Scorer.load(run_dir, "cpu", crop_mode="centre")
    assert scorer.label_scale == LabelScale("mos", written["at_0"], written["at_10"])
    results = scorer.score_items([str(path) for path in photos])
    for result in results:
        assert result.score_original == pytest.approx(1.2 + (4.6 - 1.2) * result.score / 10)

    from dist_syndr.scoring.job import run_job

    run_job(lambda: scorer, [str(path) for path in photos], tmp_path / "scores.csv", num_workers=0, max_pixels=10**8)
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    for row in rows:
        assert float(row["score_original"]) == pytest.approx(1.2 + 3.4 * float(row["score"]) / 10, abs=1e-9)
    # the MLflow model takes the scale from the card it carries
    import mlflow.pyfunc
    import pandas as pd

    from dist_syndr.export import mlflow_model

    card_path = run_dir / "export" / model_card.CARD_NAME
    weights = run_dir / "export" / "model_fp32.pt"
    folder = mlflow_model.save(weights, run_dir / "config.yaml", card_path, tmp_path / "mlflow_model")
    predicted = mlflow.pyfunc.load_model(str(folder)).predict(pd.DataFrame({"path": [str(p) for p in photos]}))
    scores, originals = predicted["score"].astype(float), predicted["score_original"].astype(float)  # null-able
    np.testing.assert_allclose(originals, 1.2 + 3.4 * scores / 10, atol=1e-9)


def test_without_a_known_scale_the_column_stays_empty(tmp_path):
    run_dir = _run_dir(tmp_path, _tiny_model(3))  # no card, no training set on disk
    photos = [str(path) for path, _ in _write_images(tmp_path / "photos", count=2)]
    scorer = Scorer.load(run_dir, "cpu", crop_mode="centre")
    assert scorer.label_scale is None
    from dist_syndr.scoring.job import run_job

    run_job(lambda: scorer, photos, tmp_path / "scores.jsonl", num_workers=0, max_pixels=10**8)
    rows = [json.loads(line) for line in (tmp_path / "scores.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(row["score_original"] is None for row in rows)
