"""features/weights.py: any timm backbone, weights from a file, from timm or from the Hub, through an offline cache
the test builds itself (nothing here reaches the network)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dist_syndr import files
from dist_syndr.features import weights
from dist_syndr.sharding.shard_set import ShardSet
from tests.conftest import PROJECT_ROOT
from tests.training_runs import PRESET, metric_history, overrides, run_env

REPO = "timm/resnet18.a1_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def build_offline_cache(hf_home: Path) -> Path:
    """A Hugging Face cache holding REPO at COMMIT, as ``hf_hub_download`` lays it out: random resnet18 weights
    (seeded) as ``model.safetensors`` and timm's ``config.json``. Returns the weights file."""
    import timm
    import torch
    from safetensors.torch import save_file

    snapshot = hf_home / "hub" / f"models--{REPO.replace('/', '--')}" / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text(COMMIT)
    torch.manual_seed(7)
    model = timm.create_model("resnet18", pretrained=False)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(snapshot / "model.safetensors"))
    pretrained = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225], "num_classes": 1000}
    config = {"architecture": "resnet18", "num_classes": 1000, "pretrained_cfg": pretrained}
    (snapshot / "config.json").write_text(json.dumps(config))
    return snapshot / "model.safetensors"


def _offline_env(hf_home: Path) -> dict:
    return run_env() | {"HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}


_PROBE = """
import json, sys
from pathlib import Path
import numpy as np, torch
from safetensors.torch import load_file
from dist_syndr import config
from dist_syndr.config import FeaturesConfig, ModelConfig
from dist_syndr.features.embed import embed_paths
from dist_syndr.features.model import build_model, resolved_config
from dist_syndr.sharding.plan import recorded_config

cached = load_file(sys.argv[1])
out = {}
for backbone, source in (("resnet18.a1_in1k", "timm"), ("resnet18", "hf-hub:timm/resnet18.a1_in1k")):
    model = build_model(ModelConfig(backbone=backbone, weights=source))
    state = model.backbone.state_dict()
    out[source] = {
        "equal": all(torch.equal(state[k], cached[k]) for k in state),
        "skipped": sorted(k for k in cached if k not in state),
        "resolved": resolved_config(ModelConfig(backbone=backbone, weights=source)).weights_source,
        "adapter": model.input_adapter is not None,
    }
features = FeaturesConfig(backbone="resnet18", weights="hf-hub:timm/resnet18.a1_in1k", crop=32)
rows = embed_paths([Path(p) for p in sys.argv[2:]], features)
cfg = config.load(None, ["shard.features.backbone=resnet18", "shard.features.weights=hf-hub:timm/resnet18.a1_in1k"])
out["shard"] = recorded_config(cfg)["shard"]["features"]
out["rows"] = list(rows.shape)
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_timm_and_hub_weights_load_from_an_offline_cache_exactly_as_cached(tmp_path):
    from PIL import Image

    cached = build_offline_cache(tmp_path / "hf")
    photos = []
    for index in range(2):
        photos.append(tmp_path / f"p{index}.png")
        Image.new("RGB", (40, 40), (index * 90, 30, 200)).save(photos[-1])
    completed = subprocess.run(
        [sys.executable, "-c", _PROBE, str(cached), *map(str, photos)],
        env=_offline_env(tmp_path / "hf"), capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = json.loads(completed.stdout.strip().splitlines()[-1])
    source = f"hf-hub:{REPO}@{COMMIT}/model.safetensors"
    for weights_setting in ("timm", "hf-hub:timm/resnet18.a1_in1k"):
        result = found[weights_setting]
        assert result["equal"] and result["skipped"] == ["fc.bias", "fc.weight"], result  # only the classifier
        assert result["resolved"] == source and not result["adapter"]  # ImageNet statistics: no adapter
    assert found["shard"]["weights_source"] == source
    assert found["shard"]["weights_sha256"] == files.sha256_file(cached) and found["rows"] == [2, 512]


@pytest.mark.timeout(300)
def test_a_missing_cache_entry_offline_is_one_line_naming_the_repo_and_the_cache(tmp_path):
    hf_home = tmp_path / "empty-hf"
    program = (
        "from dist_syndr.config import ModelConfig\n"
        "from dist_syndr.features.model import build_model\n"
        "build_model(ModelConfig(backbone='resnet18.a1_in1k', weights='timm'))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", f"from dist_syndr import cli\ndef main():\n    exec({program!r})\n    return 0\n"
                              "cli.run(main)"],
        env=_offline_env(hf_home), capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert completed.returncode == 2 and "Traceback" not in completed.stderr, completed.stderr[-2000:]
    line = completed.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: model.weights: no weights for hf-hub:{REPO}: model.safetensors is not in the")
    assert f"cache {hf_home / 'hub'} with HF_HUB_OFFLINE=1" in line


def test_backbone_names_are_checked_against_timm_with_close_names_suggested():
    weights.check_backbone("convnext_tiny", "model.backbone")
    weights.check_backbone("resnet50.a1_in1k", "model.backbone")
    with pytest.raises(ValueError, match=r"model.backbone: 'convnext_tinny' is not a timm model; close names: .*"):
        weights.check_backbone("convnext_tinny", "model.backbone")
    with pytest.raises(
        ValueError, match=r"'resnet50.a9_in1k' is not a pretrained tag; close names: resnet50[.]\w+_in1k"
    ):
        weights.check_backbone("resnet50.a9_in1k", "model.backbone")


def test_input_statistics_come_from_the_weights_and_an_adapter_maps_imagenet_inputs_to_them():
    import torch

    from dist_syndr.config import ModelConfig
    from dist_syndr.features.backbone import input_statistics
    from dist_syndr.features.model import InputAdapter, build_model
    from dist_syndr.features.preprocess import IMAGENET_MEAN, IMAGENET_STD

    assert input_statistics("vit_tiny_patch16_224", "", [], []) == (IMAGENET_MEAN, IMAGENET_STD)  # random init
    assert input_statistics("vit_tiny_patch16_224", "timm", [], []) == ((0.5,) * 3, (0.5,) * 3)  # augreg weights
    pixels = torch.rand(2, 3, 8, 8)
    imagenet = (pixels - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    adapted = InputAdapter((0.5,) * 3, (0.5,) * 3)(imagenet)
    torch.testing.assert_close(adapted, (pixels - 0.5) / 0.5, atol=1e-6, rtol=0)
    config = ModelConfig(backbone="vit_tiny_patch16_224", is_random_init=True, image_size=32, mean=[0.5] * 3)
    config.std = [0.5] * 3
    model = build_model(config)
    assert model.input_adapter is not None and not any("input_adapter" in k for k in model.state_dict())


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("backbone", "source"), [("resnet18.a1_in1k", "timm"), ("resnet18", "hf-hub:timm/resnet18.a1_in1k")]
)
def test_training_from_timm_and_hub_weights_offline_records_their_source_and_sha256(tmp_path, backbone, source):
    cached = build_offline_cache(tmp_path / "hf")
    extra = [f"model.backbone={backbone}", f"model.weights={source}", "model.is_random_init=false", "train.epochs=1"]
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "train.py"), "--config", str(PRESET)]
    completed = subprocess.run(
        [*command, *overrides(tmp_path), *extra], env=_offline_env(tmp_path / "hf"), cwd=tmp_path,
        capture_output=True, text=True, timeout=500,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    run_dir = tmp_path / "runs" / "cpu-smoke"
    digest, resolved = files.sha256_file(cached), f"hf-hub:{REPO}@{COMMIT}/model.safetensors"
    recorded = (run_dir / "config.yaml").read_text()
    assert f"weights_sha256: {digest}" in recorded and f"weights_source: {resolved}" in recorded
    card = json.loads((run_dir / "export" / "model_card.json").read_text())["model"]["weights"]
    assert card["source"] == resolved and card["sha256"] == digest
    assert len(metric_history(tmp_path, "loss")) == 1
    import mlflow

    from dist_syndr.tracking.tracker import tracking_uri

    run_id = (run_dir / "mlflow_run_id").read_text().strip()
    params = mlflow.MlflowClient(tracking_uri=tracking_uri(tmp_path / "mlruns")).get_run(run_id).data.params
    assert params["model.weights_sha256"] == digest and params["model.weights_source"] == resolved
    assert os.environ.get("HF_HUB_OFFLINE") is None  # the suite's own environment was left alone


@pytest.mark.timeout(300)
@pytest.mark.parametrize(
    ("backbone", "source"), [("resnet18", "hf-hub:timm/resnet18.a1_in1k"), ("resnet18.a1_in1k", "timm")]
)
def test_sharding_from_hub_and_timm_weights_offline_records_their_source_and_sha256(tmp_path, backbone, source):
    """The sharding step's DDCUp embeds references and candidates with ``hf-hub:`` or ``timm`` weights from the
    offline cache (no precomputed features) and records the resolved source and sha256 in the set's index."""
    import numpy as np
    from PIL import Image

    from dist_syndr.pools.embedded import photo_crops

    cached = build_offline_cache(tmp_path / "hf")
    crops = photo_crops(np.random.default_rng(0), 6, 48, 48)
    for folder, names in (("pristine", ["a", "b", "c", "d"]), ("candidates", ["x", "y"])):
        (tmp_path / folder).mkdir()
        for name in names:
            Image.fromarray(crops.pop()).save(tmp_path / folder / f"{name}.png")
    settings = [
        f"shard.pool.root={tmp_path / 'pristine'}", "shard.pool.types=[1, 11]", "shard.candidates.kind=folder",
        f"shard.candidates.root={tmp_path / 'candidates'}", "shard.samples_per_shard=16", "shard.num_workers=1",
        f"shard.output_root={tmp_path / 'shards'}", f"shard.features.backbone={backbone}",
        f"shard.features.weights={source}", "shard.features.crop=32",
    ]  # fmt: skip
    preset = PROJECT_ROOT / "configs" / "shard" / "folder-weak.yaml"
    command = [sys.executable, str(PROJECT_ROOT / "launchers" / "shard.py"), "--config", str(preset)]
    completed = subprocess.run(
        [*command, *settings], env=_offline_env(tmp_path / "hf"), cwd=PROJECT_ROOT, capture_output=True, text=True,
        timeout=240,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    shard_set = ShardSet(tmp_path / "shards" / "folder-weak")
    shard_set.verify()
    recorded = shard_set.config["shard"]["features"]
    assert recorded["weights_source"] == f"hf-hub:{REPO}@{COMMIT}/model.safetensors"
    assert recorded["weights_sha256"] == files.sha256_file(cached)
    assert len(shard_set) == 4 * 2 * 5 + int(shard_set.is_upsampled().sum())
    assert "DDCUp on weak labels: " in completed.stderr  # the selection ran on the embedded features
