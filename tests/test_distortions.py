"""Tests for dist_syndr.pools.distortions: the 25 KADID-10k distortions at 5 levels.

Test images are synthesised: smooth colour gradients, discs and a box of flat
colour, and a textured half (a sine grating plus fine noise), so that blur,
noise, compression and colour changes all have something to act on.
"""

from __future__ import annotations

import math

import numpy as np
import piq
import pytest
import torch

from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS
from dist_syndr.pools import distortions
from dist_syndr.pools.distortions import LEVEL_PARAMETERS, TYPE_NAMES, distort, distort_image

ALL_TYPES = list(range(1, NUM_DISTORTION_TYPES + 1))
# Types that draw random numbers; every other type ignores its seed.
RANDOM_TYPES = {3, 5, 11, 12, 13, 14, 15, 19, 20, 23}
SEEDS = [101, 202, 303]


def natural_scene(seed: int, height: int, width: int) -> torch.Tensor:
    """A deterministic uint8 ``(3, H, W)`` image with gradients, shapes, edges and texture."""
    generator = torch.Generator().manual_seed(seed)
    row = torch.linspace(0, 1, height).view(height, 1).expand(height, width)
    column = torch.linspace(0, 1, width).view(1, width).expand(height, width)
    base = torch.rand(3, generator=generator)
    tilt = torch.rand(3, generator=generator) - 0.5
    image = torch.stack([0.6 * base[c] + 0.2 + tilt[c] * (0.6 * column - 0.4 * row) for c in range(3)])
    for _ in range(4):
        centre_y, centre_x, size = torch.rand(3, generator=generator).tolist()
        colour = torch.rand(3, 1, 1, generator=generator)
        inside = (row - centre_y) ** 2 + ((column - centre_x) * width / height) ** 2 < (0.08 + 0.25 * size) ** 2
        image = torch.where(inside, 0.75 * colour + 0.25 * image, image)
    top, left = (0.5 * torch.rand(2, generator=generator)).tolist()
    box = (row > top) & (row < top + 0.35) & (column > left) & (column < left + 0.3)
    image = torch.where(box, torch.rand(3, 1, 1, generator=generator), image)
    frequency = 6 + 10 * torch.rand(1, generator=generator).item()
    grating = 0.08 * torch.sin(2 * math.pi * frequency * (column + 0.5 * row))
    texture = 0.03 * torch.randn(height, width, generator=generator)
    image = 0.9 * (image + (grating + texture) * (column > 0.5)) + 0.05
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def scene_batch(height: int, width: int) -> torch.Tensor:
    return torch.stack([natural_scene(seed, height, width) for seed in range(3)])


@pytest.fixture(scope="module")
def small_scenes() -> torch.Tensor:
    return scene_batch(64, 96)


@pytest.fixture(scope="module")
def strength_scenes() -> torch.Tensor:
    # 128 x 192: large enough that 32 px colour blocks, 16 px moved patches and
    # JPEG2000 at ratio 400 do not saturate or hit the codec's byte floor.
    return scene_batch(128, 192)


def to_unit(images: torch.Tensor) -> torch.Tensor:
    return images.to(torch.float64) / 255.0


def luma(images: torch.Tensor) -> torch.Tensor:
    unit = to_unit(images)
    return 0.299 * unit[:, 0] + 0.587 * unit[:, 1] + 0.114 * unit[:, 2]


def one_minus_ssim(distorted: torch.Tensor, pristine: torch.Tensor) -> float:
    return 1.0 - piq.ssim(to_unit(distorted).float(), to_unit(pristine).float(), data_range=1.0).item()


def mean_squared_error(distorted: torch.Tensor, pristine: torch.Tensor) -> float:
    return ((to_unit(distorted) - to_unit(pristine)) ** 2).mean().item()


def darkening(distorted: torch.Tensor, pristine: torch.Tensor) -> float:
    return (luma(pristine).mean() - luma(distorted).mean()).item()


def contrast_loss(distorted: torch.Tensor, pristine: torch.Tensor) -> float:
    return (luma(pristine).std(dim=(1, 2)) - luma(distorted).std(dim=(1, 2))).mean().item()


# How strength is measured per type, and the least rise from level 1 to 5 that counts as clear.
# 1 - SSIM for distortions of local structure (blur, noise, compression, warps, patches),
# which is what SSIM models. MSE for colour and tone changes (4, 5, 7, 8, 16, 17): SSIM's
# luminance and contrast terms damp wide colour or brightness changes, MSE follows them;
# for colour shift (5) SSIM also saturates once the green plane moves further than its
# 11 px window, while the squared error keeps growing with the shift.
# KADID runs types 18 and 25 through a signed parameter (offset +0.15 .. -0.15, contrast
# +0.3 .. -0.6) with the mildest image at level 3, so any distance to the pristine image
# dips in the middle (KADID's own DMOS peaks at level 3 too); what grows monotonically is
# the signed change itself: luma lost for mean shift, luma contrast lost for contrast change.
STRUCTURE = (one_minus_ssim, 0.04)
COLOUR_OR_TONE = (mean_squared_error, 0.002)
MEASURES = {distortion_type: STRUCTURE for distortion_type in ALL_TYPES}
MEASURES.update({distortion_type: COLOUR_OR_TONE for distortion_type in (4, 7, 8, 16, 17)})
MEASURES[5] = (mean_squared_error, 0.0005)  # only a band along edges changes
MEASURES[18] = (darkening, 0.2)
MEASURES[25] = (contrast_loss, 0.05)


def test_tables_cover_every_type_and_level():
    assert NUM_DISTORTION_TYPES == 25 and NUM_LEVELS == 5
    assert sorted(TYPE_NAMES) == ALL_TYPES == sorted(LEVEL_PARAMETERS)
    assert len(set(TYPE_NAMES.values())) == NUM_DISTORTION_TYPES
    assert all(len(levels) == NUM_LEVELS for levels in LEVEL_PARAMETERS.values())
    # Spot checks against KADID's imdist_generator.m.
    assert LEVEL_PARAMETERS[1] == (0.1, 0.5, 1.0, 2.0, 5.0)
    assert LEVEL_PARAMETERS[9] == (16, 32, 45, 120, 400)
    assert LEVEL_PARAMETERS[10] == (43, 36, 24, 7, 4)
    assert LEVEL_PARAMETERS[15] == (0.01, 0.03, 0.05, 0.1, 0.15)
    assert LEVEL_PARAMETERS[18] == (0.15, 0.08, 0.0, -0.08, -0.15)


@pytest.mark.parametrize("distortion_type", ALL_TYPES)
def test_output_keeps_shape_dtype_and_repeats_for_the_same_seeds(small_scenes, distortion_type):
    first = distort(small_scenes, distortion_type, 4, SEEDS)
    again = distort(small_scenes.clone(), distortion_type, 4, list(SEEDS))
    assert first.shape == small_scenes.shape
    assert first.dtype == torch.uint8 and first.device == small_scenes.device
    assert torch.equal(first, again)
    assert not torch.equal(first, small_scenes)


@pytest.mark.parametrize("distortion_type", ALL_TYPES)
def test_an_image_gets_the_same_result_alone_as_inside_a_batch(small_scenes, distortion_type):
    for level in (2, 5):
        batched = distort(small_scenes, distortion_type, level, SEEDS)
        reordered = distort(small_scenes.flip(0), distortion_type, level, SEEDS[::-1]).flip(0)
        assert torch.equal(reordered, batched)
        for index in range(len(SEEDS)):
            alone = distort(small_scenes[index : index + 1], distortion_type, level, [SEEDS[index]])
            assert torch.equal(alone[0], batched[index]), f"type {distortion_type} level {level} image {index}"


@pytest.mark.parametrize("distortion_type", ALL_TYPES)
def test_seed_changes_the_result_only_for_random_types(small_scenes, distortion_type):
    first = distort(small_scenes, distortion_type, 5, SEEDS)
    other = distort(small_scenes, distortion_type, 5, [seed + 1 for seed in SEEDS])
    is_same = torch.equal(first, other)
    assert is_same == (distortion_type not in RANDOM_TYPES)


@pytest.mark.parametrize("distortion_type", ALL_TYPES)
def test_strength_grows_with_level(strength_scenes, distortion_type):
    measure, least_rise = MEASURES[distortion_type]
    strengths = [
        measure(distort(strength_scenes, distortion_type, level, SEEDS), strength_scenes)
        for level in range(1, NUM_LEVELS + 1)
    ]
    span = strengths[-1] - strengths[0]
    assert span >= least_rise, f"{TYPE_NAMES[distortion_type]}: level 5 barely differs from level 1: {strengths}"
    for lower, higher in zip(strengths, strengths[1:], strict=False):
        assert higher >= lower - 0.01 * span, f"{TYPE_NAMES[distortion_type]}: strength fell with level: {strengths}"


@pytest.mark.parametrize("distortion_type", ALL_TYPES)
@pytest.mark.parametrize("height, width", [(37, 53), (8, 8), (9, 41)])
def test_odd_and_tiny_sizes_work_at_every_level(distortion_type, height, width):
    images = torch.stack([natural_scene(seed, height, width) for seed in (4, 5)])
    for level in range(1, NUM_LEVELS + 1):
        distorted = distort(images, distortion_type, level, [1, 2])
        assert distorted.shape == images.shape and distorted.dtype == torch.uint8


def test_channels_last_input_gives_the_same_result(small_scenes):
    strided = small_scenes.contiguous(memory_format=torch.channels_last)
    for distortion_type in (2, 11, 20, 22):
        assert torch.equal(
            distort(strided, distortion_type, 3, SEEDS), distort(small_scenes, distortion_type, 3, SEEDS)
        )


def test_distort_image_matches_a_batch_of_one(small_scenes):
    single = distort_image(small_scenes[1], 13, 4, 77)
    assert single.shape == small_scenes[1].shape
    assert torch.equal(single, distort(small_scenes[1:2], 13, 4, [77])[0])


def test_empty_batch_returns_an_empty_batch():
    empty = torch.zeros(0, 3, 16, 16, dtype=torch.uint8)
    assert distort(empty, 1, 1, []).shape == (0, 3, 16, 16)


# ----------------------------------------------------------------------------- parameter fidelity


def grey(value: int, height: int = 96, width: int = 128, batch: int = 2) -> torch.Tensor:
    return torch.full((batch, 3, height, width), value, dtype=torch.uint8)


def test_white_noise_has_the_kadid_variance():
    residual = to_unit(distort(grey(128), 11, 5, [1, 2])) - 128 / 255
    assert abs(residual.mean().item()) < 0.003
    assert residual.std().item() == pytest.approx(math.sqrt(0.01), rel=0.03)


def test_impulse_noise_hits_the_kadid_density_per_channel_value():
    distorted = distort(grey(128), 13, 5, [1, 2])
    salt, pepper = (distorted == 255).double().mean().item(), (distorted == 0).double().mean().item()
    assert salt + pepper == pytest.approx(0.03, rel=0.1)
    assert salt == pytest.approx(pepper, rel=0.2)
    # Channels are hit independently, so most hit pixels turn coloured, not white or black.
    is_hit = (distorted == 0) | (distorted == 255)
    assert (is_hit.all(dim=1).sum() < 0.2 * is_hit.any(dim=1).sum()).item()


def test_multiplicative_noise_is_uniform_speckle_of_the_kadid_variance():
    residual = to_unit(distort(grey(128), 14, 5, [1, 2])) - 128 / 255
    assert residual.std().item() == pytest.approx(128 / 255 * math.sqrt(0.05), rel=0.03)
    # Uniform noise stays inside +-sqrt(3) standard deviations.
    assert residual.abs().max().item() <= 128 / 255 * math.sqrt(3 * 0.05) + 1 / 255


def test_mean_shift_adds_its_offset_and_is_the_identity_at_level_3(small_scenes):
    assert torch.equal(distort(grey(100), 18, 1, [0, 0]), grey(138))  # 100 + 0.15 * 255 = 138.25
    assert torch.equal(distort(grey(100), 18, 5, [0, 0]), grey(62))
    assert torch.equal(distort(small_scenes, 18, 3, SEEDS), small_scenes)


def test_contrast_change_raises_contrast_at_level_1_and_lowers_it_at_level_5(strength_scenes):
    assert contrast_loss(distort(strength_scenes, 25, 1, SEEDS), strength_scenes) < -0.02
    assert contrast_loss(distort(strength_scenes, 25, 5, SEEDS), strength_scenes) > 0.02


def test_blurs_leave_a_flat_image_unchanged():
    flat = grey(77, 40, 40)
    for distortion_type in (1, 2, 3):
        for level in range(1, NUM_LEVELS + 1):
            assert torch.equal(distort(flat, distortion_type, level, [3, 4]), flat)


def test_kadid_identity_levels_keep_the_image(small_scenes):
    assert torch.equal(distort(small_scenes, 3, 1, SEEDS), small_scenes)  # one-pixel motion
    lab_round_trip = distort(small_scenes, 8, 1, SEEDS).int() - small_scenes.int()  # ab factor 1
    assert lab_round_trip.abs().max().item() <= 1


def test_saturation_factor_zero_gives_grey(small_scenes):
    grey_version = distort(small_scenes, 7, 4, SEEDS)
    assert torch.equal(grey_version[:, 0], grey_version[:, 1]) and torch.equal(grey_version[:, 1], grey_version[:, 2])


def test_quantisers_keep_at_most_their_number_of_levels(small_scenes):
    colour_quantised = distort(small_scenes, 6, 5, SEEDS)  # 8 colours
    grey_quantised = distort(small_scenes, 22, 5, SEEDS)  # 7 thresholds, 8 classes
    for index in range(len(SEEDS)):
        assert len(colour_quantised[index].reshape(3, -1).T.unique(dim=0)) <= 8
        assert len(grey_quantised[index].unique()) <= 8


def test_pixelate_makes_blocks(small_scenes):
    distorted = distort(small_scenes, 21, 5, SEEDS)  # scale 0.95 - 0.5**0.6 = 0.29
    distinct_rows = len(distorted[0].permute(1, 0, 2).reshape(64, -1).unique(dim=0))
    assert distinct_rows <= math.ceil(0.29 * 64)


def test_motion_kernel_matches_matlab_fspecial_motion():
    horizontal = distortions._motion_kernels(4, torch.tensor([0.0, math.pi / 2]))
    centre = horizontal.shape[-1] // 2
    assert horizontal[0, centre].tolist() == pytest.approx([0.125, 0.25, 0.25, 0.25, 0.125])
    assert torch.allclose(horizontal[1], horizontal[0].T, atol=1e-7)
    assert distortions._motion_kernels(3, torch.tensor([0.0]))[0, 2].tolist() == pytest.approx(
        [0, 1 / 3, 1 / 3, 1 / 3, 0]
    )


def test_otsu_dynamic_programme_finds_the_optimal_split():
    generator = np.random.default_rng(5)
    counts = generator.integers(0, 50, size=256) * (generator.random(256) < 0.6)
    values = np.arange(256)

    def within_class_sum_of_squares(first_end: int, second_end: int) -> float:
        total = 0.0
        for low, high in ((0, first_end), (first_end + 1, second_end), (second_end + 1, 255)):
            weight = counts[low : high + 1]
            if weight.sum():
                mean = (weight * values[low : high + 1]).sum() / weight.sum()
                total += (weight * (values[low : high + 1] - mean) ** 2).sum()
        return total

    best = min(within_class_sum_of_squares(a, b) for a in range(254) for b in range(a + 1, 255))
    ends = distortions._otsu_class_ends(torch.as_tensor(counts).unsqueeze(0), 3)[0].tolist()
    assert ends[-1] == 255
    assert within_class_sum_of_squares(ends[0], ends[1]) == pytest.approx(best)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "images, distortion_type, level, seeds, message",
    [
        (torch.zeros(1, 3, 16, 16), 1, 1, [0], "uint8"),
        (np.zeros((1, 3, 16, 16), dtype=np.uint8), 1, 1, [0], "torch.Tensor"),
        (torch.zeros(3, 16, 16, dtype=torch.uint8), 1, 1, [0], r"\(B, 3, H, W\)"),
        (torch.zeros(1, 4, 16, 16, dtype=torch.uint8), 1, 1, [0], r"\(B, 3, H, W\)"),
        (torch.zeros(1, 3, 7, 16, dtype=torch.uint8), 1, 1, [0], "at least 8x8"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 0, 1, [0], "distortion_type"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 26, 1, [0], "distortion_type"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1.0, 1, [0], "distortion_type"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), True, 1, [0], "distortion_type"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, 0, [0], "level"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, 6, [0], "level"),
        (torch.zeros(2, 3, 16, 16, dtype=torch.uint8), 1, 1, [0], "2 images"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, 1, [0.5], r"seeds\[0\]"),
        (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, 1, 7, "sequence"),
    ],
)
def test_bad_input_raises_a_value_error_naming_the_problem(images, distortion_type, level, seeds, message):
    with pytest.raises(ValueError, match=message):
        distort(images, distortion_type, level, seeds)


def test_distort_image_rejects_a_batch():
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        distort_image(torch.zeros(1, 3, 16, 16, dtype=torch.uint8), 1, 1, 0)


def test_numpy_and_tensor_seeds_are_accepted(small_scenes):
    expected = distort(small_scenes, 11, 2, SEEDS)
    assert torch.equal(distort(small_scenes, 11, 2, np.array(SEEDS)), expected)
    assert torch.equal(distort(small_scenes, 11, 2, torch.tensor(SEEDS)), expected)


# ----------------------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("distortion_type", ALL_TYPES)
def test_gpu_result_matches_cpu(small_scenes, distortion_type):
    # Random draws come from integer hashing, so they are the same on both devices;
    # what differs is float rounding in filters and transcendental functions, which
    # moves only a few values by a level or two.
    for level in (1, 3, 5):
        on_cpu = distort(small_scenes, distortion_type, level, SEEDS)
        on_gpu = distort(small_scenes.cuda(), distortion_type, level, SEEDS)
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.uint8 and on_gpu.shape == on_cpu.shape
        difference = (on_gpu.cpu().int() - on_cpu.int()).abs()
        assert difference.double().mean().item() < 0.25, f"type {distortion_type} level {level}"
        assert (difference > 2).double().mean().item() < 0.005, f"type {distortion_type} level {level}"
        again = distort(small_scenes.cuda(), distortion_type, level, SEEDS)
        assert torch.equal(again, on_gpu), f"type {distortion_type} level {level} is not repeatable on the GPU"
