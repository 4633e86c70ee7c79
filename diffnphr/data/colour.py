"""Colour conventions every procedural model shares: sRGB <-> linear RGB, and the natural hair colours."""

from __future__ import annotations

import numpy as np
import torch

HAIR_SRGB = ((20, 16, 14), (55, 38, 28), (95, 65, 42), (140, 105, 70), (200, 170, 120), (150, 70, 40), (150, 150, 150))
"""Natural hair colours (sRGB): black, dark brown, brown, light brown, blond, red, grey."""


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """sRGB in [0, 1] to linear RGB (IEC 61966-2-1)."""
    srgb = np.asarray(srgb, dtype=np.float64)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: torch.Tensor) -> torch.Tensor:
    """Linear RGB in [0, 1] to sRGB (IEC 61966-2-1)."""
    linear = linear.clamp(0.0, 1.0)
    return torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp_min(1e-8) ** (1 / 2.4) - 0.055)
