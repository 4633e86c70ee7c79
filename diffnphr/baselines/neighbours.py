"""Nearest-neighbour baseline: the training head whose render the encoder finds most alike.

Training heads are rendered once and embedded with the trained image encoder; a new crop's
embedding is matched by cosine similarity, and the answer is that head's codebook latent. It
asks whether the diffusion model does more than retrieve a known head: with 8,000 training heads
to choose from, a good embedding alone gets the coarse shape right.
"""

from __future__ import annotations

import torch
from torch import Tensor


class NearestNeighbourLatents:
    """Embeddings (M, C) of training renders and their heads' latents (M, D); `predict` retrieves by cosine."""

    def __init__(self, embeddings: Tensor, latents: Tensor) -> None:
        if embeddings.ndim != 2 or latents.ndim != 2 or len(embeddings) != len(latents) or len(embeddings) == 0:
            raise ValueError(
                f"need as many embeddings (M, C) as latents (M, D), M ≥ 1; "
                f"got {tuple(embeddings.shape)} and {tuple(latents.shape)}"
            )
        self.embeddings = torch.nn.functional.normalize(embeddings.float(), dim=1)
        self.latents = latents

    def nearest(self, z_cond: Tensor) -> Tensor:
        """Index (B,) of the training render closest in cosine to each embedding (B, C)."""
        if z_cond.ndim != 2 or z_cond.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"embeddings must have shape (B, {self.embeddings.shape[1]}); got {tuple(z_cond.shape)}")
        query = torch.nn.functional.normalize(z_cond.float().to(self.embeddings.device), dim=1)
        return (query @ self.embeddings.T).argmax(dim=1)

    def predict(self, z_cond: Tensor) -> Tensor:
        """The latents (B, D) of the nearest training heads."""
        return self.latents[self.nearest(z_cond).to(self.latents.device)]
