"""The factor map: a head's generating factors -> its MonoNPHM latent (z_geo, z_exp, z_app).

Trained jointly with our decoder on fresh random heads (`diffnphr.train.decoder`), it replaces
the auto-decoder's fixed codebooks: any head the data can generate has a latent, exactly and
in a millisecond, which is what the image encoder and the diffusion model learn from. Three
separate MLPs keep the latent's meaning apart, as MonoNPHM's codes are: z_geo from the
geometry vector (identity coefficients and the hair's shape), z_exp from the expression
weights alone (so swapping z_exp between heads transfers the expression and nothing else),
z_app from the appearance vector (skin, lips, eyes, hair colour). The vectors are
`diffnphr.data.factors.FactorVectors`; this module knows only their widths. The official
MonoNPHM checkpoint has no factor map (its latents come from fitting); the decoder is
unchanged by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffnphr.weights import PretrainedModule

if TYPE_CHECKING:
    from diffnphr.data.factors import HeadFactors


@dataclass
class FactorMapConfig:
    """Widths of the factor map's inputs, outputs and hidden layers."""

    geometry_dim: int = 191
    expression_dim: int = 53
    appearance_dim: int = 85
    z_geo_dim: int = 2176
    z_exp_dim: int = 100
    z_app_dim: int = 2176
    hidden_dim: int = 512
    expression_hidden_dim: int = 256
    layers: int = 3
    output_scale: float = 0.05  # the last layers start this small, so a new map's latents start near zero

    def __post_init__(self) -> None:
        bad = [name for name, value in vars(self).items() if not value > 0]
        if bad:
            raise ValueError(f"FactorMapConfig values must be positive; got {', '.join(bad)}.")


def _mlp(inputs: int, hidden: int, outputs: int, layers: int, output_scale: float) -> nn.Sequential:
    """`layers` hidden SiLU layers of `hidden` units, then a linear layer to `outputs`."""
    modules: list[nn.Module] = []
    width = inputs
    for _ in range(layers):
        modules += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    last = nn.Linear(width, outputs)
    with torch.no_grad():
        last.weight.mul_(output_scale)
        last.bias.zero_()
    return nn.Sequential(*modules, last)


class FactorMap(PretrainedModule):
    """Generating factors -> (z_geo, z_exp, z_app) (module docstring)."""

    config_class = FactorMapConfig

    def __init__(self, config: FactorMapConfig) -> None:
        super().__init__(config)
        c = config
        self.geometry = _mlp(c.geometry_dim, c.hidden_dim, c.z_geo_dim, c.layers, c.output_scale)
        self.expression = _mlp(c.expression_dim, c.expression_hidden_dim, c.z_exp_dim, c.layers, c.output_scale)
        self.appearance = _mlp(c.appearance_dim, c.hidden_dim, c.z_app_dim, c.layers, c.output_scale)

    def forward(self, geometry: Tensor, expression: Tensor, appearance: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_geo, z_exp, z_app) of B heads from their factor vectors (B, ·) each."""
        for name, value, width in (
            ("geometry", geometry, self.config.geometry_dim),
            ("expression", expression, self.config.expression_dim),
            ("appearance", appearance, self.config.appearance_dim),
        ):
            if value.ndim != 2 or value.shape[1] != width:
                raise ValueError(f"the {name} vectors must have shape (B, {width}), got {tuple(value.shape)}")
        return self.geometry(geometry), self.expression(expression), self.appearance(appearance)

    def latents(self, factors: HeadFactors) -> tuple[Tensor, Tensor, Tensor]:
        """(z_geo, z_exp, z_app) of heads from their `HeadFactors`, on the map's device."""
        device = next(self.parameters()).device
        vectors = factors.vectors()
        return self(vectors.geometry.to(device), vectors.expression.to(device), vectors.appearance.to(device))
