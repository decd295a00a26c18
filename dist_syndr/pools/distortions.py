"""The 25 KADID-10k distortion types at their 5 levels, as batched torch operations.

:func:`distort` takes a batch of uint8 RGB images and returns it with one
``(type, level)`` applied, on the device the batch is on. Everything runs as
tensor operations over the whole batch except the three codecs -- JPEG,
JPEG2000 and colour quantisation with error diffusion -- which go image by
image through torchvision or Pillow on the CPU.

Randomness (noise fields, motion angles, patch positions, colours) comes from a
counter-based hash of ``(seed, type, stream, index)`` computed with integer
tensor ops instead of a stateful generator. So image ``b``'s result depends only
on ``(images[b], type, level, seeds[b])``, not on the rest of the batch, and the
random bits are the same on CPU and GPU. All filtering is done as sums of
shifted copies, which keeps results bit-identical whatever the batch. The levels of a
type share their draws: for a fixed seed, level 5 is level 1 made stronger (the
same noise field scaled up, the same first blocks plus more).

Shapes: ``B`` images in a batch, ``3`` RGB channels, ``H`` x ``W`` pixels
(both at least 8), ``K`` taps across a filter kernel.

Parameters per level (``LEVEL_PARAMETERS``), as in the KADID-10k MATLAB
generator ``imdist_generator.m`` (Lin, Hosu and Saupe, QoMEX 2019) and the
distortion functions it calls:

==  ==========================  ===================================  ==================================
id  type                        levels 1..5                          parameter
==  ==========================  ===================================  ==================================
 1  gaussian blur               0.1, 0.5, 1, 2, 5                    sigma, px (2*ceil(2 sigma)+1 taps)
 2  lens blur                   1, 2, 4, 6, 8                        disk radius, px
 3  motion blur                 1, 2, 4, 6, 10                       line length, px; random angle
 4  colour diffusion            1, 3, 6, 8, 12                       a: Lab ab blurred (1.5a+2), times a
 5  colour shift                1, 3, 6, 8, 12                       green shift along edges, px
 6  colour quantisation         64, 48, 32, 16, 8                    colours (median cut, dithered)
 7  colour saturation 1         0.4, 0.2, 0.1, 0, -0.4               HSV saturation factor
 8  colour saturation 2         1, 2, 3, 6, 9                        Lab ab factor
 9  JPEG2000                    16, 32, 45, 120, 400                 compression ratio
10  JPEG                        43, 36, 24, 7, 4                     quality
11  white noise                 0.001, 0.002, 0.003, 0.005, 0.01     variance (RGB in [0, 1])
12  white noise in colour comp  0.0001, 0.0005, 0.001, 0.002, 0.003  variance (YCbCr in [0, 1])
13  impulse noise               0.001, 0.005, 0.01, 0.02, 0.03       salt-and-pepper density
14  multiplicative noise        0.001, 0.005, 0.01, 0.02, 0.05       speckle variance (uniform)
15  denoise                     0.01, 0.03, 0.05, 0.1, 0.15          variance of the noise removed
16  brighten                    0.1, 0.2, 0.4, 0.7, 1.1              tone-curve amount
17  darken                      0.05, 0.1, 0.2, 0.4, 0.8             tone-curve amount
18  mean shift                  0.15, 0.08, 0, -0.08, -0.15          offset (RGB in [0, 1])
19  jitter                      0.05, 0.1, 0.2, 0.5, 1               warp std, px (5 rounds, bicubic)
20  non-eccentricity patch      20, 40, 60, 80, 100                  16 px patches moved <= 8 px
21  pixelate                    0.01, 0.05, 0.1, 0.2, 0.5            s: nearest resize by 0.95 - s^0.6
22  quantisation                20, 16, 13, 10, 7                    multi-level Otsu thresholds
23  colour block                2, 4, 6, 8, 10                       32 px blocks of random colour
24  high sharpen                1, 2, 3, 6, 12                       unsharp amount on Lab L, sigma 3
25  contrast change             0.3, 0.15, 0, -0.4, -0.6             a: spline via (.3, .25 - a/4),
                                                                     (.5, .5), (.7, .75 + a/4)
==  ==========================  ===================================  ==================================

Types 18 and 25 keep KADID's order, which sweeps a signed parameter (brighter to
darker, more to less contrast) rather than growing a magnitude; KADID's own
scores are best at their level 3. Level 3 of type 18 is the identity, as are
level 1 of type 3 (a one-pixel motion kernel) and, up to rounding, of type 8
(ab factor 1).

Where this departs from the MATLAB generator:

* The generator min-max normalises the reference before, and the result after,
  every distortion (``mapmm``). That is left out: it would also stretch any
  reference that does not span [0, 255], and it turns mean shift into a gain
  change. Mean shift here is ``clip(x + offset)``, as ``immeanshift.m`` writes.
* Denoise (15) adds the noise as MATLAB does but removes it without DnCNN,
  which is not available here: a Gaussian pre-filter and then a local Wiener
  filter (``wiener2``-style, noise floor four times the pre-filtered noise
  variance), both widening with the noise.
* Colour quantisation (6) uses Pillow's median cut with Floyd-Steinberg dither
  for MATLAB's ``rgb2ind`` (minimum-variance quantisation, dithered).
* Quantisation (22) finds the multi-level Otsu thresholds exactly, by dynamic
  programming over the 256-bin histogram (MATLAB's ``multithresh`` searches
  for them); each class shows its largest occupied value, the lowest class 0
  and the highest 255, as ``imquantize(I, t, [0 t(2:end) 1])`` does.
* Non-eccentricity patch (20) copies every patch from the undistorted image;
  MATLAB copies them one after another, so a later patch may pick up an
  earlier one. Patch and block sizes (16 and 32 px) shrink only for images
  smaller than that.
* The colour-shift edge weight stretches between the 1st and 99th percentiles
  of the smoothed gradient, standing in for the generator's ``ps2`` helper.
"""

from __future__ import annotations

import functools
import io
import math
import operator
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from dist_syndr.config import NUM_DISTORTION_TYPES, NUM_LEVELS

MIN_SIDE = 8

TYPE_NAMES: dict[int, str] = {
    1: "gaussian_blur",
    2: "lens_blur",
    3: "motion_blur",
    4: "colour_diffusion",
    5: "colour_shift",
    6: "colour_quantisation",
    7: "colour_saturation_1",
    8: "colour_saturation_2",
    9: "jpeg2000",
    10: "jpeg",
    11: "white_noise",
    12: "white_noise_colour_component",
    13: "impulse_noise",
    14: "multiplicative_noise",
    15: "denoise",
    16: "brighten",
    17: "darken",
    18: "mean_shift",
    19: "jitter",
    20: "non_eccentricity_patch",
    21: "pixelate",
    22: "quantisation",
    23: "colour_block",
    24: "high_sharpen",
    25: "contrast_change",
}

LEVEL_PARAMETERS: dict[int, tuple] = {
    1: (0.1, 0.5, 1.0, 2.0, 5.0),
    2: (1, 2, 4, 6, 8),
    3: (1, 2, 4, 6, 10),
    4: (1, 3, 6, 8, 12),
    5: (1, 3, 6, 8, 12),
    6: (64, 48, 32, 16, 8),
    7: (0.4, 0.2, 0.1, 0.0, -0.4),
    8: (1.0, 2.0, 3.0, 6.0, 9.0),
    9: (16, 32, 45, 120, 400),
    10: (43, 36, 24, 7, 4),
    11: (0.001, 0.002, 0.003, 0.005, 0.01),
    12: (0.0001, 0.0005, 0.001, 0.002, 0.003),
    13: (0.001, 0.005, 0.01, 0.02, 0.03),
    14: (0.001, 0.005, 0.01, 0.02, 0.05),
    15: (0.01, 0.03, 0.05, 0.1, 0.15),
    16: (0.1, 0.2, 0.4, 0.7, 1.1),
    17: (0.05, 0.1, 0.2, 0.4, 0.8),
    18: (0.15, 0.08, 0.0, -0.08, -0.15),
    19: (0.05, 0.1, 0.2, 0.5, 1.0),
    20: (20, 40, 60, 80, 100),
    21: (0.01, 0.05, 0.1, 0.2, 0.5),
    22: (20, 16, 13, 10, 7),
    23: (2, 4, 6, 8, 10),
    24: (1, 2, 3, 6, 12),
    25: (0.3, 0.15, 0.0, -0.4, -0.6),
}

Distortion = Callable[[torch.Tensor, float, "_Draws"], torch.Tensor]


def distort(images: torch.Tensor, distortion_type: int, level: int, seeds: Sequence[int]) -> torch.Tensor:
    """Apply KADID distortion ``distortion_type`` (1..25) at ``level`` (1..5) to each image.

    ``images`` is uint8 ``(B, 3, H, W)`` RGB with ``H, W >= 8`` on any device;
    the result has the same shape, dtype and device. Image ``b``'s result
    depends only on ``images[b]``, the type, the level and ``seeds[b]``.
    Raises ``ValueError`` for a bad dtype, shape, type, level or seed count.
    """
    _check_images(images)
    distortion_type = _check_choice("distortion_type", distortion_type, NUM_DISTORTION_TYPES)
    level = _check_choice("level", level, NUM_LEVELS)
    seeds = _check_seeds(seeds, images.shape[0])
    if images.shape[0] == 0:
        return images.clone()
    parameter = LEVEL_PARAMETERS[distortion_type][level - 1]
    draws = _Draws(seeds, distortion_type, images.device)
    pixels = images.to(torch.float32).div_(255.0).contiguous()
    distorted = _DISTORTIONS[distortion_type](pixels, parameter, draws)
    return _to_uint8(distorted)


def distort_image(image: torch.Tensor, distortion_type: int, level: int, seed: int) -> torch.Tensor:
    """:func:`distort` for one uint8 ``(3, H, W)`` image and one seed."""
    if not isinstance(image, torch.Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise ValueError(f"image must be a (3, H, W) tensor, got {shape}")
    return distort(image.unsqueeze(0), distortion_type, level, [seed])[0]


# ----------------------------------------------------------------------------- input checks


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if images.dtype != torch.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (B, 3, H, W), got {tuple(images.shape)}")
    if min(images.shape[2:]) < MIN_SIDE:
        raise ValueError(f"images must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {tuple(images.shape[2:])}")


def _check_choice(name: str, value: int, upper: int) -> int:
    if isinstance(value, bool):
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}")
    try:
        index = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}") from None
    if not 1 <= index <= upper:
        raise ValueError(f"{name} must be an integer in 1..{upper}, got {index}")
    return index


def _check_seeds(seeds: Sequence[int], batch_size: int) -> list[int]:
    if isinstance(seeds, (str, bytes)) or not hasattr(seeds, "__len__"):
        raise ValueError(f"seeds must be a sequence of integers, got {type(seeds).__name__}")
    if len(seeds) != batch_size:
        raise ValueError(f"seeds has {len(seeds)} entries for a batch of {batch_size} images")
    checked = []
    for position, seed in enumerate(seeds):
        if isinstance(seed, bool):
            raise ValueError(f"seeds[{position}] must be an integer, got {seed!r}")
        try:
            checked.append(operator.index(seed))
        except TypeError:
            raise ValueError(f"seeds[{position}] must be an integer, got {seed!r}") from None
    return checked


def _to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return pixels.clamp(0.0, 1.0).mul(255.0).round().to(torch.uint8)


# ----------------------------------------------------------------------------- randomness

_MASK32 = 0xFFFFFFFF
# Odd multipliers below 2**31, so a product with a 32-bit value never leaves int64.
_MULTIPLIER_A = 0x7FEB352D
_MULTIPLIER_B = 0x2C1B3C6D
_GOLDEN = 0x9E3779B9


def _mix32(values: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    # A bijective 32-bit mixer (xorshift-multiply) on int64 holding values below 2**32; in place.
    # In-place ops into one scratch buffer: fresh multi-megabyte tensors cost more than the arithmetic.
    scratch = torch.empty_like(values) if scratch is None else scratch
    for shift, multiplier in ((16, _MULTIPLIER_A), (15, _MULTIPLIER_B)):
        values.bitwise_xor_(torch.bitwise_right_shift(values, shift, out=scratch))
        values.mul_(multiplier).bitwise_and_(_MASK32)
    return values.bitwise_xor_(torch.bitwise_right_shift(values, 16, out=scratch))


class _Draws:
    # Counter-based random numbers: image b's draws depend only on seeds[b], the
    # distortion type and the stream, never on the batch or the device.
    def __init__(self, seeds: Sequence[int], distortion_type: int, device: torch.device):
        words = [seed % (1 << 64) for seed in seeds]
        self._low = torch.tensor([word & _MASK32 for word in words], dtype=torch.int64, device=device)
        self._high = torch.tensor([word >> 32 for word in words], dtype=torch.int64, device=device)
        self._distortion_type = distortion_type
        self.device = device

    def _keys(self, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        salt = (self._distortion_type * 1024 + stream) * _GOLDEN & _MASK32
        first = _mix32(self._low ^ salt)
        second = _mix32(self._high ^ first ^ _GOLDEN)
        return first.unsqueeze(1), second.unsqueeze(1)

    def uniform(self, stream: int, count: int) -> torch.Tensor:
        # (B, count) float32, uniform in the open interval (0, 1).
        if count >= 1 << 32:
            raise ValueError(f"cannot draw {count} numbers per image (limit 2**32)")
        first, second = self._keys(stream)
        bits = torch.arange(count, dtype=torch.int64, device=self.device).unsqueeze(0) ^ first
        scratch = torch.empty_like(bits)
        _mix32(bits, scratch).bitwise_xor_(second)
        _mix32(bits, scratch).bitwise_right_shift_(9)
        # 23 bits keep (k + 0.5) / 2**23 strictly inside (0, 1) in float32.
        return bits.to(torch.float32).add_(0.5).mul_(1.0 / (1 << 23))

    def normal(self, stream: int, count: int) -> torch.Tensor:
        # (B, count) float32 standard normal (Box-Muller, both outputs used).
        half = (count + 1) // 2
        uniform = self.uniform(stream, 2 * half)
        radius = uniform[:, :half].log_().mul_(-2.0).sqrt_()
        angle = uniform[:, half:].mul_(2.0 * math.pi)
        return torch.cat([radius * torch.cos(angle), radius * angle.sin_()], dim=1)[:, :count]


# ----------------------------------------------------------------------------- filtering helpers


def _pad_replicate(pixels: torch.Tensor, radius_y: int, radius_x: int) -> torch.Tensor:
    if radius_y == 0 and radius_x == 0:
        return pixels
    return F.pad(pixels, (radius_x, radius_x, radius_y, radius_y), mode="replicate")


def _gaussian_taps(sigma: float) -> np.ndarray:
    # MATLAB's imgaussfilt / fspecial default support: 2 * ceil(2 * sigma) + 1 taps.
    radius = int(math.ceil(2.0 * sigma))
    offsets = np.arange(-radius, radius + 1, dtype=np.float64)
    taps = np.exp(-(offsets**2) / (2.0 * sigma * sigma))
    return taps / taps.sum()


def _correlate_along(pixels: torch.Tensor, taps: np.ndarray, dim: int) -> torch.Tensor:
    # Correlate every channel with taps along dim (2 = H, 3 = W), replicating the border.
    radius = (len(taps) - 1) // 2
    padded = _pad_replicate(pixels, radius if dim == 2 else 0, radius if dim == 3 else 0)
    length = pixels.shape[dim]
    filtered = padded.narrow(dim, 0, length) * float(taps[0])
    for offset in range(1, len(taps)):
        filtered.add_(padded.narrow(dim, offset, length), alpha=float(taps[offset]))
    return filtered


def _filter_separable(pixels: torch.Tensor, taps: np.ndarray) -> torch.Tensor:
    # Correlate every channel with taps along H and then W, replicating the border.
    # Filters here are sums of shifted copies, not conv2d: a convolution picks
    # its algorithm by tensor shape, so an image's result would depend on the
    # batch it came in by a rounding step, and the sums are as fast on CPU.
    return _correlate_along(_correlate_along(pixels, taps, 2), taps, 3)


def _gaussian_blur(pixels: torch.Tensor, sigma: float) -> torch.Tensor:
    return _filter_separable(pixels, _gaussian_taps(sigma))


def _filter_2d(pixels: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    # Correlate with one (1, K, K) kernel for all images or one (B, K, K) kernel each.
    height, width = pixels.shape[2:]
    size = kernels.shape[-1]
    padded = _pad_replicate(pixels, size // 2, size // 2)
    weights = kernels.to(pixels.dtype).view(kernels.shape[0], 1, size, size)
    # Taps that are zero for every image add exact zeros, so skipping them changes no bit.
    used = (weights != 0).any(dim=0).view(size, size).nonzero().tolist()
    filtered = torch.zeros_like(pixels)
    for row, column in used:
        shifted = padded[:, :, row : row + height, column : column + width]
        filtered.addcmul_(shifted, weights[:, :, row : row + 1, column : column + 1])
    return filtered


def _box_mean(pixels: torch.Tensor, radius: int) -> torch.Tensor:
    size = 2 * radius + 1
    return _filter_separable(pixels, np.full(size, 1.0 / size))


def _per_image_min_max(pixels: torch.Tensor) -> torch.Tensor:
    # MATLAB mapmm: stretch each image to [0, 1] unless it is constant.
    low = pixels.amin(dim=(1, 2, 3), keepdim=True)
    high = pixels.amax(dim=(1, 2, 3), keepdim=True)
    spread = high - low
    return torch.where(spread > 0, (pixels - low) / spread.clamp(min=1e-12), pixels)


def _mix_channels(matrix: list[list[float]], pixels: torch.Tensor) -> torch.Tensor:
    # (B, 3, H, W) with channel i = sum_j matrix[i][j] * pixels[:, j].
    # Elementwise sums rather than einsum: a matrix product may block differently per batch size.
    planes = [pixels[:, 0:1], pixels[:, 1:2], pixels[:, 2:3]]
    mixed = []
    for row in matrix:
        channel = planes[0] * row[0]
        channel.add_(planes[1], alpha=row[1]).add_(planes[2], alpha=row[2])
        mixed.append(channel)
    return torch.cat(mixed, dim=1)


# ----------------------------------------------------------------------------- colour spaces

# sRGB (D65) as in MATLAB's rgb2lab / lab2rgb.
_RGB_TO_XYZ = [
    [0.4124564, 0.3575761, 0.1804375],
    [0.2126729, 0.7151522, 0.0721750],
    [0.0193339, 0.1191920, 0.9503041],
]
_XYZ_TO_RGB = np.linalg.inv(np.array(_RGB_TO_XYZ)).tolist()
_WHITE_D65 = (0.95047, 1.0, 1.08883)
_LAB_DELTA = 6.0 / 29.0

# MATLAB's rgb2ycbcr for images in [0, 1] (ITU-R BT.601, studio swing).
_RGB_TO_YCBCR = [
    [65.481 / 255, 128.553 / 255, 24.966 / 255],
    [-37.797 / 255, -74.203 / 255, 112.0 / 255],
    [112.0 / 255, -93.786 / 255, -18.214 / 255],
]
_YCBCR_TO_RGB = np.linalg.inv(np.array(_RGB_TO_YCBCR)).tolist()
_YCBCR_OFFSET = (16.0 / 255, 128.0 / 255, 128.0 / 255)


def _white(pixels: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_WHITE_D65, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    linear = torch.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055).pow(2.4))
    xyz = _mix_channels(_RGB_TO_XYZ, linear) / _white(rgb)
    cube = _LAB_DELTA**3
    f = torch.where(xyz > cube, xyz.clamp(min=cube).pow(1.0 / 3.0), xyz / (3 * _LAB_DELTA**2) + 4.0 / 29.0)
    lightness = 116.0 * f[:, 1:2] - 16.0
    red_green = 500.0 * (f[:, 0:1] - f[:, 1:2])
    blue_yellow = 200.0 * (f[:, 1:2] - f[:, 2:3])
    return torch.cat([lightness, red_green, blue_yellow], dim=1)


def _lab_to_rgb(lab: torch.Tensor) -> torch.Tensor:
    # Lab to sRGB in [0, 1]; out-of-gamut colours are clipped, as MATLAB's truncate does.
    fy = (lab[:, 0:1] + 16.0) / 116.0
    f = torch.cat([fy + lab[:, 1:2] / 500.0, fy, fy - lab[:, 2:3] / 200.0], dim=1)
    xyz = torch.where(f > _LAB_DELTA, f.pow(3), 3 * _LAB_DELTA**2 * (f - 4.0 / 29.0)) * _white(lab)
    linear = _mix_channels(_XYZ_TO_RGB, xyz).clamp(0.0, 1.0)
    rgb = torch.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear.clamp(min=0.0031308).pow(1 / 2.4) - 0.055)
    return rgb.clamp(0.0, 1.0)


def _offset(pixels: torch.Tensor) -> torch.Tensor:
    return torch.tensor(_YCBCR_OFFSET, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)


def _rgb_to_ycbcr(rgb: torch.Tensor) -> torch.Tensor:
    return _mix_channels(_RGB_TO_YCBCR, rgb) + _offset(rgb)


def _ycbcr_to_rgb(ycbcr: torch.Tensor) -> torch.Tensor:
    return _mix_channels(_YCBCR_TO_RGB, ycbcr - _offset(ycbcr))


def _luma(rgb: torch.Tensor) -> torch.Tensor:
    # MATLAB rgb2gray weights.
    return 0.2989 * rgb[:, 0:1] + 0.5870 * rgb[:, 1:2] + 0.1140 * rgb[:, 2:3]


# ----------------------------------------------------------------------------- 1-3 blur


def _blur_gaussian(pixels: torch.Tensor, sigma: float, draws: _Draws) -> torch.Tensor:
    return _gaussian_blur(pixels, sigma)


@functools.cache
def _disk_kernel(radius: float) -> np.ndarray:
    # fspecial('disk'): each tap is the share of its pixel square inside the circle,
    # here estimated on a 32 x 32 sub-grid.
    half_size = int(math.ceil(radius - 0.5))
    subsamples = 32
    within = (np.arange(subsamples) + 0.5) / subsamples - 0.5
    coordinates = (np.arange(-half_size, half_size + 1)[:, None] + within[None, :]).ravel()
    inside = coordinates[:, None] ** 2 + coordinates[None, :] ** 2 <= radius * radius
    size = 2 * half_size + 1
    coverage = inside.reshape(size, subsamples, size, subsamples).mean(axis=(1, 3))
    return coverage / coverage.sum()


def _blur_lens(pixels: torch.Tensor, radius: float, draws: _Draws) -> torch.Tensor:
    kernel = torch.as_tensor(_disk_kernel(float(radius)), dtype=torch.float32, device=pixels.device)
    return _filter_2d(pixels, kernel.unsqueeze(0))


def _motion_kernels(length: float, angles: torch.Tensor) -> torch.Tensor:
    # (B, K, K) kernels of a length px line at angles (radians), as fspecial('motion').
    # Each tap weighs 1 - distance to the segment from -(length - 1) / 2 to
    # +(length - 1) / 2 through the centre (zero beyond one pixel); one pixel
    # long is the identity.
    half_length = (max(1.0, float(length)) - 1.0) / 2.0
    radius = int(math.floor(half_length)) + 1
    taps = torch.arange(-radius, radius + 1, dtype=torch.float32, device=angles.device)
    across = taps.view(1, 1, -1)
    down = taps.view(1, -1, 1)
    # Image rows grow downwards, so the direction at angle a is (cos a, -sin a) in (x, y).
    cosine = torch.cos(angles).view(-1, 1, 1)
    sine = -torch.sin(angles).view(-1, 1, 1)
    along = (across * cosine + down * sine).clamp(-half_length, half_length)
    distance = torch.sqrt((across - along * cosine) ** 2 + (down - along * sine) ** 2)
    kernels = (1 - distance).clamp(min=0)
    # Drop float dust (cos(pi / 2) is not 0 in float32): each nonzero tap costs a pass.
    kernels = torch.where(kernels > 1e-6, kernels, torch.zeros_like(kernels))
    return kernels / kernels.sum(dim=(1, 2), keepdim=True)


def _blur_motion(pixels: torch.Tensor, length: float, draws: _Draws) -> torch.Tensor:
    angles = draws.uniform(0, 1)[:, 0] * math.pi
    return _filter_2d(pixels, _motion_kernels(length, angles))


# ----------------------------------------------------------------------------- 4-8 colour


def _colour_diffusion(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    lab = _rgb_to_lab(pixels)
    chroma = _gaussian_blur(lab[:, 1:], 1.5 * amount + 2.0) * amount
    return _lab_to_rgb(torch.cat([lab[:, :1], chroma], dim=1))


def _percentile_stretch(values: torch.Tensor, percent: float) -> torch.Tensor:
    flat = values.flatten(1)
    count = flat.shape[1]
    low_rank = max(1, int(round(count * percent / 100.0)))
    high_rank = max(1, int(round(count * (100.0 - percent) / 100.0)))
    low = flat.kthvalue(low_rank, dim=1).values.view(-1, 1, 1, 1)
    high = flat.kthvalue(high_rank, dim=1).values.view(-1, 1, 1, 1)
    spread = (high - low).clamp(min=1e-12)
    return ((values - low) / spread).clamp(0.0, 1.0)


def _edge_weight(pixels: torch.Tensor) -> torch.Tensor:
    # imcolorshift's blend weight: smoothed gradient magnitude, near 0 on flat areas, 1 on edges.
    gray = _pad_replicate(_luma(pixels), 1, 1)
    gradient_x = (gray[:, :, 1:-1, 2:] - gray[:, :, 1:-1, :-2]) / 2
    gradient_y = (gray[:, :, 2:, 1:-1] - gray[:, :, :-2, 1:-1]) / 2
    magnitude = torch.sqrt(gradient_x**2 + gradient_y**2)
    weight = _per_image_min_max(_gaussian_blur(magnitude, 4.0)).clamp(0.1, 1.0)
    return _percentile_stretch(weight, 1.0)


def _shift_replicate(plane: torch.Tensor, shift_y: torch.Tensor, shift_x: torch.Tensor) -> torch.Tensor:
    # Translate each (B, 1, H, W) plane by its own integer offset, replicating the border.
    batch, _, height, width = plane.shape
    rows = (torch.arange(height, device=plane.device).unsqueeze(0) - shift_y.unsqueeze(1)).clamp(0, height - 1)
    columns = (torch.arange(width, device=plane.device).unsqueeze(0) - shift_x.unsqueeze(1)).clamp(0, width - 1)
    moved = plane[:, 0].gather(1, rows.unsqueeze(2).expand(batch, height, width))
    moved = moved.gather(2, columns.unsqueeze(1).expand(batch, height, width))
    return moved.unsqueeze(1)


def _colour_shift(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    direction = draws.uniform(0, 2)
    direction = direction / direction.norm(dim=1, keepdim=True)
    shift = (direction * amount).round().long()
    weight = _edge_weight(pixels)
    green = pixels[:, 1:2]
    shifted = _shift_replicate(green, shift[:, 0], shift[:, 1])
    blended = shifted * weight + green * (1 - weight)
    return torch.cat([pixels[:, :1], blended, pixels[:, 2:]], dim=1)


def _colour_quantisation(pixels: torch.Tensor, num_colours: int, draws: _Draws) -> torch.Tensor:
    # Error diffusion is sequential over pixels, so this stays a per-image C routine.
    from PIL import Image

    def quantise(array: np.ndarray) -> np.ndarray:
        image = Image.fromarray(array)
        paletted = image.quantize(
            colors=num_colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG
        )
        return np.asarray(paletted.convert("RGB"))

    return _per_image_on_cpu(pixels, quantise)


def _colour_saturation_hsv(pixels: torch.Tensor, factor: float, draws: _Draws) -> torch.Tensor:
    # With hue and value fixed every HSV channel is V * (1 - S * f(H)), so scaling S
    # is c' = V + factor * (c - V) -- for negative factors too, as MATLAB's hsv2rgb.
    value = pixels.amax(dim=1, keepdim=True)
    return value + factor * (pixels - value)


def _colour_saturation_lab(pixels: torch.Tensor, factor: float, draws: _Draws) -> torch.Tensor:
    lab = _rgb_to_lab(pixels)
    return _lab_to_rgb(torch.cat([lab[:, :1], lab[:, 1:] * factor], dim=1))


# ----------------------------------------------------------------------------- 9-10 compression


def _per_image_on_cpu(pixels: torch.Tensor, transform: Callable[[np.ndarray], np.ndarray]) -> torch.Tensor:
    # Run transform on each image as an (H, W, 3) uint8 array; back to float on the device.
    arrays = _to_uint8(pixels).permute(0, 2, 3, 1).cpu().numpy()
    results = np.stack([transform(np.ascontiguousarray(array)) for array in arrays])
    return torch.from_numpy(results).to(pixels.device).permute(0, 3, 1, 2).to(torch.float32) / 255.0


def _jpeg2000(pixels: torch.Tensor, ratio: int, draws: _Draws) -> torch.Tensor:
    from PIL import Image

    def compress(array: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        # Irreversible (9/7) wavelets, as MATLAB's lossy 'CompressionRatio' mode.
        Image.fromarray(array).save(
            buffer, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True
        )
        with Image.open(io.BytesIO(buffer.getvalue())) as decoded:
            return np.asarray(decoded.convert("RGB"))

    return _per_image_on_cpu(pixels, compress)


def _jpeg(pixels: torch.Tensor, quality: int, draws: _Draws) -> torch.Tensor:
    from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

    images = list(_to_uint8(pixels).cpu())
    encoded = encode_jpeg(images, quality=int(quality))
    decoded = decode_jpeg(encoded, mode=ImageReadMode.RGB)
    return torch.stack(decoded).to(pixels.device).to(torch.float32) / 255.0


# ----------------------------------------------------------------------------- 11-15 noise


def _noise_field(draws: _Draws, stream: int, like: torch.Tensor) -> torch.Tensor:
    return draws.normal(stream, like[0].numel()).view_as(like)


def _white_noise(pixels: torch.Tensor, variance: float, draws: _Draws) -> torch.Tensor:
    return pixels + math.sqrt(variance) * _noise_field(draws, 0, pixels)


def _white_noise_colour_component(pixels: torch.Tensor, variance: float, draws: _Draws) -> torch.Tensor:
    # imnoise clips the noisy YCbCr planes to [0, 1] before converting back.
    noisy = (_rgb_to_ycbcr(pixels) + math.sqrt(variance) * _noise_field(draws, 0, pixels)).clamp(0.0, 1.0)
    return _ycbcr_to_rgb(noisy)


def _impulse_noise(pixels: torch.Tensor, density: float, draws: _Draws) -> torch.Tensor:
    # imnoise 'salt & pepper' hits every channel of every pixel independently.
    chance = draws.uniform(0, pixels[0].numel()).view_as(pixels)
    pixels = torch.where(chance < density / 2, torch.zeros_like(pixels), pixels)
    return torch.where((chance >= density / 2) & (chance < density), torch.ones_like(pixels), pixels)


def _multiplicative_noise(pixels: torch.Tensor, variance: float, draws: _Draws) -> torch.Tensor:
    # imnoise 'speckle': uniform noise of mean 0 and the given variance.
    uniform = draws.uniform(0, pixels[0].numel()).view_as(pixels)
    return pixels + pixels * (uniform - 0.5) * math.sqrt(12.0 * variance)


def _denoise(pixels: torch.Tensor, variance: float, draws: _Draws) -> torch.Tensor:
    noise_std = math.sqrt(variance)
    noisy = (pixels + noise_std * _noise_field(draws, 0, pixels)).clamp(0.0, 1.0)
    # Stand-in for DnCNN: the stronger the noise, the wider both filters.
    pre_taps = _gaussian_taps(1.0 + 4.0 * noise_std)
    smoothed = _filter_separable(noisy, pre_taps)
    # Local variances from a few dozen pixels scatter widely, so a floor at the bare
    # residual noise variance leaves blotches; four times it flattens them.
    noise_floor = 4.0 * variance * float(np.sum(pre_taps**2)) ** 2
    radius = 2 + int(round(8.0 * noise_std))
    local_mean = _box_mean(smoothed, radius)
    local_variance = (_box_mean(smoothed * smoothed, radius) - local_mean**2).clamp(min=0.0)
    gain = (local_variance - noise_floor).clamp(min=0.0) / local_variance.clamp(min=noise_floor)
    return local_mean + gain * (smoothed - local_mean)


# ----------------------------------------------------------------------------- 16-18 brightness


def _parabola_curve(values: torch.Tensor, middle: float) -> torch.Tensor:
    # MATLAB curves(x, c): the spline (a parabola) through (0, 0), (0.5, c), (1, 1), clipped.
    quadratic = 2.0 - 4.0 * middle
    return (values * (quadratic * values + 1.0 - quadratic)).clamp(0.0, 1.0)


def _brighten(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    middle = 0.5 + amount / 2
    lab = _rgb_to_lab(pixels)
    lightness = _parabola_curve(lab[:, :1] / 100.0, middle) * 100.0
    through_lab = _lab_to_rgb(torch.cat([lightness, lab[:, 1:]], dim=1))
    return (2 * _parabola_curve(pixels, middle) + through_lab) / 3


def _darken(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    return _parabola_curve(pixels, 0.5 - amount / 2)


def _mean_shift(pixels: torch.Tensor, offset: float, draws: _Draws) -> torch.Tensor:
    return pixels + offset


# ----------------------------------------------------------------------------- 19-23 spatial


def _jitter(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    # imscatter: 5 rounds of resampling every pixel at a Gaussian-random offset (bicubic).
    batch, _, height, width = pixels.shape
    rows = torch.arange(height, dtype=torch.float32, device=pixels.device).view(1, height, 1)
    columns = torch.arange(width, dtype=torch.float32, device=pixels.device).view(1, 1, width)
    jittered = pixels
    for round_index in range(5):
        shifts = draws.normal(round_index, 2 * height * width).view(batch, 2, height, width) * amount
        source_x = (columns - shifts[:, 1]) * (2.0 / (width - 1)) - 1.0
        source_y = (rows - shifts[:, 0]) * (2.0 / (height - 1)) - 1.0
        grid = torch.stack([source_x, source_y], dim=-1)
        jittered = F.grid_sample(jittered, grid, mode="bicubic", padding_mode="border", align_corners=True)
    return jittered


def _patch_owner(top: torch.Tensor, left: torch.Tensor, size: int, height: int, width: int) -> torch.Tensor:
    # (B, H*W) index of the last of the (B, P) square patches covering each pixel, or -1.
    batch, num_patches = top.shape
    offsets = torch.arange(size, device=top.device)
    rows = top.unsqueeze(2) + offsets.view(1, 1, size)
    columns = left.unsqueeze(2) + offsets.view(1, 1, size)
    flat = (rows.unsqueeze(3) * width + columns.unsqueeze(2)).view(batch, -1)
    order = (
        torch.arange(num_patches, device=top.device).view(1, num_patches, 1).expand(batch, num_patches, size * size)
    )
    owner = torch.full((batch, height * width), -1, dtype=torch.int64, device=top.device)
    # 'amax' makes later patches win regardless of scatter order (deterministic on GPU too).
    return owner.scatter_reduce(1, flat, order.reshape(batch, -1), reduce="amax", include_self=True)


def _non_eccentricity_patch(pixels: torch.Tensor, num_patches: int, draws: _Draws) -> torch.Tensor:
    batch, channels, height, width = pixels.shape
    size = min(16, height, width)
    reach = 16
    draws_per_patch = draws.uniform(0, 4 * num_patches).view(batch, num_patches, 4)

    def positions(extent: int, start_draw: torch.Tensor, move_draw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        lowest = min(reach, extent - size)
        highest = max(lowest, extent - size - reach)
        source = (start_draw * (highest - lowest)).round().long() + lowest
        target = ((move_draw - 0.5) * reach + source).round().long().clamp(0, extent - size)
        return source, target

    source_y, target_y = positions(height, draws_per_patch[..., 0], draws_per_patch[..., 2])
    source_x, target_x = positions(width, draws_per_patch[..., 1], draws_per_patch[..., 3])
    owner = _patch_owner(target_y, target_x, size, height, width)
    patch = owner.clamp(min=0)
    pixel_index = torch.arange(height * width, device=pixels.device).unsqueeze(0)
    move = (source_y - target_y) * width + (source_x - target_x)
    is_covered = owner >= 0
    source_index = pixel_index + torch.where(is_covered, move.gather(1, patch), 0)
    flat = pixels.reshape(batch, channels, height * width)
    copied = flat.gather(2, source_index.unsqueeze(1).expand(batch, channels, -1))
    return torch.where(is_covered.unsqueeze(1), copied, flat).view_as(pixels)


def _pixelate(pixels: torch.Tensor, strength: float, draws: _Draws) -> torch.Tensor:
    scale = 0.95 - strength**0.6
    height, width = pixels.shape[2:]
    small = (max(1, math.ceil(scale * height)), max(1, math.ceil(scale * width)))
    coarse = F.interpolate(pixels, size=small, mode="nearest-exact")
    return F.interpolate(coarse, size=(height, width), mode="nearest-exact")


def _otsu_class_ends(histogram: torch.Tensor, num_classes: int) -> torch.Tensor:
    # (B, C) last bin of each class of the optimal (multi-level Otsu) split of (B, 256) counts.
    # Otsu's criterion is the within-class sum of squares, which is additive over
    # contiguous classes, so the exact optimum is a dynamic programme over bins.
    counts = histogram.to(torch.float64)
    values = torch.arange(256, dtype=torch.float64, device=counts.device)
    zero = torch.zeros_like(counts[:, :1])
    total = torch.cat([zero, counts.cumsum(1)], dim=1)
    first = torch.cat([zero, (counts * values).cumsum(1)], dim=1)
    second = torch.cat([zero, (counts * values * values).cumsum(1)], dim=1)
    # cost[b, i, j]: within-class sum of squares of bins i..j (infinite when i > j).
    size = total[:, None, 1:] - total[:, :-1, None]
    mean_sum = first[:, None, 1:] - first[:, :-1, None]
    square_sum = second[:, None, 1:] - second[:, :-1, None]
    cost = (square_sum - mean_sum**2 / size.clamp(min=1.0)).clamp(min=0.0)
    cost = cost.masked_fill(torch.ones(256, 256, dtype=torch.bool, device=counts.device).tril(-1), math.inf)
    best = cost[:, 0, :]
    starts = []
    for _ in range(1, num_classes):
        candidates = best[:, :-1].unsqueeze(2) + cost[:, 1:, :]
        best, start = candidates.min(dim=1)
        starts.append(start + 1)
    ends = [torch.full_like(best[:, 0], 255, dtype=torch.int64)]
    for start in reversed(starts):
        ends.append(start.gather(1, ends[-1].unsqueeze(1)).squeeze(1) - 1)
    return torch.stack(ends[::-1], dim=1)


def _quantisation(pixels: torch.Tensor, num_thresholds: int, draws: _Draws) -> torch.Tensor:
    batch = pixels.shape[0]
    levels = _to_uint8(pixels).long()
    histogram = torch.zeros(batch, 256, dtype=torch.int64, device=pixels.device)
    histogram.scatter_add_(1, levels.view(batch, -1), torch.ones_like(levels.view(batch, -1)))
    class_ends = _otsu_class_ends(histogram, num_thresholds + 1)
    values = torch.arange(256, device=pixels.device)
    class_of_value = (values.view(1, 256, 1) > class_ends[:, None, :-1]).sum(dim=2)
    # A class is shown as its largest occupied value; lowest class black, highest white.
    occupied = torch.where(histogram > 0, values.unsqueeze(0), torch.full_like(histogram, -1))
    shown = torch.full((batch, num_thresholds + 1), -1, dtype=torch.int64, device=pixels.device)
    shown = shown.scatter_reduce(1, class_of_value, occupied, reduce="amax", include_self=True)
    shown[:, 0] = 0
    shown[:, -1] = 255
    table = shown.gather(1, class_of_value).to(torch.float32) / 255.0
    return table.gather(1, levels.view(batch, -1)).view_as(pixels)


def _colour_block(pixels: torch.Tensor, num_blocks: int, draws: _Draws) -> torch.Tensor:
    batch, channels, height, width = pixels.shape
    size = min(32, height, width)
    place = draws.uniform(0, 2 * num_blocks).view(batch, num_blocks, 2)
    colours = draws.uniform(1, 3 * num_blocks).view(batch, num_blocks, 3)
    top = (place[..., 0] * (height - size + 1)).floor().long().clamp(max=height - size)
    left = (place[..., 1] * (width - size + 1)).floor().long().clamp(max=width - size)
    owner = _patch_owner(top, left, size, height, width)
    painted = colours.gather(1, owner.clamp(min=0).unsqueeze(2).expand(-1, -1, channels))
    painted = painted.permute(0, 2, 1).reshape_as(pixels)
    return torch.where(owner.view(batch, 1, height, width) >= 0, painted, pixels)


# ----------------------------------------------------------------------------- 24-25 sharpness and contrast


def _high_sharpen(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    # MATLAB imsharpen: unsharp masking of Lab lightness, Gaussian radius (sigma) 3.
    lab = _rgb_to_lab(pixels)
    lightness = lab[:, :1]
    sharpened = lightness + amount * (lightness - _gaussian_blur(lightness, 3.0))
    return _lab_to_rgb(torch.cat([sharpened, lab[:, 1:]], dim=1))


@functools.cache
def _contrast_table(amount: float) -> tuple[float, ...]:
    from scipy.interpolate import CubicSpline

    # MATLAB spline() defaults to not-a-knot end conditions.
    spline = CubicSpline(
        [0.0, 0.3, 0.5, 0.7, 1.0], [0.0, 0.25 - amount / 4, 0.5, 0.75 + amount / 4, 1.0], bc_type="not-a-knot"
    )
    return tuple(np.clip(spline(np.arange(256) / 255.0), 0.0, 1.0).tolist())


def _contrast_change(pixels: torch.Tensor, amount: float, draws: _Draws) -> torch.Tensor:
    table = torch.tensor(_contrast_table(float(amount)), dtype=torch.float32, device=pixels.device)
    return table[_to_uint8(pixels).long()]


_DISTORTIONS: dict[int, Distortion] = {
    1: _blur_gaussian,
    2: _blur_lens,
    3: _blur_motion,
    4: _colour_diffusion,
    5: _colour_shift,
    6: _colour_quantisation,
    7: _colour_saturation_hsv,
    8: _colour_saturation_lab,
    9: _jpeg2000,
    10: _jpeg,
    11: _white_noise,
    12: _white_noise_colour_component,
    13: _impulse_noise,
    14: _multiplicative_noise,
    15: _denoise,
    16: _brighten,
    17: _darken,
    18: _mean_shift,
    19: _jitter,
    20: _non_eccentricity_patch,
    21: _pixelate,
    22: _quantisation,
    23: _colour_block,
    24: _high_sharpen,
    25: _contrast_change,
}
