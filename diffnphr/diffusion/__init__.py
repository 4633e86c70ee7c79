"""Conditional 1D diffusion over (normalised) MonoNPHM latents: the U-Net, its config, sampling."""

from __future__ import annotations

from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.model import SAMPLERS, LatentDiffusion
from diffnphr.diffusion.unet import UNet1D

__all__ = ["SAMPLERS", "DiffusionConfig", "LatentDiffusion", "UNet1D"]
