"""Photo-like degradations of rendered images, so an encoder trained on renders works on photos.

`augment_images` applies, batched in torch, a random subset of camera effects to each image,
each with its own random strength, in the order a camera applies them:

1. lens blur: Gaussian with sigma drawn per image (the rest stay sharp);
2. motion blur: a short line kernel at a random angle (rare);
3. colour: white balance / tint gains, brightness, contrast, saturation, gamma;
4. sensor noise: signal-dependent (Poisson-like, variance proportional to intensity) plus
   Gaussian read noise, mixed between luminance-only and per-channel (chroma) noise;
5. JPEG: RGB -> YCbCr (JFIF), 2x2 chroma subsampling, 8x8 DCT, quantisation with the
   libjpeg tables scaled to a random quality, and back.

Per-image parameters come from the given `torch.Generator` (on its device); per-pixel noise
is drawn on the images' device from a generator seeded by it, so the same seed gives the same
result on one device and no call touches the global RNG.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

# ITU-R BT.601 luma weights, used by JPEG's YCbCr and for contrast / saturation.
LUMA_WEIGHTS = (0.299, 0.587, 0.114)
# libjpeg's base quantisation tables (ITU T.81 Annex K), quality 50.
_JPEG_LUMA_TABLE = (
    (16, 11, 10, 16, 24, 40, 51, 61),
    (12, 12, 14, 19, 26, 58, 60, 55),
    (14, 13, 16, 24, 40, 57, 69, 56),
    (14, 17, 22, 29, 51, 87, 80, 62),
    (18, 22, 37, 56, 68, 109, 103, 77),
    (24, 35, 55, 64, 81, 104, 113, 92),
    (49, 64, 78, 87, 103, 121, 120, 101),
    (72, 92, 95, 98, 112, 100, 103, 99),
)
_JPEG_CHROMA_TABLE = (
    (17, 18, 24, 47, 99, 99, 99, 99),
    (18, 21, 26, 66, 99, 99, 99, 99),
    (24, 26, 56, 99, 99, 99, 99, 99),
    (47, 66, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
    (99, 99, 99, 99, 99, 99, 99, 99),
)


@dataclass(frozen=True)
class AugmentConfig:
    """Probabilities (the share of images an effect touches) and the ranges strengths are drawn from.

    Blur sigmas and motion lengths are in pixels of the images given; noise standard
    deviations are in units of the [0, 1] intensity range.
    """

    blur_probability: float = 0.4
    blur_sigma_px: tuple[float, float] = (0.3, 1.6)
    motion_blur_probability: float = 0.08
    motion_length_px: tuple[float, float] = (2.0, 6.0)
    colour_probability: float = 0.8
    brightness: tuple[float, float] = (0.75, 1.25)  # multiplicative gain
    contrast: tuple[float, float] = (0.75, 1.25)  # scale about the mean luminance
    saturation: tuple[float, float] = (0.6, 1.3)  # 0 is grey
    gamma: tuple[float, float] = (0.8, 1.25)  # exponent
    white_balance_std: float = 0.07  # std of the log-gains of red and blue against green
    tint_std: float = 0.03  # std of the log-gain of green (magenta / green tint)
    noise_probability: float = 0.6
    read_noise_std: tuple[float, float] = (0.002, 0.03)  # drawn log-uniformly
    shot_noise_std: tuple[float, float] = (0.005, 0.05)  # at intensity 1, drawn log-uniformly
    chroma_noise_share: tuple[float, float] = (0.0, 0.6)  # 0: luminance only
    jpeg_probability: float = 0.5
    jpeg_quality: tuple[float, float] = (25.0, 95.0)

    def __post_init__(self) -> None:
        for name in (
            "blur_probability",
            "motion_blur_probability",
            "colour_probability",
            "noise_probability",
            "jpeg_probability",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"AugmentConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in (
            "blur_sigma_px",
            "motion_length_px",
            "brightness",
            "contrast",
            "saturation",
            "gamma",
            "read_noise_std",
            "shot_noise_std",
            "chroma_noise_share",
            "jpeg_quality",
        ):
            low, high = getattr(self, name)
            if not 0.0 <= low <= high:
                raise ValueError(
                    f"AugmentConfig.{name} must be a range (low, high) with 0 <= low <= high, got {(low, high)}"
                )
        if not 1.0 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100.0:
            raise ValueError(f"AugmentConfig.jpeg_quality must lie within [1, 100], got {self.jpeg_quality}")


def augment_images(images: Tensor, generator: torch.Generator, config: AugmentConfig = AugmentConfig()) -> Tensor:
    """Photo-like versions (B, 3, H, W) in [0, 1] of rendered images (B, 3, H, W) in [0, 1].

    Each effect of the module docstring touches a random subset of the batch with a random
    strength drawn from `config`; the input is left unchanged. Runs on the images' device.
    """
    if images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        raise ValueError(
            f"images must be a float tensor of shape (B, 3, H, W), got {tuple(images.shape)} {images.dtype}"
        )
    count = images.shape[0]
    out = images.float().clamp(0.0, 1.0)
    if count == 0:
        return out
    pixels = _pixel_generator(generator, out.device)

    chosen = _chosen(count, config.blur_probability, generator)
    if chosen.numel():
        sigma = _uniform(chosen.numel(), config.blur_sigma_px, generator)
        out[chosen.to(out.device)] = gaussian_blur(out[chosen.to(out.device)], sigma.to(out.device))

    chosen = _chosen(count, config.motion_blur_probability, generator)
    if chosen.numel():
        length = _uniform(chosen.numel(), config.motion_length_px, generator)
        angle = _uniform(chosen.numel(), (0.0, math.pi), generator)
        index = chosen.to(out.device)
        out[index] = _motion_blur(out[index], length.to(out.device), angle.to(out.device))

    chosen = _chosen(count, config.colour_probability, generator)
    if chosen.numel():
        index = chosen.to(out.device)
        out[index] = _colour_jitter(out[index], config, generator)

    chosen = _chosen(count, config.noise_probability, generator)
    if chosen.numel():
        index = chosen.to(out.device)
        out[index] = _sensor_noise(out[index], config, generator, pixels)

    chosen = _chosen(count, config.jpeg_probability, generator)
    if chosen.numel():
        quality = _uniform(chosen.numel(), config.jpeg_quality, generator)
        index = chosen.to(out.device)
        out[index] = jpeg_compress(out[index], quality.to(out.device))
    return out.clamp(0.0, 1.0)


def gaussian_blur(images: Tensor, sigma: Tensor) -> Tensor:
    """Images (B, C, H, W) each blurred by a Gaussian of its own std `sigma` (B,) in pixels.

    Separable, reflect-padded; a sigma of 0 leaves that image as it is. Shared with the
    background generator (out-of-focus backgrounds).
    """
    batch, channels, height, width = images.shape
    sigma = sigma.to(images.device, images.dtype).clamp_min(0.0)
    if batch == 0 or min(height, width) < 3:
        return images
    radius = min(max(1, math.ceil(3.0 * float(sigma.max()))), (min(height, width) - 1) // 2)
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    kernel = torch.exp(-0.5 * (taps[None] / sigma[:, None].clamp_min(1e-3)) ** 2)  # (B, K)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    kernel = kernel.repeat_interleave(channels, dim=0)  # (B*C, K)
    flat = images.reshape(1, batch * channels, height, width)
    flat = F.conv2d(
        F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernel[:, None, None, :], groups=batch * channels
    )
    flat = F.conv2d(
        F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernel[:, None, :, None], groups=batch * channels
    )
    return flat.view(batch, channels, height, width)


def jpeg_compress(images: Tensor, quality: Tensor) -> Tensor:
    """Images (B, 3, H, W) in [0, 1] after a JPEG-like round trip at quality (B,) in [1, 100].

    Baseline JPEG's lossy steps (YCbCr, 4:2:0 chroma, 8x8 DCT, libjpeg-scaled quantisation
    tables), without entropy coding, which is lossless; sizes need not be multiples of 16.
    """
    _batch, _, height, width = images.shape
    pad_h, pad_w = (-height) % 16, (-width) % 16
    rgb = F.pad(images * 255.0, (0, pad_w, 0, pad_h), mode="replicate")
    luma_w = torch.tensor(LUMA_WEIGHTS, device=images.device, dtype=images.dtype)
    y = torch.einsum("c,bchw->bhw", luma_w, rgb)[:, None]
    cb = 128.0 + (rgb[:, 2:3] - y) * (0.5 / (1.0 - LUMA_WEIGHTS[2]))
    cr = 128.0 + (rgb[:, 0:1] - y) * (0.5 / (1.0 - LUMA_WEIGHTS[0]))
    chroma = F.avg_pool2d(torch.cat([cb, cr], dim=1), 2)
    luma_table, chroma_table = _quantisation_tables(quality, images.device, images.dtype)
    y = _dct_quantise(y, luma_table)
    chroma = _dct_quantise(chroma, chroma_table)
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = chroma[:, 0:1] - 128.0, chroma[:, 1:2] - 128.0
    red = y + cr * (2.0 * (1.0 - LUMA_WEIGHTS[0]))
    blue = y + cb * (2.0 * (1.0 - LUMA_WEIGHTS[2]))
    green = (y - LUMA_WEIGHTS[0] * red - LUMA_WEIGHTS[2] * blue) / LUMA_WEIGHTS[1]
    out = torch.cat([red, green, blue], dim=1)[:, :, :height, :width] / 255.0
    return out.clamp(0.0, 1.0)


def _quantisation_tables(quality: Tensor, device: torch.device, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """(B, 8, 8) luma and chroma tables at each quality, scaled as libjpeg's `jpeg_quality_scaling`."""
    quality = quality.to(device, dtype).clamp(1.0, 100.0).round()
    scale = torch.where(quality < 50, 5000.0 / quality, 200.0 - 2.0 * quality)[:, None, None]
    tables = []
    for base in (_JPEG_LUMA_TABLE, _JPEG_CHROMA_TABLE):
        table = torch.tensor(base, device=device, dtype=dtype)[None]
        tables.append(torch.floor((table * scale + 50.0) / 100.0).clamp(1.0, 255.0))
    return tables[0], tables[1]


def _dct_quantise(plane: Tensor, table: Tensor) -> Tensor:
    """Planes (B, C, H, W), H and W multiples of 8, with each 8x8 block's DCT quantised by `table` (B, 8, 8)."""
    batch, channels, height, width = plane.shape
    basis = _dct_matrix(plane.device, plane.dtype)
    blocks = (plane - 128.0).view(batch, channels, height // 8, 8, width // 8, 8).transpose(3, 4)
    coefficients = basis @ blocks @ basis.T
    step = table[:, None, None, None]
    coefficients = torch.round(coefficients / step) * step
    blocks = basis.T @ coefficients @ basis
    return blocks.transpose(3, 4).reshape(batch, channels, height, width) + 128.0


def _dct_matrix(device: torch.device, dtype: torch.dtype) -> Tensor:
    """The orthonormal 8-point DCT-II matrix (row k: frequency k)."""
    k = torch.arange(8, device=device, dtype=torch.float64)[:, None]
    n = torch.arange(8, device=device, dtype=torch.float64)[None]
    matrix = torch.cos(math.pi * (2 * n + 1) * k / 16) * math.sqrt(2 / 8)
    matrix[0] = math.sqrt(1 / 8)
    return matrix.to(dtype)


def _motion_blur(images: Tensor, length: Tensor, angle: Tensor) -> Tensor:
    """Images (B, C, H, W) each convolved with a line of `length` (B,) pixels at `angle` (B,) radians."""
    batch, channels, height, width = images.shape
    radius = min(math.ceil(float(length.max()) / 2) + 1, (min(height, width) - 1) // 2)
    if radius < 1:
        return images
    taps = torch.arange(-radius, radius + 1, device=images.device, dtype=images.dtype)
    grid_y, grid_x = torch.meshgrid(taps, taps, indexing="ij")
    direction = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)[:, :, None, None]  # (B, 2, 1, 1)
    along = grid_x * direction[:, 0] + grid_y * direction[:, 1]
    across = (-grid_x * direction[:, 1] + grid_y * direction[:, 0]).abs()
    beyond = (along.abs() - length[:, None, None] / 2).clamp_min(0.0)
    kernel = (1.0 - torch.sqrt(across**2 + beyond**2)).clamp_min(0.0)  # (B, K, K), a 1-px-wide soft segment
    kernel = kernel / kernel.sum(dim=(1, 2), keepdim=True)
    kernel = kernel.repeat_interleave(channels, dim=0)[:, None]
    flat = F.pad(images.reshape(1, batch * channels, height, width), (radius,) * 4, mode="reflect")
    return F.conv2d(flat, kernel, groups=batch * channels).view(batch, channels, height, width)


def _colour_jitter(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """White balance / tint, brightness, contrast, saturation and gamma, each drawn per image."""
    count, device = images.shape[0], images.device
    log_gains = torch.randn(count, 3, generator=generator, device=generator.device)
    log_gains = log_gains * torch.tensor(
        [config.white_balance_std, config.tint_std, config.white_balance_std], device=generator.device
    )
    brightness = _uniform(count, config.brightness, generator)
    contrast = _uniform(count, config.contrast, generator)
    saturation = _uniform(count, config.saturation, generator)
    gamma = _log_uniform(count, config.gamma, generator)
    gains = (torch.exp(log_gains) * brightness[:, None]).to(device)[:, :, None, None]
    images = (images * gains).clamp(0.0, 1.0)
    luma_w = torch.tensor(LUMA_WEIGHTS, device=device, dtype=images.dtype)[None, :, None, None]
    luma = (images * luma_w).sum(dim=1, keepdim=True)
    mean_luma = luma.mean(dim=(2, 3), keepdim=True)
    contrast, saturation = contrast.to(device)[:, None, None, None], saturation.to(device)[:, None, None, None]
    images = luma + (images - luma) * saturation
    images = (mean_luma + (images - mean_luma) * contrast).clamp(0.0, 1.0)
    return images ** gamma.to(device)[:, None, None, None]


def _sensor_noise(images: Tensor, config: AugmentConfig, generator: torch.Generator, pixels: torch.Generator) -> Tensor:
    """Images plus read and shot noise of per-image strength, part luminance-only, part per channel."""
    count = images.shape[0]
    read = _log_uniform(count, config.read_noise_std, generator)
    shot = _log_uniform(count, config.shot_noise_std, generator)
    chroma = _uniform(count, config.chroma_noise_share, generator)
    read, shot, chroma = (value.to(images.device)[:, None, None, None] for value in (read, shot, chroma))
    std = torch.sqrt(read**2 + shot**2 * images)
    luma_noise = torch.randn(images[:, :1].shape, generator=pixels, device=images.device)
    chroma_noise = torch.randn(images.shape, generator=pixels, device=images.device)
    noise = torch.sqrt(1.0 - chroma) * luma_noise + torch.sqrt(chroma) * chroma_noise
    return (images + std * noise).clamp(0.0, 1.0)


def _chosen(count: int, probability: float, generator: torch.Generator) -> Tensor:
    """The rows of a batch an effect of this probability touches (on the generator's device)."""
    return torch.nonzero(torch.rand(count, generator=generator, device=generator.device) < probability).squeeze(1)


def _uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator, device=generator.device)


def _log_uniform(count: int, bounds: tuple[float, float], generator: torch.Generator) -> Tensor:
    low, high = (math.log(max(bound, 1e-12)) for bound in bounds)
    return torch.exp(low + (high - low) * torch.rand(count, generator=generator, device=generator.device))


def _pixel_generator(generator: torch.Generator, device: torch.device) -> torch.Generator:
    """`generator` itself when it lives on `device`, else a generator there seeded from it."""
    if torch.device(generator.device).type == torch.device(device).type:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)
