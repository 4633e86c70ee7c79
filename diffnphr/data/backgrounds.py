"""Random photo-like backgrounds behind rendered heads.

`random_backgrounds` fills a batch with a mix of uniform colours, linear and radial gradients,
multi-octave value noise and, given a `BackgroundBank`, crops of natural images (random
window, scale, mirror and colour shift); each image is then blurred by its own amount, as an
out-of-focus background is, and some get a soft coloured blob or rectangle on top (an object
near the subject). Parameters are drawn from the given `torch.Generator`, the pixels are
made batched on the requested device.

The bank holds square uint8 patches cut from scikit-image's bundled photos that show no
person (`BANK_SOURCES`; never `astronaut`, the evaluation portrait, nor `camera`). It is built
once on a machine with scikit-image (`build_background_bank`, `python -m diffnphr
build-backgrounds OUT`) and loaded anywhere as one safetensors file (`BackgroundBank.load`).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffnphr.data.augment import gaussian_blur

BANK_SOURCES = (
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "colorwheel",
    "brick",
    "grass",
    "gravel",
    "clock",
    "coins",
    "moon",
    "page",
    "text",
    "cell",
)
"""scikit-image `data` images without people, the ones that need no download."""
KINDS = ("uniform", "linear", "radial", "noise", "photo")
KIND_WEIGHTS = (0.1, 0.15, 0.1, 0.2, 0.45)
"""Relative frequencies of the background kinds (the photo share goes to the others without a bank)."""
_NOISE_OCTAVES = 5
_BLOB_PROBABILITY = 0.35
_SHARP_PROBABILITY = 0.25
_MAX_BLUR_FRACTION = 0.025  # largest blur sigma, as a fraction of the image side


@dataclass(frozen=True)
class BackgroundBank:
    """Natural-image patches (N, 3, P, P) uint8 and the scikit-image name each was cut from."""

    patches: Tensor
    sources: tuple[str, ...]

    @classmethod
    def load(cls, path: str | os.PathLike, device: torch.device | str = "cpu") -> BackgroundBank:
        """The bank saved by `build_background_bank`, on `device`."""
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"background bank {path} not found; build it with "
                "`python -m diffnphr build-backgrounds OUT` (needs scikit-image)"
            )
        try:
            with safe_open(str(path), framework="pt") as file:
                patches = file.get_tensor("patches")
                sources = tuple((file.metadata() or {}).get("sources", "").split(","))
        except Exception as error:  # safetensors raises its own error types for corrupt files
            raise ValueError(f"{path} is not a background bank safetensors file ({error})") from error
        if patches.dtype != torch.uint8 or patches.ndim != 4 or patches.shape[1] != 3 or len(patches) == 0:
            raise ValueError(
                f"{path} holds patches {tuple(patches.shape)} {patches.dtype}; expected (N, 3, P, P) uint8"
            )
        return cls(patches.to(device), sources)

    def __len__(self) -> int:
        return int(self.patches.shape[0])


def build_background_bank(
    path: str | os.PathLike, size: int = 256, count: int = len(BANK_SOURCES), seed: int = 0
) -> Path:
    """Write `count` random square crops (side `size`) of the `BANK_SOURCES` photos to `path`.

    Crops go round the sources in turn, each a random window (half to all of the shorter side)
    resized to `size` and mirrored at random; grey sources become grey RGB (colour comes at
    sampling time). The default, one 256-pixel patch per source, is a 3 MB file.
    """
    from PIL import Image
    from safetensors.torch import save_file
    from skimage import data

    if size < 16 or count < 1:
        raise ValueError(f"size must be at least 16 pixels and count at least 1, got {size} and {count}")
    rng = np.random.default_rng(seed)
    patches, names = [], []
    for index in range(count):
        name = BANK_SOURCES[index % len(BANK_SOURCES)]
        image = np.asarray(getattr(data, name)())
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        image = image[..., :3]
        height, width = image.shape[:2]
        side = int(min(height, width) * rng.uniform(0.5, 1.0))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(np.ascontiguousarray(image[top : top + side, left : left + side]))
        crop = np.asarray(crop.resize((size, size), Image.Resampling.LANCZOS))
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        patches.append(np.ascontiguousarray(crop.transpose(2, 0, 1)))
        names.append(name)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"patches": torch.from_numpy(np.stack(patches))}, str(path), metadata={"sources": ",".join(names)})
    return path


def random_backgrounds(
    count: int,
    size: int,
    generator: torch.Generator,
    device: torch.device | str = "cpu",
    bank: BackgroundBank | None = None,
) -> Tensor:
    """(count, 3, size, size) float32 sRGB backgrounds in [0, 1] on `device` (module docstring).

    Without a bank the photo kind is left out. The same generator state gives the same
    parameters on any device.
    """
    if count < 0 or size < 2:
        raise ValueError(f"count must be non-negative and size at least 2, got {count} and {size}")
    device = torch.device(device)
    weights = torch.tensor(KIND_WEIGHTS)
    if bank is None:
        weights[KINDS.index("photo")] = 0.0
    kinds = (
        torch.multinomial(weights, count, replacement=True, generator=generator)
        if count
        else torch.zeros(0, dtype=torch.long)
    )
    colours = _random_colours(count, 2, generator)  # (count, 2, 3): two colours per image
    out = torch.empty(count, 3, size, size, device=device)
    ys, xs = torch.meshgrid(
        torch.linspace(-1, 1, size, device=device), torch.linspace(-1, 1, size, device=device), indexing="ij"
    )
    for kind_index, kind in enumerate(KINDS):
        rows = torch.nonzero(kinds == kind_index).squeeze(1)
        if rows.numel() == 0:
            continue
        first, second = (colours[rows, k].to(device)[:, :, None, None] for k in (0, 1))
        if kind == "uniform":
            out[rows.to(device)] = first.expand(-1, -1, size, size)
            continue
        if kind == "linear":
            angle = (2 * math.pi * torch.rand(rows.numel(), generator=generator)).to(device)[:, None, None]
            t = ((xs * torch.cos(angle) + ys * torch.sin(angle)) / math.sqrt(2) + 1) / 2
        elif kind == "radial":
            centre = (torch.rand(rows.numel(), 2, generator=generator) * 2 - 1).to(device)[:, :, None, None]
            radius = (0.5 + 1.5 * torch.rand(rows.numel(), generator=generator)).to(device)[:, None, None]
            t = (torch.sqrt((xs - centre[:, 0]) ** 2 + (ys - centre[:, 1]) ** 2) / radius).clamp(0, 1)
        elif kind == "noise":
            t = _value_noise(rows.numel(), size, generator, device)
        else:
            out[rows.to(device)] = _photo_crops(bank, rows.numel(), size, generator, device)
            continue
        out[rows.to(device)] = first + (second - first) * t[:, None]

    sigma = size * _MAX_BLUR_FRACTION * torch.rand(count, generator=generator) ** 1.5
    sigma = torch.where(torch.rand(count, generator=generator) < _SHARP_PROBABILITY, torch.zeros_like(sigma), sigma)
    out = _add_blobs(out, generator, xs, ys)
    return gaussian_blur(out, sigma.to(device)).clamp(0.0, 1.0)


def _random_colours(count: int, per_image: int, generator: torch.Generator) -> Tensor:
    """(count, per_image, 3) sRGB colours: random hue, saturation mostly low, any brightness."""
    hue = torch.rand(count, per_image, 1, generator=generator)
    saturation = torch.rand(count, per_image, 1, generator=generator) ** 1.5
    value = 0.1 + 0.9 * torch.rand(count, per_image, 1, generator=generator) ** 0.8
    offsets = torch.tensor([0.0, 2.0 / 3.0, 1.0 / 3.0])
    pure = torch.cos(2 * math.pi * (hue + offsets)) * 0.5 + 0.5  # a smooth hue wheel
    return value * (1 - saturation + saturation * pure)


def _value_noise(count: int, size: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """(count, size, size) in [0, 1]: octaves of bicubically upsampled random grids, per-image roughness."""
    roughness = (0.35 + 0.4 * torch.rand(count, generator=generator)).to(device)
    base = 2 + int(torch.randint(0, 3, (1,), generator=generator))
    total = torch.zeros(count, 1, size, size, device=device)
    for octave in range(_NOISE_OCTAVES):
        cells = base * 2**octave
        grid = torch.rand(count, 1, cells + 1, cells + 1, generator=generator).to(device)
        layer = F.interpolate(grid, size=(size, size), mode="bicubic", align_corners=True)
        total = total + layer * roughness[:, None, None, None] ** octave
    low = total.amin(dim=(2, 3), keepdim=True)
    high = total.amax(dim=(2, 3), keepdim=True)
    return ((total - low) / (high - low).clamp_min(1e-6))[:, 0]


def _photo_crops(
    bank: BackgroundBank, count: int, size: int, generator: torch.Generator, device: torch.device
) -> Tensor:
    """(count, 3, size, size) random windows of bank patches: scale, position, mirror, colour shift."""
    which = torch.randint(0, len(bank), (count,), generator=generator)
    scale = 0.3 + 0.7 * torch.rand(count, generator=generator)  # window side / patch side
    shift = (torch.rand(count, 2, generator=generator) * 2 - 1) * (1 - scale[:, None])
    mirror = torch.where(torch.rand(count, generator=generator) < 0.5, -1.0, 1.0)
    theta = torch.zeros(count, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1], theta[:, :, 2] = scale * mirror, scale, shift
    gains = torch.exp(0.25 * torch.randn(count, 3, generator=generator))  # colour cast (tints grey sources)
    brightness = 0.5 + 0.8 * torch.rand(count, 1, generator=generator)
    source = bank.patches[which.to(bank.patches.device)].to(device).float() / 255.0
    grid = F.affine_grid(theta.to(device), [count, 3, size, size], align_corners=False)
    crops = F.grid_sample(source, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return (crops * (gains * brightness).to(device)[:, :, None, None]).clamp(0.0, 1.0)


def _add_blobs(images: Tensor, generator: torch.Generator, xs: Tensor, ys: Tensor) -> Tensor:
    """Images with, on a random share, one soft-edged ellipse or rectangle of a random colour."""
    count, device = images.shape[0], images.device
    present = (torch.rand(count, generator=generator) < _BLOB_PROBABILITY).float()
    centre = torch.rand(count, 2, generator=generator) * 2 - 1
    radii = 0.15 + 0.6 * torch.rand(count, 2, generator=generator)
    angle = math.pi * torch.rand(count, generator=generator)
    rectangle = torch.rand(count, generator=generator) < 0.4
    softness = 0.02 + 0.15 * torch.rand(count, generator=generator)
    alpha = present * (0.5 + 0.5 * torch.rand(count, generator=generator))
    colour = _random_colours(count, 1, generator)[:, 0]
    centre, radii, angle, rectangle, softness, alpha, colour = (
        value.to(device) for value in (centre, radii, angle, rectangle, softness, alpha, colour)
    )
    cos, sin = torch.cos(angle)[:, None, None], torch.sin(angle)[:, None, None]
    dx, dy = xs - centre[:, 0, None, None], ys - centre[:, 1, None, None]
    u = (dx * cos + dy * sin) / radii[:, 0, None, None]
    v = (-dx * sin + dy * cos) / radii[:, 1, None, None]
    distance = torch.where(rectangle[:, None, None], torch.maximum(u.abs(), v.abs()), torch.sqrt(u**2 + v**2))
    mask = ((1 - distance) / softness[:, None, None]).clamp(0, 1) * alpha[:, None, None]
    return images + (colour[:, :, None, None] - images) * mask[:, None]
