"""MonoNPHM's expression network: a backward deformation from posed space into the canonical space.

`ExpressionDecoder` holds the parameters under the official names (`checkpoint['ex_decoder']`):
a linear compressor of the identity (full geometry code + predicted anchors) and a DeepSDF-style
MLP with one skip connection. `ExpressionDecoder.bind` precomputes the latent-only parts of the
first layer and of the skip layer, so a query costs only its point-dependent work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffnphr.nphm.activations import softplus

if TYPE_CHECKING:
    from diffnphr.nphm.config import MonoNPHMConfig

_INV_SQRT2 = 2.0**-0.5


class DeformationMLP(nn.Module):
    """DeepSDF layout `lin0..lin{n_layers}`; layer `n_layers // 2` also takes the input, as concat(h, input)/√2."""

    def __init__(self, in_dim: int, hidden_dim: int, n_layers: int, out_dim: int):
        super().__init__()
        self.skip_layer = n_layers // 2
        dims = [in_dim] + [hidden_dim] * n_layers + [out_dim]
        for i in range(n_layers + 1):
            extra = in_dim if i == self.skip_layer else 0
            setattr(self, f"lin{i}", nn.Linear(dims[i] + extra, dims[i + 1]))
        self.n_linear = n_layers + 1

    def linears(self) -> list[nn.Linear]:
        """lin0 .. lin{n_layers}, in order."""
        return [getattr(self, f"lin{i}") for i in range(self.n_linear)]


class ExpressionDecoder(nn.Module):
    """Parameters of the backward deformation, named as the official `ex_decoder`."""

    def __init__(self, config: MonoNPHMConfig):
        super().__init__()
        self.config = config
        identity_dim = config.z_geo_dim + 3 * config.n_anchors
        self.compressor = nn.Sequential(nn.Linear(identity_dim, config.lat_dim_id_compressed))
        self.defDeepSDF = DeformationMLP(
            3 + config.lat_dim_id_compressed + config.lat_dim_exp,
            config.hidden_dim_ex,
            config.n_layers_ex,
            3 + config.n_hyper,
        )

    def bind(self, z_geo: Tensor, anchors: Tensor, z_exp: Tensor) -> Deformation:
        """The deformation field of these latents; `anchors` are the predicted anchors [B, n_anchors, 3]."""
        return Deformation(self, z_geo, anchors, z_exp)


class Deformation:
    """Posed points [B, N, 3] -> [B, N, 3 + n_hyper] (xyz offsets, then hyper-coordinates) for one batch of latents."""

    def __init__(self, decoder: ExpressionDecoder, z_geo: Tensor, anchors: Tensor, z_exp: Tensor):
        self.beta = decoder.config.softplus_beta
        mlp = decoder.defDeepSDF
        self.skip_layer = mlp.skip_layer
        self.linears = mlp.linears()
        identity = decoder.compressor(torch.cat([z_geo, anchors.flatten(1)], dim=-1))
        condition = torch.cat([identity, z_exp], dim=-1)
        first = self.linears[0]
        self.first_xyz = first.weight[:, :3]
        self.first_latent = F.linear(condition, first.weight[:, 3:], first.bias).unsqueeze(1)
        skip = self.linears[self.skip_layer]
        hidden_dim = skip.weight.shape[1] - (3 + condition.shape[-1])
        self.skip_hidden = skip.weight[:, :hidden_dim]
        self.skip_xyz = skip.weight[:, hidden_dim : hidden_dim + 3]
        skip_latent = F.linear(condition, skip.weight[:, hidden_dim + 3 :]) * _INV_SQRT2 + skip.bias
        self.skip_latent = skip_latent.unsqueeze(1)

    def __call__(self, points: Tensor) -> Tensor:
        """Raw network output [B, N, 3 + n_hyper] at posed points [B, N, 3]."""
        hidden = F.linear(points, self.first_xyz) + self.first_latent
        for i in range(1, len(self.linears)):
            hidden = softplus(hidden, self.beta)  # in place for CPU inference
            if i == self.skip_layer:
                hidden = (F.linear(hidden, self.skip_hidden) + F.linear(points, self.skip_xyz)) * _INV_SQRT2
                hidden = hidden + self.skip_latent
            else:
                hidden = self.linears[i](hidden)
        return hidden
