"""The full-reference metrics: piq's values to float rounding, one result per image whatever its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dist_syndr.pools import fr_metrics, weak_agreement
from dist_syndr.pools.distortions import distort
from dist_syndr.pools.embedded import photo_crops
from dist_syndr.sharding import torch_threads

# Every value lies this close to piq's in float64 (piq's own float32 VIF lies about 1e-4 from it).
FLOAT64_BOUND = {"ssim": 2e-5, "ms_ssim": 1e-5, "gmsd": 1e-6, "vif": 5e-5, "fsim": 1e-6}


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """As the sharding workers run them (and several times faster than two threads on shared cores)."""
    with torch_threads.one_torch_thread():
        yield


def _references(height: int, width: int, count: int = 2) -> torch.Tensor:
    crops = photo_crops(np.random.default_rng(3), count, width, height)
    return torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).contiguous()


def _variants(
    references: torch.Tensor, kinds=((1, 3), (11, 4), (10, 5), (25, 1))
) -> tuple[torch.Tensor, torch.Tensor]:
    """A blur, noise, JPEG and contrast change of each reference (or ``kinds``); their reference rows."""
    images, rows = [], []
    for row in range(references.shape[0]):
        for distortion_type, level in kinds:
            images.append(distort(references[row : row + 1], distortion_type, level, [7 * row + level])[0])
            rows.append(row)
    return torch.stack(images), torch.tensor(rows)


def _piq(name: str, image: torch.Tensor, reference: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """piq's own value, computed in ``dtype`` from uint8 images."""
    function = weak_agreement.piq_function(name)
    return function(image.to(dtype) / 255, reference.to(dtype) / 255, data_range=1.0, reduction="none")


@pytest.mark.parametrize(
    "height, width, metrics",
    [
        (176, 192, fr_metrics.METRICS),
        (181, 167, fr_metrics.METRICS),
        (96, 120, fr_metrics.METRICS),  # too small for MS-SSIM
        (384, 388, ("ssim", "ms_ssim")),  # SSIM pools by 2: it is MS-SSIM's second scale
        (400, 250, ("ssim",)),  # SSIM alone
    ],
)
def test_every_metric_is_piqs_to_float_rounding(height, width, metrics):
    references = _references(height, width)
    images, rows = _variants(references, ((11, 4), (10, 5)))
    prepared = fr_metrics.prepare_references(references, metrics)
    ours = fr_metrics.qualities(images, prepared, rows)
    assert set(ours) == set(metrics) - ({"ms_ssim"} if min(height, width) < 161 else set())
    pairs = list(enumerate(rows.tolist()))
    with torch.inference_mode():
        for name, values in ours.items():
            exact = torch.cat([_piq(name, images[i : i + 1], references[r : r + 1], torch.float64) for i, r in pairs])
            single = torch.cat([_piq(name, images[i : i + 1], references[r : r + 1], torch.float32) for i, r in pairs])
            assert values.dtype == torch.float32 and values.shape == (len(rows),)
            assert (values.double() - exact).abs().max() < FLOAT64_BOUND[name], name
            assert (values - single).abs().max() < 2.5e-4, name
            assert exact.std() > 0.01, name  # the variants really differ


def test_an_image_scores_the_same_alone_in_any_batch_and_layout():
    references = _references(176, 200)
    images, rows = _variants(references)
    prepared = fr_metrics.prepare_references(references)
    together = fr_metrics.qualities(images, prepared, rows)
    for i in range(len(rows)):
        alone = fr_metrics.qualities(
            images[i : i + 1], fr_metrics.prepare_references(references[rows[i] : rows[i] + 1]), torch.tensor([0])
        )
        channels_last = fr_metrics.qualities(
            images[i : i + 1].permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2), prepared, rows[i : i + 1]
        )
        for name, values in together.items():
            assert torch.equal(alone[name], values[i : i + 1]), name
            assert torch.equal(channels_last[name], values[i : i + 1]), name


def test_the_undistorted_image_is_perfect_and_gmsd_zero():
    references = _references(176, 176, count=1)
    values = fr_metrics.qualities(references, fr_metrics.prepare_references(references), torch.tensor([0]))
    assert values["gmsd"].item() == 0.0
    for name in ("ssim", "ms_ssim", "vif", "fsim"):
        assert values[name].item() == pytest.approx(1.0, abs=1e-5), name


def test_bad_inputs_name_the_problem():
    references = _references(64, 64, count=1)
    prepared = fr_metrics.prepare_references(references)
    assert prepared.metrics == ("ssim", "gmsd", "vif", "fsim")
    with pytest.raises(ValueError, match="at least 41 px"):
        fr_metrics.prepare_references(torch.zeros(1, 3, 40, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="uint8"):
        fr_metrics.prepare_references(references.float())
    with pytest.raises(ValueError, match="their references"):
        fr_metrics.qualities(torch.zeros(1, 3, 64, 60, dtype=torch.uint8), prepared, torch.tensor([0]))
    with pytest.raises(ValueError, match="must lie in 0..0"):
        fr_metrics.qualities(references, prepared, torch.tensor([1]))
    with pytest.raises(ValueError, match="for 1 distorted images"):
        fr_metrics.qualities(references, prepared, torch.tensor([0, 0]))
    with pytest.raises(ValueError, match="unknown full-reference metric"):
        fr_metrics.prepare_references(references, ("ssim", "psnr"))


@pytest.mark.gpu
def test_a_gpu_gives_the_cpus_values_to_float_rounding():
    references = _references(176, 192)
    images, rows = _variants(references)
    on_cpu = fr_metrics.qualities(images, fr_metrics.prepare_references(references), rows)
    prepared = fr_metrics.prepare_references(references.to("cuda"))
    on_gpu = fr_metrics.qualities(images.to("cuda"), prepared, rows.to("cuda"))
    for name, values in on_cpu.items():
        assert on_gpu[name].device.type == "cuda"
        assert (on_gpu[name].cpu() - values).abs().max() < 1e-4, name
