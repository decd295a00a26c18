"""README snippets run as written (a doc that drifts is a bug): every Python block executes and every
launcher the README shows answers ``--help``."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from dist_syndr import config
from dist_syndr.sharding import writer
from tests.conftest import PROJECT_ROOT


def _section_code(title: str) -> str:
    text = (PROJECT_ROOT / "README.md").read_text()
    section = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_opens_with_the_two_commands():
    text = (PROJECT_ROOT / "README.md").read_text()
    commands = re.search(r"```\n(.*?)```", text, re.S).group(1)
    assert [line.split()[:2] for line in commands.strip().splitlines()] == [["make", "demo"], ["make", "test"]]
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    assert "\ntest:" in makefile and "\ndemo:" in makefile


@pytest.mark.timeout(180)
def test_loading_shards_snippet_runs(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    items = []
    for i in range(12):
        path = tmp_path / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, (240, 250, 3), dtype=np.uint8)).save(path)
        items.append(
            writer.WorkItem(
                key=f"demo/img{i}", source_path=str(path), score=float(i % 10), meta={"origin": "original"}
            )
        )
    monkeypatch.chdir(tmp_path)
    writer.write_shard_set(
        items, tmp_path / "shards" / "kadid-bid", writer.WriteOptions(samples_per_shard=5, num_workers=1), {}
    )
    seen = []
    namespace = {
        "cfg": config.load(None, ["data.batch_size=4", "data.num_workers=1"]),
        "epoch": 0,
        "world": 1,
        "rank": 0,
        "drcdown_kept": [f"demo/img{i}" for i in range(10)],
    }
    code = _section_code("Loading shards").replace(
        "        ...", "        seen.extend(batch.keys); assert batch.images.shape[1:] == (3, 224, 224)"
    )
    namespace["seen"] = seen
    exec(compile(code, "README.md", "exec"), namespace)
    # 10 kept, cut to whole batches of 4; upsampled keys (none here) would always be kept.
    assert len(seen) == len(set(seen)) == 8 and set(seen) <= set(namespace["drcdown_kept"])


def _python_sections() -> list[str]:
    """The title of the section holding each Python block of the README, in order."""
    titles, current = [], ""
    for line in (PROJECT_ROOT / "README.md").read_text().splitlines():
        if line.startswith("## "):
            current = line[3:]
        elif line.strip() == "```python":
            titles.append(current)
    return titles


def test_every_python_block_of_the_readme_is_executed_by_a_test():
    # test_loading_shards_snippet_runs, test_scoring_snippet_runs and test_reshaping_api_snippet_runs.
    assert _python_sections() == ["Loading shards", "Scoring images", "Reshaping API"]


@pytest.mark.timeout(180)
def test_scoring_snippet_runs(tmp_path):
    from tests.test_evaluation import _run_dir, _tiny_model, _write_images

    run_dir = _run_dir(tmp_path, _tiny_model(3))
    (path, _), *_ = _write_images(tmp_path / "photos", count=1)
    namespace = {"run_dir": run_dir, "photo_path": path, "pil_image": Image.open(path)}
    namespace["uint8_array"] = np.array(Image.open(path).convert("RGB"))
    exec(compile(_section_code("Scoring images"), "README.md", "exec"), namespace)
    scores = namespace["scores"]
    assert scores.shape == (3,) and np.allclose(scores, scores[0], atol=1e-6)


@pytest.mark.timeout(120)
def test_reshaping_api_snippet_runs():
    from dist_syndr.pools.synthetic import clustered_pool, reference_sets

    pool = clustered_pool(600, 32, 12, seed=0)
    sets = reference_sets(20, 60, 32, 0)
    namespace = {
        "features": pool.features,
        "labels": pool.labels,
        "run_seed": 0,
        "epoch": 3,
        "train_ref_features": sets.train,
        "candidate_features": sets.candidates,
        "label_table": sets.train_labels,
    }
    exec(compile(_section_code("Reshaping API"), "README.md", "exec"), namespace)
    assert namespace["clusters"] and all(c.dtype == np.int64 and c.size >= 2 for c in namespace["clusters"])
    kept = namespace["kept"]
    assert kept.dtype == np.int64 and 0 < kept.size < pool.features.shape[0] and np.all(np.diff(kept) > 0)
    selected = namespace["selected"]
    assert namespace["labels"].shape == (selected.size, sets.train_labels.shape[1])


def _launchers_shown() -> list[str]:
    text = (PROJECT_ROOT / "README.md").read_text()
    return sorted(set(re.findall(r"\b(launchers/\w+\.py)\b", text)))


@pytest.mark.timeout(300)
def test_every_launcher_the_readme_shows_answers_help():
    shown = _launchers_shown()
    expected = {"shard", "train", "evaluate", "bench", "score", "export"}
    assert {f"launchers/{name}.py" for name in expected} <= set(shown)
    for launcher in shown:
        result = subprocess.run(
            [sys.executable, launcher, "--help"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, f"{launcher} --help: {result.stderr[-500:]}"
        assert result.stdout.startswith("usage:"), launcher
