"""The flat MonoNPHM latent that the diffusion model works on, and its per-dimension normalisation.

Layout: z = [z_geo (0:2176) | z_exp (2176:2276) | z_app (2276:4452) | 4 zeros (4452:4456)].
The 4 padding dimensions make the length divisible by 8 (three 2× downsamplings of a 1D U-Net);
they carry no information and are dropped by `unpack`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

Z_GEO = 2176
Z_EXP = 100
Z_APP = 2176
FLAT = Z_GEO + Z_EXP + Z_APP  # 4452
PADDED = 4456
PAD = PADDED - FLAT


@dataclass
class HeadLatents:
    """The MonoNPHM codes of one head: `z_geo` [2176], `z_exp` [100], `z_app` [2176] (what a reconstruction returns)."""

    z_geo: Tensor
    z_exp: Tensor
    z_app: Tensor


def pack(z_geo: Tensor, z_exp: Tensor, z_app: Tensor, pad: bool = True) -> Tensor:
    """Concatenate codes [..., 2176], [..., 100], [..., 2176] into a flat latent [..., 4456] (4452 if not pad)."""
    for name, code, dim in (("z_geo", z_geo, Z_GEO), ("z_exp", z_exp, Z_EXP), ("z_app", z_app, Z_APP)):
        if code.shape[-1:] != (dim,) or code.shape[:-1] != z_geo.shape[:-1]:
            raise ValueError(
                f"{name} must have shape [..., {dim}] with the same leading dimensions as z_geo "
                f"{list(z_geo.shape[:-1])}; got {list(code.shape)}."
            )
    parts = [z_geo, z_exp, z_app]
    if pad:
        parts.append(z_geo.new_zeros(*z_geo.shape[:-1], PAD))
    return torch.cat(parts, dim=-1)


def unpack(flat: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split a flat latent [..., 4452] or [..., 4456] into (z_geo, z_exp, z_app); padding dimensions are ignored."""
    if flat.shape[-1] not in (FLAT, PADDED):
        raise ValueError(f"A flat MonoNPHM latent has {FLAT} or {PADDED} dimensions, got {flat.shape[-1]}.")
    return flat[..., :Z_GEO], flat[..., Z_GEO : Z_GEO + Z_EXP], flat[..., Z_GEO + Z_EXP : FLAT]


def _check_padded(flat: Tensor) -> None:
    if flat.shape[-1] != PADDED:
        raise ValueError(f"Normalisation works on padded latents [..., {PADDED}]; got {list(flat.shape)} (use pack).")


@dataclass(frozen=True)
class LatentStatistics:
    """Per-dimension mean and std [4456] of padded flat latents, to normalise them to unit scale for diffusion.

    Global and local parts of the codes differ in scale by about 4×, so one scalar would not do.
    Padding dimensions have mean 0 and std 1 (they stay exactly zero). A model can hold `mean` and
    `std` as buffers and rebuild this helper from them.
    """

    mean: Tensor
    std: Tensor

    @classmethod
    def from_latents(cls, latents: Tensor, min_std: float = 1e-4) -> LatentStatistics:
        """Statistics of a set of flat latents [M, 4452 or 4456] (M ≥ 2); std is floored at `min_std`."""
        if latents.dim() != 2 or latents.shape[0] < 2:
            raise ValueError(
                f"Latent statistics need at least 2 latents as [M, {FLAT} or {PADDED}], got {list(latents.shape)}."
            )
        z_geo, z_exp, z_app = unpack(latents)
        flat = pack(z_geo, z_exp, z_app, pad=False)
        mean = torch.cat([flat.mean(dim=0), flat.new_zeros(PAD)])
        std = torch.cat([flat.std(dim=0).clamp_min(min_std), flat.new_ones(PAD)])
        return cls(mean=mean, std=std)

    def normalise(self, flat: Tensor) -> Tensor:
        """(z - mean) / std for padded flat latents [..., 4456], on the latents' device and dtype."""
        _check_padded(flat)
        return (flat - self.mean.to(flat)) / self.std.to(flat)

    def denormalise(self, normalised: Tensor) -> Tensor:
        """Inverse of `normalise`: mean + std · z, for [..., 4456]."""
        _check_padded(normalised)
        return normalised * self.std.to(normalised) + self.mean.to(normalised)
