"""What makes scoring fast without changing its results: full batches across images, the compiled forward pass,
the default decoding workers."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from dist_syndr.scoring import compiled as compiled_module
from dist_syndr.scoring.compiled import COMPILE_MIN_IMAGES, CompiledForward, should_compile
from dist_syndr.scoring.job import decoding_workers, run_job
from dist_syndr.scoring.scorer import Scorer
from tests.test_evaluation import _run_dir, _tiny_model, _write_images


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("scoring-speed")
    _run_dir(root, _tiny_model(3))
    _write_images(root / "photos")
    return root


def _photos(tiny_run: Path) -> list[str]:
    return sorted(str(path) for path in (tiny_run / "photos").glob("img*.png"))


def test_crops_of_one_image_may_span_two_batches_and_score_as_alone(tiny_run):
    batched = Scorer.load(tiny_run / "runs" / "tiny", "cpu", batch_size=4)  # the run's 3 random crops per image
    sizes = []
    forward = batched.forward
    batched.forward = lambda crops: sizes.append(len(crops)) or forward(crops)
    results = batched.score_items(_photos(tiny_run))
    assert sizes == [4, 4, 4, 4, 4, 1]  # 7 images x 3 crops: full batches, the rest at the end
    with_failure = batched.score_items([*_photos(tiny_run)[:2], np.zeros((4, 4), np.float32)])
    assert [r.index for r in with_failure] == [0, 1, 2] and with_failure[2].error is not None  # the items' order
    alone = Scorer.load(tiny_run / "runs" / "tiny", "cpu", batch_size=3)
    expected = [alone.score_items([path])[0] for path in _photos(tiny_run)]
    assert [r.num_crops for r in results] == [3] * 7
    assert [r.name for r in results] == [r.name for r in expected]
    assert [r.score for r in results] == pytest.approx([r.score for r in expected], abs=1e-5)
    assert [r.spread for r in results] == pytest.approx([r.spread for r in expected], abs=1e-5)


@pytest.mark.timeout(300)
def test_a_compiled_job_scores_as_the_eager_one_and_compiles_once(tiny_run, tmp_path):
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    photos = _photos(tiny_run)
    eager = Scorer.load(tiny_run / "runs" / "tiny", "cpu", batch_size=4)
    run_job(lambda: eager, photos, tmp_path / "eager.jsonl", max_pixels=10**8, compile_mode="off")
    assert eager.compiled is None
    scorer = Scorer.load(tiny_run / "runs" / "tiny", "cpu", batch_size=4)
    summary = run_job(lambda: scorer, photos, tmp_path / "compiled.jsonl", max_pixels=10**8, compile_mode="on")
    assert summary.num_rows == 7 and scorer.compiled is not None and scorer.compiled.compile_seconds > 0
    rows = {json.loads(line)["path"]: json.loads(line) for line in (tmp_path / "compiled.jsonl").open()}
    expected = {json.loads(line)["path"]: json.loads(line) for line in (tmp_path / "eager.jsonl").open()}
    assert rows.keys() == expected.keys()
    for path, row in rows.items():  # inductor rounds in its own order: equal to float32 rounding
        assert row["score"] == pytest.approx(expected[path]["score"], abs=1e-5)
    # the last batch (1 crop) was padded to the compiled shape: no second graph
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1


def test_a_failed_compile_raises_when_asked_for_and_falls_back_under_auto(tiny_run, monkeypatch, caplog):
    def broken(self, windows):
        raise RuntimeError("no C++ compiler\nmore detail")

    monkeypatch.setattr(CompiledForward, "_compiled_outputs", broken)
    path = _photos(tiny_run)[:2]
    strict = Scorer.load(tiny_run / "runs" / "tiny", "cpu").compile()
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler"):
        strict.score(path)
    expected = Scorer.load(tiny_run / "runs" / "tiny", "cpu").score(path)
    lenient = Scorer.load(tiny_run / "runs" / "tiny", "cpu").compile(strict=False)
    with caplog.at_level(logging.WARNING, logger=compiled_module.__name__):
        np.testing.assert_array_equal(lenient.score(path), expected)
        np.testing.assert_array_equal(lenient.score(path), expected)
    warnings = [r.message for r in caplog.records if r.name == compiled_module.__name__]
    assert warnings == ["torch.compile failed, scoring without it: no C++ compiler"]  # once, not per batch


def test_auto_compiles_long_jobs_where_a_compiler_exists(monkeypatch):
    cpu = torch.device("cpu")
    assert should_compile("on", 1, cpu) and not should_compile("off", 10**6, cpu)
    assert not should_compile("auto", COMPILE_MIN_IMAGES - 1, cpu)
    assert should_compile("auto", COMPILE_MIN_IMAGES, cpu) == any(map(shutil.which, ("g++", "c++", "clang++")))
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert not should_compile("auto", 10**6, cpu) and should_compile("auto", 10**6, torch.device("cuda"))
    with pytest.raises(ValueError, match="compile must be one of auto, on, off, got 'yes'"):
        should_compile("yes", 1, cpu)


def test_decoding_workers_default_to_none_on_a_cpu_and_a_few_per_gpu(monkeypatch):
    assert decoding_workers(torch.device("cpu")) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert decoding_workers(torch.device("cuda")) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    assert decoding_workers(torch.device("cuda")) == 1


@pytest.mark.gpu
@pytest.mark.timeout(300)
def test_a_compiled_bf16_job_on_the_gpu_scores_as_the_eager_one(tiny_run, tmp_path):
    photos = _photos(tiny_run)
    outputs = {}
    for mode in ("off", "on"):
        scorer = Scorer.load(tiny_run / "runs" / "tiny", "cuda", batch_size=4, precision="bf16")
        out = tmp_path / f"{mode}.jsonl"
        run_job(lambda scorer=scorer: scorer, photos, out, max_pixels=10**8, compile_mode=mode)
        outputs[mode] = {json.loads(line)["path"]: json.loads(line)["score"] for line in out.open()}
    assert outputs["on"].keys() == outputs["off"].keys()
    for path, score in outputs["off"].items():
        assert outputs["on"][path] == pytest.approx(score, abs=5e-2), path
