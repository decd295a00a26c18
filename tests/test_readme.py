"""README snippets run as written (a doc that drifts is a bug)."""

from __future__ import annotations

import re

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
