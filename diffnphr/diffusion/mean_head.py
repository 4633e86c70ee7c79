"""The MLP from an image embedding to a whole normalised latent, shared by two models.

`LatentDiffusion` uses it (with `DiffusionConfig.mean_head_hidden`) as its conditional mean, the
point its diffusion is centred on; the direct-regression baseline (`baselines.regression`) uses
the same MLP as its whole prediction, so the two compare like with like.
"""

from __future__ import annotations

from torch import nn


def latent_mlp(cond_dim: int, hidden_dim: int, latent_dim: int) -> nn.Sequential:
    """LayerNorm, two GELU hidden layers of `hidden_dim`, and a linear output of `latent_dim` values."""
    return nn.Sequential(
        nn.LayerNorm(cond_dim),
        nn.Linear(cond_dim, hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, hidden_dim),
        nn.GELU(),
        nn.Linear(hidden_dim, latent_dim),
    )
