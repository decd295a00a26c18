"""Feature extraction: local weights only, clear errors, centre crops, batch-invariant embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from dist_syndr import imaging
from dist_syndr.config import FeaturesConfig
from dist_syndr.features.backbone import build_backbone
from dist_syndr.features.embed import embed_paths, load_named_features
from dist_syndr.features.preprocess import centre_crop
from tests.conftest import tf32_switches


def _images(folder, count=5):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    paths = []
    for i in range(count):
        path = folder / f"ref{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(40 + i, 50, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def test_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="is_random_init"):
        build_backbone(FeaturesConfig(backbone="resnet18"))
    with pytest.raises(ValueError, match="does not exist"):
        build_backbone(FeaturesConfig(backbone="resnet18", weights=str(tmp_path / "none.pth")))
    with pytest.raises(ValueError, match="features.backbone"):
        build_backbone(FeaturesConfig(backbone="no_such_net", is_random_init=True))


def test_local_weights_load_and_change_the_output(tmp_path):
    import timm

    torch.manual_seed(0)
    source = timm.create_model("resnet18", pretrained=False, num_classes=10)
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    loaded = build_backbone(FeaturesConfig(backbone="resnet18", weights=str(weights)))
    x = torch.rand(1, 3, 32, 32)
    source.reset_classifier(0)
    with torch.inference_mode():
        np.testing.assert_allclose(loaded(x).numpy(), source.eval()(x).numpy(), rtol=1e-5, atol=1e-6)
    wrong = tmp_path / "wrong.pth"
    torch.save({"conv.weight": torch.zeros(1)}, wrong)
    with pytest.raises(ValueError, match="does not fit"):
        build_backbone(FeaturesConfig(backbone="resnet18", weights=str(wrong)))


def test_embed_paths_is_batch_invariant(tmp_path):
    paths = _images(tmp_path / "imgs")
    config = FeaturesConfig(backbone="resnet18", is_random_init=True, crop=32, batch_size=2)
    torch.manual_seed(0)
    model = build_backbone(config)
    embedded = embed_paths(paths, config, model)
    one_batch = embed_paths(
        paths, FeaturesConfig(backbone="resnet18", is_random_init=True, crop=32, batch_size=8), model
    )
    assert embedded.shape == (5, model.num_features) and embedded.dtype == np.float32
    np.testing.assert_allclose(embedded, one_batch, rtol=1e-4, atol=1e-5)


def test_centre_crop_resizes_small_images_up():
    image = np.zeros((20, 30, 3), dtype=np.uint8)
    assert centre_crop(image, 32).shape == (32, 32, 3)
    big = np.arange(60 * 80 * 3, dtype=np.uint8).reshape(60, 80, 3)
    np.testing.assert_array_equal(centre_crop(big, 32), big[14:46, 24:56])


def test_precomputed_features_must_match_their_names(tmp_path):
    np.save(tmp_path / "f.npy", np.ones((3, 4), np.float32))
    (tmp_path / "n.txt").write_text("a.png\nb.png\n")
    with pytest.raises(ValueError, match="does not match"):
        load_named_features(str(tmp_path / "f.npy"), str(tmp_path / "n.txt"))


def test_reshaping_features_are_fp32_on_every_device(tmp_path):
    """DDCUp's embeddings run the fp32 forward pass whatever the device (no autocast branch on GPUs):
    bit-equal to the plain fp32 computation, and unlike what bf16 autocast would give."""
    from dist_syndr.features.precision import autocast
    from dist_syndr.features.preprocess import normalise

    paths = _images(tmp_path / "imgs", count=3)
    config = FeaturesConfig(backbone="resnet18", is_random_init=True, crop=32, batch_size=8)
    model = build_backbone(config)
    got = embed_paths(paths, config, model)
    crops = [centre_crop(imaging.decode_file(p), 32) for p in paths]
    tensor = torch.from_numpy(np.stack([normalise(crop) for crop in crops]))
    with torch.no_grad():
        want = model.eval()(tensor).numpy()
        with autocast("cpu", "bf16"):
            low = model(tensor).float().numpy()
    np.testing.assert_array_equal(got, want)
    assert not np.array_equal(low, want)


def test_reference_features_run_without_tf32_and_leave_the_callers_switches(tmp_path, tf32_on):
    """DDCUp's reference pass is fp32 in full: TF32 (cuDNN's default for convolutions on Ampere and newer, and on
    here for matrix products as training may set it) is off inside the forward pass and back on after it."""
    paths = _images(tmp_path / "imgs", count=3)
    config = FeaturesConfig(backbone="resnet18", is_random_init=True, crop=32, batch_size=2)
    model = build_backbone(config)
    inside, forward = [], model.forward

    def recording_forward(images):
        inside.append(tf32_switches())
        return forward(images)

    model.forward = recording_forward
    embed_paths(paths, config, model)
    assert len(inside) == 2 and all(s["matmul"] == s["conv"] == "ieee" for s in inside)
    assert all(s["legacy_matmul"] == "highest" and s["legacy_cudnn"] is False for s in inside)
    assert tf32_switches() == tf32_on and tf32_on["legacy_matmul"] == "high" and tf32_on["conv"] == "tf32"
