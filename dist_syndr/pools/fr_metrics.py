"""Full-reference metrics for many distorted images of few references: SSIM, MS-SSIM, GMSD, VIF, FSIM.

The definitions are those of piq 0.8 with its default arguments and ``data_range=1`` (``piq.ssim``,
``piq.multi_scale_ssim``, ``piq.gmsd``, ``piq.vif_p``, ``piq.fsim``); ``tests/test_fr_metrics.py`` holds every
value to piq's within float rounding. The computation is arranged for the sharding step, where each
reference comes with 5 to 125 distorted variants:

* whatever depends on the reference alone (its pyramids, local means and variances, gradient maps,
  phase congruency, VIF's information total) is computed once per reference (:func:`prepare_references`);
* Gaussian windows are separable and applied as sums of shifted copies (22 multiply-adds per pixel for
  SSIM's 11 x 11 window instead of 121), on whatever device the images are on;
* SSIM is MS-SSIM's first or second scale wherever piq's SSIM pools the image to exactly that scale;
* FSIM's log-Gabor filter bank is built once per image size (:mod:`dist_syndr.pools.phase_congruency`).

An image's result depends only on it and its reference, never on its batch or on the number of threads:
every filter is elementwise arithmetic and every spatial mean is taken row by row. On a GPU the float
rounding differs from the CPU's.

Shapes: ``B`` distorted images, ``R`` references, ``H x W`` pixels; images uint8 ``(B, 3, H, W)``;
``ref_index`` ``(B,)`` int64, the reference row of each image; per-channel maps ``(B, C, h, w)``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dist_syndr.pools.phase_congruency import phase_congruency

METRICS = ("ssim", "ms_ssim", "gmsd", "vif", "fsim")
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
# The window of SSIM and MS-SSIM, and MS-SSIM's five scales of it: piq's minimum sides.
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5
MS_SSIM_MIN_SIDE = (SSIM_WINDOW - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1
VIF_MIN_SIDE = 41
_SSIM_C1, _SSIM_C2 = 0.01**2, 0.03**2
_GMSD_T = 170 / 255.0**2
_VIF_EPS, _VIF_NOISE = 1e-8, 2.0
_FSIM_T1, _FSIM_T2, _FSIM_T3, _FSIM_T4, _FSIM_LAMBDA = 0.85, 160.0, 200.0, 200.0, 0.03
# Rows of output per pass on a CPU: every temporary of a band stays in cache (measured at 512 px wide).
_CPU_BAND_ROWS = 64


@dataclass
class References:
    """The reference-side quantities of ``R`` references, on their device (from :func:`prepare_references`)."""

    metrics: tuple[str, ...]
    height: int
    width: int
    ssim: list[dict[str, torch.Tensor]]  # per SSIM scale: the reference side of every local statistic
    ssim_scale: int | None  # which MS-SSIM scale SSIM is; None: SSIM has its own (ssim[-1])
    gmsd: torch.Tensor | None  # gradient magnitude (R, 1, h, w)
    vif: list[dict[str, torch.Tensor]]
    vif_information: torch.Tensor | None  # (R,)
    fsim: dict[str, torch.Tensor] | None

    @property
    def count(self) -> int:
        """``R``, the number of references."""
        return next(t.shape[0] for t in self._tensors())

    def _tensors(self):
        for scale in self.ssim + self.vif:
            yield from scale.values()
        if self.gmsd is not None:
            yield self.gmsd
        if self.fsim is not None:
            yield from self.fsim.values()


def available_metrics(height: int, width: int, metrics: tuple[str, ...] = METRICS) -> tuple[str, ...]:
    """Which of ``metrics`` apply to ``height x width`` images (MS-SSIM needs 161 px a side)."""
    if min(height, width) < VIF_MIN_SIDE:
        raise ValueError(f"weak labels need images of at least {VIF_MIN_SIDE} px a side, got {height}x{width}")
    unknown = sorted(set(metrics) - set(METRICS))
    if unknown:
        raise ValueError(f"unknown full-reference metric(s) {unknown}; known: {list(METRICS)}")
    return tuple(m for m in METRICS if m in metrics and (m != "ms_ssim" or min(height, width) >= MS_SSIM_MIN_SIDE))


def prepare_references(references: torch.Tensor, metrics: tuple[str, ...] = METRICS) -> References:
    """Everything the metrics need from the uint8 ``(R, 3, H, W)`` references alone."""
    _check_images(references, "references")
    height, width = references.shape[-2:]
    metrics = available_metrics(height, width, metrics)
    unit = _unit(references)
    ssim, ssim_scale = [], None
    if "ssim" in metrics or "ms_ssim" in metrics:
        levels, ssim_scale = _ssim_inputs(unit, "ms_ssim" in metrics, "ssim" in metrics)
        ssim = [_ssim_reference_side(level) for level in levels]
    vif, information = [], None
    if "vif" in metrics:
        vif = [_vif_reference_side(level, scale) for scale, level in enumerate(_vif_pyramid(_luma_255(unit)))]
        information = sum(_rows_sum(torch.log10(1.0 + side["sigma_sq"] / _VIF_NOISE)) for side in vif)
    return References(
        metrics=metrics,
        height=height,
        width=width,
        ssim=ssim,
        ssim_scale=ssim_scale,
        gmsd=_gmsd_gradients(unit) if "gmsd" in metrics else None,
        vif=vif,
        vif_information=information,
        fsim=_fsim_side(unit) if "fsim" in metrics else None,
    )


def qualities(distorted: torch.Tensor, references: References, ref_index: torch.Tensor) -> dict[str, torch.Tensor]:
    """Raw metric values ``(B,)`` float32 of uint8 ``(B, 3, H, W)`` images against ``references[ref_index]``."""
    _check_images(distorted, "distorted images")
    if tuple(distorted.shape[-2:]) != (references.height, references.width):
        raise ValueError(
            f"distorted images are {tuple(distorted.shape[-2:])} but their references "
            f"{(references.height, references.width)}"
        )
    ref_index = ref_index.to(device=distorted.device, dtype=torch.int64)
    if ref_index.shape != distorted.shape[:1]:
        raise ValueError(f"ref_index has shape {tuple(ref_index.shape)} for {distorted.shape[0]} distorted images")
    if ref_index.numel() and not 0 <= int(ref_index.min()) <= int(ref_index.max()) < references.count:
        raise ValueError(f"ref_index must lie in 0..{references.count - 1}, got {ref_index.tolist()[:8]}")
    unit = _unit(distorted)
    values = {}
    if references.ssim:
        values |= _ssim_values(unit, references, ref_index)
    if references.gmsd is not None:
        values["gmsd"] = _gmsd_value(unit, _pick(references.gmsd, ref_index))
    if references.vif:
        values["vif"] = _vif_value(unit, references, ref_index)
    if references.fsim is not None:
        values["fsim"] = _fsim_value(unit, {k: _pick(v, ref_index) for k, v in references.fsim.items()})
    return {name: values[name] for name in references.metrics}


# ----------------------------------------------------------------------------- shared pieces


def _check_images(images: torch.Tensor, name: str) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ValueError(f"{name} must be a uint8 (N, 3, H, W) tensor, got {shape}")
    if images.shape[1] != 3:
        raise ValueError(f"{name} must have 3 (RGB) channels, got shape {tuple(images.shape)}")


def _unit(images: torch.Tensor) -> torch.Tensor:
    # Contiguous first: a channels-last input would change the order of every spatial sum.
    return images.contiguous().to(torch.float32) / 255.0


def _pick(reference_side: torch.Tensor, ref_index: torch.Tensor) -> torch.Tensor:
    """The reference row of every image: a broadcast view for one reference, a gather for several."""
    if reference_side.shape[0] == 1:
        return reference_side
    return reference_side.index_select(0, ref_index)


def _rows_mean(maps: torch.Tensor) -> torch.Tensor:
    """Spatial mean ``(..., h, w) -> (...)``: each row, then the rows (thread- and batch-invariant)."""
    return maps.mean(dim=-1).mean(dim=-1)


def _rows_sum(maps: torch.Tensor) -> torch.Tensor:
    """Sum over everything but the batch dimension, row by row."""
    return maps.sum(dim=-1).sum(dim=-1).reshape(maps.shape[0], -1).sum(dim=-1)


@functools.cache
def _gaussian_taps(size: int, sigma: float) -> tuple[float, ...]:
    """The 1-D factor of piq's normalised ``size x size`` Gaussian window (its outer square is the window)."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    taps = torch.exp(-(offsets**2) / (2 * sigma**2))
    return tuple((taps / taps.sum()).tolist())


def _correlate(maps: torch.Tensor, taps: tuple[float, ...], dim: int, stride: int = 1) -> torch.Tensor:
    """Valid 1-D correlation along ``dim`` (-1 or -2) as a sum of shifted copies, every ``stride``-th output kept."""
    extent = maps.shape[dim] - len(taps) + 1
    total = None
    for offset, tap in enumerate(taps):
        shifted = maps.narrow(dim, offset, extent)
        if stride > 1:
            shifted = shifted[..., ::stride] if dim == -1 else shifted[..., ::stride, :]
        total = shifted * tap if total is None else total.add_(shifted, alpha=tap)
    return total


def _window(maps: torch.Tensor, taps: tuple[float, ...], stride: int = 1) -> torch.Tensor:
    """The separable 2-D window, valid region (piq's ``conv2d`` with the square window, no padding)."""
    return _correlate(_correlate(maps, taps, -1, stride), taps, -2, stride)


def _pool(images: torch.Tensor, factor: int) -> torch.Tensor:
    """``F.avg_pool2d(images, factor)``; for 2 the same sums in the same order through a strided view (faster)."""
    if factor == 1:
        return images
    if factor != 2:
        return F.avg_pool2d(images, factor)
    height, width = images.shape[-2] // 2, images.shape[-1] // 2
    quads = images[..., : 2 * height, : 2 * width].reshape(*images.shape[:-2], height, 2, width, 2)
    top_left, top_right = quads[..., 0, :, 0], quads[..., 0, :, 1]
    return (((top_left + top_right) + quads[..., 1, :, 0]) + quads[..., 1, :, 1]) / 4


def _bands(rows: int, device: torch.device) -> list[tuple[int, int]]:
    """Output row bands ``(top, count)``: small enough for the CPU's caches, one band on a GPU."""
    size = rows if device.type != "cpu" else _CPU_BAND_ROWS
    return [(top, min(size, rows - top)) for top in range(0, rows, size)]


def _similarity(a: torch.Tensor, b: torch.Tensor, constant: float) -> torch.Tensor:
    return (2.0 * a * b + constant) / (a * a + b * b + constant)


def _yiq(unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """YIQ planes ``(B, 1, H, W)`` each, with piq's ``rgb2yiq`` weights."""
    red, green, blue = unit[:, 0:1], unit[:, 1:2], unit[:, 2:3]
    luma = 0.299 * red + 0.587 * green + 0.114 * blue
    in_phase = 0.5959 * red - 0.2746 * green - 0.3213 * blue
    quadrature = 0.2115 * red - 0.5227 * green + 0.3112 * blue
    return luma, in_phase, quadrature


def _gradient_magnitude(plane: torch.Tensor, side: tuple[float, float, float], scale: float) -> torch.Tensor:
    """Zero-padded 3 x 3 gradient magnitude; the x kernel is ``side`` (down a column) times ``[-1, 0, 1]`` / scale."""
    padded = F.pad(plane, (1, 1, 1, 1))
    across = padded[..., 2:] - padded[..., :-2]  # x difference at every row, columns 1..W
    down = padded[..., 2:, :] - padded[..., :-2, :]
    height, width = plane.shape[-2:]
    grad_x = (side[0] * across[..., 0:height, :] + side[1] * across[..., 1 : height + 1, :]) + side[2] * across[
        ..., 2 : height + 2, :
    ]
    grad_y = (side[0] * down[..., :, 0:width] + side[1] * down[..., :, 1 : width + 1]) + side[2] * down[
        ..., :, 2 : width + 2
    ]
    return torch.sqrt((grad_x / scale) ** 2 + (grad_y / scale) ** 2)


# ----------------------------------------------------------------------------- SSIM and MS-SSIM


def _ssim_inputs(unit: torch.Tensor, is_multi_scale: bool, wants_ssim: bool) -> tuple[list[torch.Tensor], int | None]:
    """The images at every MS-SSIM scale (or none), plus SSIM's own pooled image where it is no scale of them."""
    levels = []
    if is_multi_scale:
        levels.append(unit)
        for _ in range(len(MS_SSIM_WEIGHTS) - 1):
            levels.append(_halve(levels[-1]))
    if not wants_ssim:
        return levels, None
    factor = max(1, round(min(unit.shape[-2:]) / 256))  # piq's SSIM pools by this first
    even = unit.shape[-2] % 2 == 0 and unit.shape[-1] % 2 == 0
    if is_multi_scale and (factor == 1 or (factor == 2 and even)):
        return levels, factor - 1
    return levels + [_pool(unit, factor)], None


def _halve(images: torch.Tensor) -> torch.Tensor:
    """MS-SSIM's next scale: replicate one row and column at the top-left where a side is odd, then 2 x 2 means."""
    padding = max(images.shape[-2] % 2, images.shape[-1] % 2)
    if padding:
        images = F.pad(images, (padding, 0, padding, 0), mode="replicate")
    return _pool(images, 2)


def _ssim_reference_side(reference: torch.Tensor) -> dict[str, torch.Tensor]:
    taps = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA)
    mean = _window(reference, taps)
    mean_sq = mean * mean
    return {
        "image": reference,
        "mean": mean,
        "mean_sq": mean_sq,
        "var": _window(reference * reference, taps) - mean_sq,
    }


def _ssim_scale(
    distorted: torch.Tensor, side: dict[str, torch.Tensor], ref_index: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel SSIM and contrast-structure means ``(B, 3)`` at one scale, band by band of output rows."""
    taps = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA)
    reach = len(taps) - 1
    ssim_rows, contrast_rows = [], []
    for top, rows in _bands(distorted.shape[-2] - reach, distorted.device):
        image = distorted[..., top : top + rows + reach, :]
        reference = _pick(side["image"][..., top : top + rows + reach, :], ref_index)  # band first, then gather
        mean_y, var_y, mean_yy = (
            _pick(side[k][..., top : top + rows, :], ref_index) for k in ("mean", "var", "mean_sq")
        )
        mean_x = _window(image, taps)
        mean_xx, mean_xy = mean_x * mean_x, mean_x * mean_y
        var_x = _window(image * image, taps) - mean_xx
        covariance = _window(image * reference, taps) - mean_xy
        contrast = (2.0 * covariance + _SSIM_C2) / (var_x + var_y + _SSIM_C2)
        luminance = (2.0 * mean_xy + _SSIM_C1) / (mean_xx + mean_yy + _SSIM_C1)
        ssim_rows.append((luminance * contrast).mean(dim=-1))
        contrast_rows.append(contrast.mean(dim=-1))
    return torch.cat(ssim_rows, dim=-1).mean(dim=-1), torch.cat(contrast_rows, dim=-1).mean(dim=-1)


def _ssim_values(unit: torch.Tensor, references: References, ref_index: torch.Tensor) -> dict[str, torch.Tensor]:
    metrics, values = references.metrics, {}
    is_multi_scale = "ms_ssim" in metrics
    level, per_scale = unit, []
    scales = len(MS_SSIM_WEIGHTS) if is_multi_scale else 0
    for scale in range(scales):
        if scale:
            level = _halve(level)
        per_scale.append(_ssim_scale(level, references.ssim[scale], ref_index))
    if is_multi_scale:
        factors = [contrast for _, contrast in per_scale[:-1]] + [per_scale[-1][0]]
        stacked = torch.relu(torch.stack(factors))  # (5, B, 3)
        weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=stacked.dtype, device=stacked.device).view(-1, 1, 1)
        values["ms_ssim"] = torch.prod(stacked**weights, dim=0).mean(dim=1)
    if "ssim" in metrics:
        if references.ssim_scale is not None:
            values["ssim"] = per_scale[references.ssim_scale][0].mean(dim=1)
        else:
            factor = max(1, round(min(unit.shape[-2:]) / 256))
            pooled = _pool(unit, factor)
            values["ssim"] = _ssim_scale(pooled, references.ssim[-1], ref_index)[0].mean(dim=1)
    return values


# ----------------------------------------------------------------------------- GMSD


def _gmsd_gradients(unit: torch.Tensor) -> torch.Tensor:
    luma = _yiq(unit)[0]
    odd = max(luma.shape[-2] % 2, luma.shape[-1] % 2)
    pooled = _pool(F.pad(luma, (0, odd, 0, odd)), 2)
    return _gradient_magnitude(pooled, (1.0, 1.0, 1.0), 3.0)  # Prewitt


def _gmsd_value(unit: torch.Tensor, reference_gradients: torch.Tensor) -> torch.Tensor:
    similarity = _similarity(_gmsd_gradients(unit), reference_gradients, _GMSD_T)
    mean = _rows_mean(similarity).view(-1, 1, 1, 1)
    return _rows_mean((similarity - mean) ** 2).view(-1).sqrt()


# ----------------------------------------------------------------------------- VIF (pixel domain)


def _luma_255(unit: torch.Tensor) -> torch.Tensor:
    scaled = unit * 255
    return 0.299 * scaled[:, 0:1] + 0.587 * scaled[:, 1:2] + 0.114 * scaled[:, 2:3]


def _vif_taps(scale: int) -> tuple[float, ...]:
    size = 2 ** (4 - scale) + 1
    return _gaussian_taps(size, size / 5)


def _vif_pyramid(luma: torch.Tensor) -> list[torch.Tensor]:
    """The four scales: each later one the previous filtered by its own window and subsampled by 2."""
    levels = [luma]
    for scale in range(1, 4):
        levels.append(_window(levels[-1], _vif_taps(scale), stride=2))
    return levels


def _vif_reference_side(reference: torch.Tensor, scale: int) -> dict[str, torch.Tensor]:
    taps = _vif_taps(scale)
    mean = _window(reference, taps)
    sigma_sq = torch.relu(_window(reference * reference, taps) - mean * mean)
    return {"image": reference, "mean": mean, "sigma_sq": torch.where(sigma_sq >= _VIF_EPS, sigma_sq, 0.0)}


def _vif_value(unit: torch.Tensor, references: References, ref_index: torch.Tensor) -> torch.Tensor:
    information = None
    for scale, level in enumerate(_vif_pyramid(_luma_255(unit))):
        side, taps = references.vif[scale], _vif_taps(scale)
        reach = len(taps) - 1
        for top, rows in _bands(level.shape[-2] - reach, level.device):
            band = level[..., top : top + rows + reach, :]
            reference = _pick(side["image"][..., top : top + rows + reach, :], ref_index)
            mean_y, sigma_y_sq = (_pick(side[k][..., top : top + rows, :], ref_index) for k in ("mean", "sigma_sq"))
            term = _rows_sum(_vif_information(band, reference, mean_y, sigma_y_sq, taps))
            information = term if information is None else information + term
    total = _pick(references.vif_information, ref_index)
    return (information + _VIF_EPS) / (total + _VIF_EPS)


def _vif_information(
    band: torch.Tensor, reference: torch.Tensor, mean_y: torch.Tensor, sigma_y_sq: torch.Tensor, taps
) -> torch.Tensor:
    """The information the distorted band keeps, per pixel (``sigma_y_sq`` already zero below the floor)."""
    mean_x = _window(band, taps)
    sigma_x_sq = torch.relu(_window(band * band, taps) - mean_x * mean_x)
    covariance = _window(band * reference, taps) - mean_x * mean_y
    is_textured = sigma_y_sq >= _VIF_EPS
    gain = torch.where(is_textured, covariance / (sigma_y_sq + _VIF_EPS), 0.0)
    residual = torch.where(is_textured, sigma_x_sq - gain * covariance, sigma_x_sq)
    is_visible = sigma_x_sq >= _VIF_EPS
    gain = torch.where(is_visible, gain, 0.0)
    residual = torch.where(is_visible, residual, 0.0)
    residual = torch.where(gain >= 0, residual, sigma_x_sq)
    gain = torch.relu(gain)
    residual = torch.where(residual > _VIF_EPS, residual, _VIF_EPS)
    return torch.log10(1.0 + gain * gain * sigma_y_sq / (residual + _VIF_NOISE))


# ----------------------------------------------------------------------------- FSIM


def _fsim_planes(unit: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    factor = max(1, round(min(unit.shape[-2:]) / 256))
    scaled = unit * 255
    return _yiq(_pool(scaled, factor))


def _fsim_side(unit: torch.Tensor) -> dict[str, torch.Tensor]:
    luma, in_phase, quadrature = _fsim_planes(unit)
    return {
        "pc": phase_congruency(luma),
        "gradient": _gradient_magnitude(luma, (3.0, 10.0, 3.0), 16.0),  # Scharr
        "i": in_phase,
        "q": quadrature,
    }


def _fsim_value(unit: torch.Tensor, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    side = _fsim_side(unit)
    pc_max = torch.maximum(side["pc"], reference["pc"])
    score = _similarity(side["gradient"], reference["gradient"], _FSIM_T2)
    score = score * _similarity(side["pc"], reference["pc"], _FSIM_T1) * pc_max
    chroma = _similarity(side["i"], reference["i"], _FSIM_T3) * _similarity(side["q"], reference["q"], _FSIM_T4)
    score = score * torch.abs(chroma) ** _FSIM_LAMBDA
    return _rows_sum(score) / _rows_sum(pc_max)
