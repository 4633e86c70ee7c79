"""MonoNPHM's training losses on a batch of heads, shared by decoder training and latent fitting.

Terms and default weights follow MonoNPHM (`scripts/configs/mononphm.yaml`, reference note
§5.1), with the canonical space of an identity being its neutral face:

* geometry, IGR-style from surface samples: |sdf| on surface points, ‖∇sdf − n‖ against the
  surface normals, eikonal |‖∇sdf‖ − 1| on surface and space points, and exp(−10|sdf|) on the
  points uniform in the box (no spurious surface away from the head);
* colour: L1 against the surface colours mapped to [−1, 1] as the reference does;
* anchors: MSE of the predicted anchors against the identity's neutral anchors;
* deformation: correspondences (a posed point moved backwards must land on the same point of
  the neutral head), zero offsets far from the head and on neutral faces, small
  hyper-coordinates (ten times more on neutral faces);
* latents: ‖z‖² of each code and the distance between the local codes of mirrored anchors.

Every term is a mean, returned unweighted; `total_loss` applies `LossWeights`.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.data.samples import HeadBatch
    from diffnphr.nphm.config import MonoNPHMConfig
    from diffnphr.nphm.decoder import MonoNPHM

SPACE_FALLOFF = 10.0  # exp(-SPACE_FALLOFF |sdf|) on uniform points, as the reference


@dataclass(frozen=True)
class LossWeights:
    """Weight of every term of `head_loss_terms` (MonoNPHM's values; 0 switches a term off)."""

    surface: float = 1.0
    normals: float = 0.3
    eikonal: float = 0.15
    space: float = 0.01
    colour: float = 1.0
    anchors: float = 7.5
    correspondence: float = 1000.0
    offsets_far: float = 0.0025
    offsets_neutral: float = 0.001
    hyper: float = 0.05
    hyper_neutral: float = 0.5  # the reference's 10 × hyper on neutral faces
    reg_geo: float = 0.01
    reg_app: float = 0.005
    reg_exp: float = 0.05
    symmetry_geo: float = 0.01
    symmetry_app: float = 1e-4


def total_loss(terms: dict[str, Tensor], weights: LossWeights) -> Tensor:
    """Weighted sum of the terms (names as the fields of `LossWeights`)."""
    values = dataclasses.asdict(weights)
    return sum(values[name] * value for name, value in terms.items() if values[name] != 0.0)


def symmetric_code_distance(codes: Tensor, config: MonoNPHMConfig) -> Tensor:
    """Mean L2 distance between the local codes of the two anchors of every symmetric pair, codes [B, z_dim]."""
    if config.n_symmetric_pairs == 0:
        return codes.new_zeros(())
    local = codes[:, config.lat_dim_glob :].reshape(codes.shape[0], config.n_nodes, config.lat_dim_loc)
    pairs = local[:, : 2 * config.n_symmetric_pairs].reshape(codes.shape[0], config.n_symmetric_pairs, 2, -1)
    return (pairs[:, :, 0] - pairs[:, :, 1]).norm(dim=-1).mean()


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to `dtype` on `device`, or nothing when dtype is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of values [B, ...] over the heads where mask [B] is true; 0 when none is (no host sync)."""
    weights = mask.to(values.dtype).view(-1, *([1] * (values.dim() - 1))).expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(1.0)


def head_loss_terms(
    model: MonoNPHM,
    z_geo: Tensor,
    z_exp: Tensor,
    z_app: Tensor,
    batch: HeadBatch,
    is_neutral: Tensor,
    uniform_points: int,
    far_points: Tensor | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """Unweighted loss terms (module docstring) of B heads with latents [B, ·] on their samples.

    `is_neutral` [B] marks neutral faces; the last `uniform_points` of `batch.space_points` are
    the ones uniform in the box; `far_points` [B, F, 3] (optional) are where offsets should
    vanish. Gradients flow to the latents and the decoder's parameters (whichever require them).
    """
    config = model.config
    surface = batch.surface_points.detach().requires_grad_(True)
    space = batch.space_points.detach().requires_grad_(True)
    with autocast_context(surface.device, autocast_dtype):
        field = model.bind(z_geo, z_exp, z_app)
        on_surface = field.query(surface, with_rgb=True)
        off_surface = field.query(space)
        deformation_points = (
            batch.posed_points if far_points is None else torch.cat([batch.posed_points, far_points], 1)
        )
        deformation = model.ex_decoder.bind(z_geo, field.anchors, z_exp)(deformation_points).float()
    sdf_surface, sdf_space = on_surface["sdf"].float(), off_surface["sdf"].float()
    grad_surface, grad_space = torch.autograd.grad(
        sdf_surface.sum() + sdf_space.sum(), [surface, space], create_graph=True
    )
    n_corr = batch.posed_points.shape[1]
    hyper = [
        on_surface["hyper_coords"].float(),
        off_surface["hyper_coords"].float()[:, space.shape[1] - uniform_points :],
    ]
    zero = sdf_surface.new_zeros(())
    terms = {
        "surface": sdf_surface.abs().mean(),
        "normals": (grad_surface.float() - batch.surface_normals).norm(dim=-1).mean(),
        "eikonal": (torch.cat([grad_surface, grad_space], 1).float().norm(dim=-1) - 1.0).abs().mean(),
        "space": torch.exp(-SPACE_FALLOFF * sdf_space[:, space.shape[1] - uniform_points :].abs()).mean()
        if uniform_points
        else zero,
        "colour": (on_surface["rgb"].float() - (2.0 * batch.surface_colours - 1.0)).abs().mean(),
        "anchors": F.mse_loss(field.anchors.float(), batch.anchors),
        "correspondence": F.mse_loss(batch.posed_points + deformation[:, :n_corr, :3], batch.neutral_points),
        "offsets_far": deformation[:, n_corr:, :3].square().mean() if far_points is not None else zero,
        "offsets_neutral": _masked_mean(on_surface["offsets"].float().square(), is_neutral),
        "hyper": torch.cat(hyper + [deformation[:, n_corr:, 3:]], 1).abs().mean() if config.n_hyper else zero,
        "hyper_neutral": _masked_mean(on_surface["hyper_coords"].float().abs(), is_neutral) if config.n_hyper else zero,
        "reg_geo": z_geo.square().sum(dim=-1).mean(),
        "reg_app": z_app.square().sum(dim=-1).mean(),
        "reg_exp": z_exp.square().sum(dim=-1).mean(),
        "symmetry_geo": symmetric_code_distance(z_geo, config),
        "symmetry_app": symmetric_code_distance(z_app, config),
    }
    return terms
