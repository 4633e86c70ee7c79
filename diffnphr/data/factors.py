"""A head's generating factors: everything that makes one random training head what it is.

`HeadFactors` holds B heads' ICT identity coefficients, expression weights, procedural
appearance and hair style. Geometry, renders and the decoder's targets are all functions of
them: `diffnphr.data.head_geometry` builds the closed surface, `diffnphr.data.renders` the
photos, and the factor map (`diffnphr.nphm.factor_map`) the latent (z_geo, z_exp, z_app).
`sample_head_factors` draws fresh random heads from one seed, so training never runs out of
heads; `FactorVectors` are what the factor map reads:

* geometry: identity coefficients and the hair's shape (`HairStyles.geometry_vector`);
* expression: the blendshape weights alone, so swapping z_exp swaps the expression;
* appearance: region colours (square root of linear RGB), the variation coefficients and the
  hair's colours (`HairStyles.colour_vector`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.appearance import REGIONS, VARIATION_FEATURES, AppearanceParams, appearance_params
from diffnphr.data.expressions import sample_expressions
from diffnphr.data.hair_styles import COLOUR_DIM, HairStyles, sample_hair_styles

APPEARANCE_DIM = len(REGIONS) * 3 + (VARIATION_FEATURES + 1) * 3 + COLOUR_DIM
"""Length of a head's appearance vector (`FactorVectors.appearance`)."""


@dataclass(frozen=True)
class FactorVectors:
    """The factor map's three inputs for B heads."""

    geometry: Tensor  # (B, I + hair_styles.GEOMETRY_DIM)
    expression: Tensor  # (B, E)
    appearance: Tensor  # (B, APPEARANCE_DIM)


@dataclass(frozen=True)
class HeadFactors:
    """B heads' generating factors (module docstring); every tensor is B first."""

    identity: Tensor  # (B, I)
    expression: Tensor  # (B, E) blendshape weights in [0, 1]
    appearance: AppearanceParams
    hair: HairStyles

    def __post_init__(self) -> None:
        counts = {
            len(self.identity),
            len(self.expression),
            len(self.appearance.region_colours),
            len(self.appearance.variation),
            len(self.hair),
        }
        if len(counts) != 1:
            raise ValueError(
                f"head factors disagree on the number of heads: identity {len(self.identity)}, expression "
                f"{len(self.expression)}, appearance {len(self.appearance.region_colours)}, hair {len(self.hair)}"
            )

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    def to(self, device: torch.device | str) -> HeadFactors:
        """The same heads with every tensor on `device`."""
        return HeadFactors(
            self.identity.to(device), self.expression.to(device), self.appearance.to(device), self.hair.to(device)
        )

    def select(self, index: Tensor) -> HeadFactors:
        """The heads at `index` (a long tensor), in its order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.identity.device)
        return HeadFactors(
            self.identity[index], self.expression[index], self.appearance.select(index), self.hair.select(index)
        )

    def neutral(self) -> HeadFactors:
        """The same heads with a neutral face (all blendshape weights zero)."""
        return HeadFactors(self.identity, torch.zeros_like(self.expression), self.appearance, self.hair)

    def vectors(self) -> FactorVectors:
        """What the factor map reads (module docstring)."""
        colours = self.appearance.region_colours.clamp_min(0).sqrt().flatten(1)
        appearance = torch.cat(
            [colours, self.appearance.variation.flatten(1) / 0.05, self.hair.colour_vector().to(colours.device)], dim=1
        )
        geometry = torch.cat([self.identity, self.hair.geometry_vector().to(self.identity.device)], dim=1)
        return FactorVectors(geometry.float(), self.expression.float(), appearance.float())


def sample_head_factors(
    count: int,
    seed: int,
    expression_names: tuple[str, ...],
    identity_modes: int,
    identity_scale: float = 1.0,
    neutral: bool = False,
) -> HeadFactors:
    """`count` fresh random heads from one seed (on the CPU): identity N(0, scale²) per mode,
    expressions from the realistic sampler (all zero with `neutral`), appearance from one
    appearance seed per head, and a hair style in the head's own hair colour."""
    if count < 0 or identity_scale < 0:
        raise ValueError(f"count and identity_scale must be non-negative, got {count} and {identity_scale}")
    rng = np.random.default_rng(int(seed))
    identity = torch.as_tensor(rng.standard_normal((count, identity_modes)) * identity_scale, dtype=torch.float32)
    if neutral:
        expression = torch.zeros(count, len(expression_names))
    else:
        expression = torch.as_tensor(sample_expressions(rng, count, expression_names))
    appearance = appearance_params(rng.integers(0, 2**62, count).tolist())
    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**62)))
    hair = sample_hair_styles(count, generator, appearance.region_colours[:, REGIONS.index("hair")])
    return HeadFactors(identity, expression, appearance, hair)
