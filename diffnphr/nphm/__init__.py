"""MonoNPHM: the decoder (latents -> SDF + colour), its latent layout, and the official-checkpoint converter."""

from diffnphr.nphm.config import MonoNPHMConfig
from diffnphr.nphm.decoder import HeadField, MonoNPHM
from diffnphr.nphm.latents import LatentStatistics, pack, unpack

__all__ = ["HeadField", "LatentStatistics", "MonoNPHM", "MonoNPHMConfig", "pack", "unpack"]
