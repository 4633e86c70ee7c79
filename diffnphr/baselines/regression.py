"""Direct regression baseline: the same image encoder as the diffusion model, plus an MLP to z.

It is trained on the same renders, for the same steps, with the same optimiser as the
diffusion model (`diffnphr.train.reconstruction`), and minimises the mean squared error of the
normalised latent. So it predicts the conditional mean, a single blurred head per image:
the evaluation's answer to "does sampling from a diffusion model beat plain regression?".

Folder: `encoder/` (an encoder folder of either kind, `diffnphr.encoders.load_face_encoder`) and `head/` (`RegressionHead`: config.json,
safetensors, and the latent statistics it predicts in, as buffers).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffnphr.diffusion.mean_head import latent_mlp
from diffnphr.encoders.loading import load_face_encoder
from diffnphr.nphm.latents import PADDED
from diffnphr.weights import PretrainedModule, resolve_weights_dir

if TYPE_CHECKING:
    from diffnphr.encoders.loading import ImageEncoder

ENCODER_FOLDER, HEAD_FOLDER = "encoder", "head"


@dataclass
class RegressionHeadConfig:
    """Sizes of the MLP from `z_cond` to the normalised padded latent."""

    cond_dim: int = 512
    hidden_dim: int = 256
    latent_dim: int = PADDED


class RegressionHead(PretrainedModule):
    """MLP `z_cond` [B, 512] -> normalised latent [B, 4456], with the statistics that undo the normalisation."""

    config_class = RegressionHeadConfig

    def __init__(self, config: RegressionHeadConfig) -> None:
        super().__init__(config)
        self.mlp = latent_mlp(config.cond_dim, config.hidden_dim, config.latent_dim)
        self.register_buffer("data_mean", torch.zeros(config.latent_dim))
        self.register_buffer("data_std", torch.ones(config.latent_dim))

    def forward(self, z_cond: Tensor) -> Tensor:
        """Normalised latents [B, 4456] predicted from image embeddings [B, cond_dim]."""
        return self.mlp(z_cond)


class LatentRegressor(nn.Module):
    """Face crops -> raw padded latents [B, 4456] in one forward pass (no sampling)."""

    def __init__(self, encoder: ImageEncoder, head: RegressionHead) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, pixel_values: Tensor) -> Tensor:
        """Normalised latents [B, 4456] for preprocessed crops (what training compares with its targets)."""
        return self.head(self.encoder(pixel_values))

    @torch.inference_mode()
    def predict(self, pixel_values: Tensor) -> Tensor:
        """Raw (de-normalised) latents [B, 4456] for preprocessed crops (the encoder's `preprocess`)."""
        return self(pixel_values) * self.head.data_std + self.head.data_mean

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write `encoder/` and `head/` into `directory` (parameters stored at `dtype` if given)."""
        directory = Path(directory)
        self.encoder.save_pretrained(directory / ENCODER_FOLDER, dtype=dtype)
        self.head.save_pretrained(directory / HEAD_FOLDER, dtype=dtype)
        return directory

    @classmethod
    def from_pretrained(cls, path_or_hub_id: str | os.PathLike, device: str | torch.device = "cpu") -> LatentRegressor:
        """Load a folder written by `save_pretrained` (local or a Hub id)."""
        directory = resolve_weights_dir(path_or_hub_id)
        encoder = load_face_encoder(directory, subfolder=ENCODER_FOLDER, device=device)
        head = RegressionHead.from_pretrained(directory, subfolder=HEAD_FOLDER, device=device)
        return cls(encoder, head).eval()
