"""The factor map run backwards: which ICT factors a sampled latent stands for.

The refinement starts from the sampled head, so it needs that head in ICT's terms: the
expression weights whose mapped z_exp is the sampled one, and the identity coefficients whose
mapped z_geo is the sampled one (`FactorMap` is three MLPs, so each is a small least-squares
problem over its inputs, solved with Adam from the neutral, mean head). The answers are what
the fit is regularised toward, and the expression's is the point the fitted change is measured
from: the refined z_exp is the sampled z_exp plus the map's change between the two expressions,
so whatever of z_exp the map cannot explain stays as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.nphm.factor_map import FactorMap


@dataclass(frozen=True)
class InversionSettings:
    """How hard the inversions work: Adam steps and rate, and the pull of each answer toward the neutral mean head."""

    expression_steps: int = 300
    geometry_steps: int = 150
    learning_rate: float = 0.05
    # Per weight, against the mean squared z_exp residual (about 1e-5 at a solution): 1e-4 shrank a jawOpen of
    # 0.8 to 0.44 read back; none reads it as 0.80 (tests/test_refine.py).
    expression_prior: float = 0.0
    identity_prior: float = 1e-6  # per coefficient (N(0, 1) modes), against the z_geo residual per dimension

    def __post_init__(self) -> None:
        if min(self.expression_steps, self.geometry_steps) < 1 or not self.learning_rate > 0:
            raise ValueError("InversionSettings needs at least one step of each inversion and a positive rate")
        if min(self.expression_prior, self.identity_prior) < 0:
            raise ValueError("InversionSettings priors must be non-negative")


def invert_expression(factor_map: FactorMap, z_exp: Tensor, settings: InversionSettings | None = None) -> Tensor:
    """The expression weights (E,) in [0, 1] whose mapped z_exp is nearest to `z_exp` (Z,)."""
    settings = settings or InversionSettings()
    target = z_exp.detach().float().reshape(1, -1)
    weights = _minimise(
        factor_map.config.expression_dim,
        lambda w: (factor_map.expression(w) - target).pow(2).mean() + settings.expression_prior * w.pow(2).sum(),
        settings.expression_steps,
        settings.learning_rate,
        clamp=(0.0, 1.0),
    )
    return weights[0]


def invert_identity(
    factor_map: FactorMap, z_geo: Tensor, identity_dim: int, settings: InversionSettings | None = None
) -> Tensor:
    """The first `identity_dim` geometry inputs (the ICT identity coefficients) whose mapped z_geo, with the hair
    inputs solved alongside, is nearest to `z_geo`."""
    settings = settings or InversionSettings()
    if not 0 < identity_dim <= factor_map.config.geometry_dim:
        raise ValueError(f"identity_dim must lie in 1..{factor_map.config.geometry_dim}, got {identity_dim}")
    target = z_geo.detach().float().reshape(1, -1)
    inputs = _minimise(
        factor_map.config.geometry_dim,
        lambda x: (
            (factor_map.geometry(x) - target).pow(2).mean() + settings.identity_prior * x[:, :identity_dim].pow(2).sum()
        ),
        settings.geometry_steps,
        settings.learning_rate,
    )
    return inputs[0, :identity_dim]


def _minimise(
    size: int,
    objective: Callable[[Tensor], Tensor],
    steps: int,
    learning_rate: float,
    clamp: tuple[float, float] | None = None,
) -> Tensor:
    """Adam from zeros (1, size) on `objective`, optionally kept inside `clamp` after every step; the answer detached."""
    inputs = torch.zeros(1, size, requires_grad=True)
    optimiser = torch.optim.Adam([inputs], lr=learning_rate)
    with torch.enable_grad():
        for _ in range(steps):
            optimiser.zero_grad()
            objective(inputs).backward()
            optimiser.step()
            if clamp is not None:
                with torch.no_grad():
                    inputs.clamp_(*clamp)
    return inputs.detach()
