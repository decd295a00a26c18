"""Typed config: presets, overrides, errors that name the key, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from dist_syndr import config
from tests.conftest import PROJECT_ROOT


def test_defaults_are_the_reference_settings():
    cfg = config.load()
    assert cfg.reshape.drcdown.sim_threshold == 0.9 and cfg.reshape.drcdown.cap == 20
    assert cfg.reshape.ddcup.top_k == 5 and cfg.reshape.ddcup.window == 0.05
    assert cfg.reshape.ddcup.weighting == "reference"
    assert cfg.reshape.ddcup.distortion_types == (1, 3, 9, 21, 23, 25)


def test_overrides_parse_values_as_yaml():
    cfg = config.load(
        None,
        ["reshape.drcdown.cap=30", "reshape.ddcup.target=livec", "reshape.ddcup.levels=[1,2]", "runtime.faiss=cpu"],
    )
    assert cfg.reshape.drcdown.cap == 30
    assert cfg.reshape.ddcup.distortion_types == (1, 3, 10, 17, 18, 25)
    assert cfg.reshape.ddcup.levels == [1, 2]
    assert cfg.runtime.faiss == "cpu"


@pytest.mark.parametrize(
    "override, key",
    [
        ("reshape.drcdown.capp=3", "reshape.drcdown.capp"),
        ("reshape.drcdown.cap=abc", "reshape.drcdown.cap"),
        ("reshape.drcdown.cap=0", "reshape.drcdown.cap"),
        ("reshape.ddcup.weighting=mean", "reshape.ddcup.weighting"),
        ("reshape.ddcup.levels=[0, 6]", "reshape.ddcup.levels"),
        ("reshape.neighbors.index=hnsw", "reshape.neighbors.index"),
        ("runtime.device=tpu", "runtime.device"),
        ("nosuchsection.x=1", "nosuchsection"),
        ("seed=true", "seed"),
        ("reshape=3", "reshape"),
    ],
)
def test_bad_keys_and_values_name_the_key(override, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        config.load(None, [override])


def test_malformed_override_and_missing_file():
    with pytest.raises(ValueError, match="key=value"):
        config.load(None, ["reshape.drcdown.cap"])
    with pytest.raises(ValueError, match="does not exist"):
        config.load("configs/nope.yaml")


def test_dump_round_trips(tmp_path: Path):
    cfg = config.load(None, ["seed=7", "reshape.ddcup.types=[2, 4]"])
    path = tmp_path / "resolved.yaml"
    config.dump(cfg, path)
    again = config.load(path)
    assert again == cfg
    assert config.flatten(cfg)["reshape.ddcup.types"] == [2, 4]


@pytest.mark.parametrize("preset", sorted((PROJECT_ROOT / "configs").glob("**/*.yaml")), ids=lambda p: p.name)
def test_every_preset_loads(preset: Path):
    config.load(preset)


def test_choices_are_checked_from_their_literal_type_and_older_values_still_load(tmp_path):
    with pytest.raises(ValueError, match="data.verify_checksums: expected one of 'members', 'shards', 'off'"):
        config.load(None, ["data.verify_checksums=sometimes"])
    with pytest.raises(ValueError, match="loader: expected one of 'auto', 'dali', 'torch', got 'x'"):
        config.DataConfig(loader="x")  # built in Python: the same check, from the same type
    with pytest.raises(ValueError, match="train.zero_stage: expected one of 0, 1, 2, 3, got True"):
        config.load(None, ["train.zero_stage=true"])
    older = tmp_path / "config.yaml"  # a run folder from before the checksum modes
    older.write_text("data:\n  verify_checksums: true\n")
    assert config.load(older).data.verify_checksums == "shards"
    older.write_text("data:\n  verify_checksums: false\n")
    assert config.load(older).data.verify_checksums == "off"
