"""Face crops (PIL images or tensor batches) -> normalised pixel batches, shared by every image encoder.

Both encoders take the same inputs: a PIL image or a list of them (diffnphr's crops are
512×512), or a tensor batch [B, H, W, 3] / [B, 3, H, W], uint8 in 0..255 or float in [0, 1]
(the training renders). Tensor batches are resized with torch's antialiased bicubic (shortest
edge to the encoder's side, then a centre crop); PIL images with PIL's bicubic, which stays
within about 1e-2 of it in normalised units. The FaRL encoder keeps transformers' CLIP
processor for PIL images (its stored `preprocessor_config.json`); the ResNet encoder uses
`pil_pixels` here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ImageBatch = Image.Image | Sequence[Image.Image] | torch.Tensor


def pil_batch(images: ImageBatch) -> list[Image.Image]:
    """`images` as a non-empty list of PIL images, or a `ValueError` naming what is accepted."""
    batch = [images] if isinstance(images, Image.Image) else list(images)
    if not batch or not all(isinstance(image, Image.Image) for image in batch):
        raise ValueError(
            "An encoder's preprocess takes a PIL image, a non-empty list of PIL images, "
            "or an image tensor [B, H, W, 3] / [B, 3, H, W]."
        )
    return batch


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """A tensor batch [B, H, W, 3] / [B, 3, H, W] (uint8, or float in [0, 1]) as float32 [B, 3, H, W] in [0, 1]."""
    if images.ndim != 4 or 3 not in (images.shape[1], images.shape[-1]):
        raise ValueError(
            f"An image tensor must be a batch [B, H, W, 3] or [B, 3, H, W]; got shape {tuple(images.shape)}."
        )
    pixels = images if images.shape[1] == 3 else images.permute(0, 3, 1, 2)
    if pixels.dtype == torch.uint8:
        return pixels.float() / 255.0
    if not pixels.is_floating_point():
        raise ValueError(f"Image tensors must be uint8 or floating point; got {pixels.dtype}.")
    pixels = pixels.float()
    low, high = pixels.aminmax()
    if low < -1e-3 or high > 1 + 1e-3:
        raise ValueError(
            f"Float image tensors must hold values in [0, 1]; got {low.item():.3g}..{high.item():.3g} "
            "(pass uint8 for 0..255 images)."
        )
    return pixels


def resize_centre_crop(pixels: torch.Tensor, side: int) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> [B, 3, side, side]: shortest edge to `side` (antialiased bicubic), centre crop."""
    height, width = pixels.shape[-2:]
    size = (side, int(side * width / height)) if height <= width else (int(side * height / width), side)
    if size != (height, width):
        pixels = F.interpolate(pixels, size=size, mode="bicubic", antialias=True, align_corners=False)
    top, left = (size[0] - side) // 2, (size[1] - side) // 2
    return pixels[..., top : top + side, left : left + side].clamp(0.0, 1.0)


def normalise(pixels: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(pixels - mean) / std per channel, for [B, 3, S, S] in [0, 1]."""
    mean_t = torch.tensor(tuple(mean), dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std_t = torch.tensor(tuple(std), dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def pil_pixels(images: Sequence[Image.Image], side: int) -> torch.Tensor:
    """PIL images -> float32 [B, 3, side, side] in [0, 1]: RGB, shortest edge to `side` (PIL bicubic), centre crop."""
    arrays = []
    for image in images:
        rgb = image.convert("RGB")
        scale = side / min(rgb.size)
        size = (max(side, round(rgb.width * scale)), max(side, round(rgb.height * scale)))
        resized = rgb.resize(size, Image.BICUBIC) if size != rgb.size else rgb
        left, top = (size[0] - side) // 2, (size[1] - side) // 2
        arrays.append(np.asarray(resized.crop((left, top, left + side, top + side)), dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
