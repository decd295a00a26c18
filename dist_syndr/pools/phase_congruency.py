"""Phase congruency, FSIM's feature map: Kovesi's log-Gabor measure (PC_2) as piq 0.8's ``fsim`` computes it.

The filter bank (4 scales from 6 px by x2, 4 orientations) and the noise
constants that depend on it alone are built once per image size and device.
Each image goes through its own FFTs, one orientation at a time: the transforms
of one call are always the same 4 (so a result never depends on the batch),
and on a CPU the temporaries of one orientation stay in cache.

Shapes: luma planes ``(B, 1, h, w)``; filters ``(orientations * scales, h, w)``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch

_PC_SCALES, _PC_ORIENTATIONS = 4, 4


@dataclass(frozen=True)
class _FilterBank:
    """Log-Gabor filters of one image size and the noise constants that depend on them alone."""

    filters: torch.Tensor  # (orientations * scales, h, w), orientation-major
    smallest_energy: torch.Tensor  # (orientations, 1, 1): squared filter sum at the smallest scale
    spatial_sq: torch.Tensor  # (orientations, 1, 1): sum of squared spatial filters over scales
    spatial_cross: torch.Tensor  # (orientations, 1, 1): sum of neighbouring-scale products


@functools.lru_cache(maxsize=8)
def _filter_bank(height: int, width: int, device: torch.device) -> _FilterBank:
    """Kovesi's log-Gabor bank as FSIM builds it: 4 scales from 6 px by x2, 4 orientations."""
    min_length, mult, sigma_f, delta_theta = 6, 2, 0.55, 1.2
    rows = _centred_frequencies(height, device)
    cols = _centred_frequencies(width, device)
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    radius = torch.sqrt(grid_r**2 + grid_c**2)
    theta = torch.atan2(-grid_c, grid_r)
    low_pass = torch.fft.ifftshift(1.0 / (1.0 + (radius / 0.45) ** 30))
    radius, theta = torch.fft.ifftshift(radius), torch.fft.ifftshift(theta)
    radius[0, 0] = 1
    radial = []
    for scale in range(_PC_SCALES):
        centre = 1.0 / (min_length * mult**scale)
        band = torch.exp(-(torch.log(radius / centre) ** 2) / (2 * math.log(sigma_f) ** 2)) * low_pass
        band[0, 0] = 0
        radial.append(band)
    angular = []
    theta_sigma = math.pi / (_PC_ORIENTATIONS * delta_theta)
    sin_theta, cos_theta = torch.sin(theta), torch.cos(theta)
    for orientation in range(_PC_ORIENTATIONS):
        angle = orientation * math.pi / _PC_ORIENTATIONS
        sin_diff = sin_theta * math.cos(angle) - cos_theta * math.sin(angle)
        cos_diff = cos_theta * math.cos(angle) + sin_theta * math.sin(angle)
        angular.append(torch.exp(-(torch.atan2(sin_diff, cos_diff).abs() ** 2) / (2 * theta_sigma**2)))
    filters = torch.stack([spread * band for spread in angular for band in radial])
    spatial = (torch.fft.ifft2(filters).real * math.sqrt(height * width)).view(_PC_ORIENTATIONS, _PC_SCALES, -1)
    cross = sum((spatial[:, s : s + 1] * spatial[:, s + 1 :]).sum(dim=1) for s in range(_PC_SCALES - 1))
    return _FilterBank(
        filters=filters,
        smallest_energy=(filters.view(_PC_ORIENTATIONS, _PC_SCALES, -1)[:, 0] ** 2).sum(-1).view(-1, 1, 1),
        spatial_sq=(spatial**2).sum(dim=1).sum(-1).view(-1, 1, 1),
        spatial_cross=cross.sum(-1).view(-1, 1, 1),
    )


def _centred_frequencies(size: int, device: torch.device) -> torch.Tensor:
    if size % 2:
        return torch.arange(-(size - 1) / 2, size / 2, device=device) / (size - 1)
    return torch.arange(-size / 2, size / 2, device=device) / size


def phase_congruency(luma: torch.Tensor) -> torch.Tensor:
    """Phase congruency ``(B, 1, h, w)`` of luma planes ``(B, 1, h, w)`` (Kovesi's PC_2 as FSIM uses it)."""
    batch, _, height, width = luma.shape
    bank = _filter_bank(height, width, luma.device)
    # A CPU takes one image per transform call (results independent of the batch); a GPU the whole batch.
    step = 1 if luma.device.type == "cpu" else batch
    return torch.cat([_congruency(luma[start : start + step], bank) for start in range(0, batch, step)])


def _congruency(luma: torch.Tensor, bank: _FilterBank) -> torch.Tensor:
    count, _, height, width = luma.shape
    eps = torch.finfo(luma.dtype).eps
    filters = bank.filters.view(_PC_ORIENTATIONS, _PC_SCALES, height, width)
    spectrum = torch.fft.fft2(luma)  # (n, 1, h, w)
    energy_sum, amplitude_sum = None, None
    for orientation in range(_PC_ORIENTATIONS):
        pairs = torch.view_as_real(torch.fft.ifft2(spectrum * filters[orientation]))
        even, odd = pairs[..., 0], pairs[..., 1]  # (n, scales, h, w)
        amplitude = torch.sqrt(even**2 + odd**2)
        sum_even, sum_odd = even.sum(dim=1, keepdim=True), odd.sum(dim=1, keepdim=True)
        norm = torch.sqrt(sum_even**2 + sum_odd**2) + eps
        mean_even, mean_odd = sum_even / norm, sum_odd / norm
        energy = (even * mean_even + odd * mean_odd - torch.abs(even * mean_odd - odd * mean_even)).sum(dim=1)
        # Noise from the median squared amplitude at the smallest scale (Rayleigh-distributed energy).
        median = torch.median((amplitude[:, 0] ** 2).reshape(count, -1), dim=-1).values.view(count, 1, 1)
        noise_power = (-median / math.log(0.5)) / bank.smallest_energy[orientation]
        spread = 2 * noise_power * bank.spatial_sq[orientation] + 4 * noise_power * bank.spatial_cross[orientation]
        tau = torch.sqrt(spread / 2)
        threshold = (tau * math.sqrt(math.pi / 2) + 2.0 * torch.sqrt((2 - math.pi / 2) * tau**2)) / 1.7
        energy = torch.clamp_min(energy - threshold, 0.0)
        amplitude = amplitude.sum(dim=1)
        energy_sum = energy if energy_sum is None else energy_sum + energy
        amplitude_sum = amplitude if amplitude_sum is None else amplitude_sum + amplitude
    return ((energy_sum + eps) / (amplitude_sum + eps)).unsqueeze(1)
