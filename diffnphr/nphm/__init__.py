"""MonoNPHM: the decoder (latents -> SDF + colour), its latent layout, the official-checkpoint converter, and the
factor map (a generated head's factors -> its latent)."""

from diffnphr.nphm.config import MonoNPHMConfig
from diffnphr.nphm.decoder import HeadField, MonoNPHM
from diffnphr.nphm.latents import LatentStatistics, pack, unpack

__all__ = ["HeadField", "LatentStatistics", "MonoNPHM", "MonoNPHMConfig", "pack", "unpack"]
