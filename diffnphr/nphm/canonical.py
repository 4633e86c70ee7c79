"""MonoNPHM's canonical head: anchors, local geometry/colour MLP ensembles and their Gaussian blending.

`IdentityDecoder` holds the parameters under the official names (`checkpoint['id_decoder']`);
`IdentityDecoder.bind` returns a `CanonicalField` in which everything that depends only on the
latents (predicted anchors, the latent part of every member's first layer per node, the stacked
member weights) is computed once, so that queries pay only for the per-point work.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from diffnphr.nphm.ensemble import MemberBlocks, MemberSlices, MLPEnsemble, edge_layout

if TYPE_CHECKING:
    from diffnphr.nphm.config import MonoNPHMConfig

# Added to the sum of the Gaussian weights before normalising, as in the reference.
_BLEND_EPS = 1e-8


def gaussian_blend_weights(
    knn_distances: Tensor,
    global_distance: float = 0.75,
    blend_std: float = 3.75,
    sigma_neighbours: int = 8,
) -> Tensor:
    """Normalised blend weights [..., K+1] of the K nearest anchors (ascending distances [..., K]) and the global node.

    MonoNPHM blends the local MLPs with w_i ∝ exp(-½ (d_i/σ)²), σ = (largest of the first
    `sigma_neighbours` distances) / `blend_std`; the global node is treated as lying at the fixed
    distance `global_distance`. Weights sum to 1 (up to the reference's 1e-8 in the denominator).
    """
    sigma = knn_distances[..., :sigma_neighbours].amax(dim=-1, keepdim=True) / blend_std
    distances = torch.cat([knn_distances, torch.full_like(knn_distances[..., :1], global_distance)], dim=-1)
    weights = torch.exp(-0.5 * (distances / sigma) ** 2)
    return weights / (weights.sum(dim=-1, keepdim=True) + _BLEND_EPS)


def node_member_index(config: MonoNPHMConfig) -> Tensor:
    """Ensemble member of every node [n_nodes]: pairs (2j, 2j+1) share member j, then one member per remaining node."""
    nodes = torch.arange(config.n_nodes)
    paired = nodes < 2 * config.n_symmetric_pairs
    return torch.where(paired, nodes // 2, nodes - config.n_symmetric_pairs)


def node_mirror_sign(config: MonoNPHMConfig) -> Tensor:
    """-1 for the odd node of every symmetric pair (its shared MLP sees x mirrored), +1 elsewhere [n_nodes]."""
    nodes = torch.arange(config.n_nodes)
    mirrored = (nodes < 2 * config.n_symmetric_pairs) & (nodes % 2 == 1)
    return torch.where(mirrored, -1.0, 1.0)


class CanonicalOutput(NamedTuple):
    """Canonical-field values for [B, N] queries: blended SDF, blended colour (or None), and the blend itself."""

    sdf: Tensor  # [B, N]
    rgb: Tensor | None  # [B, N, 3], official range (trained on colours mapped to [-1, 1]; not clamped)
    nodes: Tensor  # [B, N, K+1] node of each edge: K nearest anchors (ascending), then the global node
    weights: Tensor  # [B, N, K+1] blend weights of those edges


class IdentityDecoder(nn.Module):
    """Parameters of the canonical field, named as the official `id_decoder`, plus the anchor template.

    The anchor template [n_anchors, 3] is a non-persistent buffer: the official checkpoint does not
    contain it (it ships as `assets/anchors_65.npy`), so `state_dict()` matches the checkpoint.
    """

    def __init__(self, config: MonoNPHMConfig, anchor_template: Tensor):
        super().__init__()
        self.config = config
        latent_dim = config.lat_dim_glob + config.lat_dim_loc
        self.deepSDFensemble = MLPEnsemble(
            config.n_members,
            latent_dim + config.canonical_dim,
            config.hidden_dim_geo,
            config.n_layers_geo,
            1,
            lambda: nn.Softplus(beta=config.softplus_beta),
        )
        self.communcation_bottleneck1 = nn.Linear(config.hidden_dim_geo, config.communication_dim)
        self.communcation_bottleneck2 = nn.Linear(config.communication_dim, config.communication_dim)
        self.aggr_app = MLPEnsemble(
            config.n_members,
            latent_dim + config.communication_dim,
            config.hidden_dim_app,
            config.n_layers_app,
            3,
            nn.ReLU,
        )
        self.mlp_pos = nn.Sequential(
            nn.Linear(config.lat_dim_glob, config.anchor_mlp_dim),
            nn.ReLU(),
            nn.Linear(config.anchor_mlp_dim, config.anchor_mlp_dim),
            nn.ReLU(),
            nn.Linear(config.anchor_mlp_dim, 3 * config.n_anchors),
        )
        self.register_buffer("anchor_template", anchor_template, persistent=False)
        self.register_buffer("node_member", node_member_index(config), persistent=False)
        self.register_buffer("node_sign", node_mirror_sign(config), persistent=False)

    def anchors(self, z_geo: Tensor) -> Tensor:
        """Predicted anchor positions [B, n_anchors, 3]: template + MLP(global geometry code)."""
        offsets = self.mlp_pos(z_geo[:, : self.config.lat_dim_glob])
        return self.anchor_template + offsets.view(z_geo.shape[0], self.config.n_anchors, 3)

    def bind(self, z_geo: Tensor, anchors: Tensor, z_app: Tensor | None) -> CanonicalField:
        """The canonical field of these latents (colour available only when `z_app` is given)."""
        return CanonicalField(self, z_geo, anchors, z_app)


def _node_terms(weight: Tensor, bias: Tensor, codes: Tensor, node_member: Tensor, config: MonoNPHMConfig) -> Tensor:
    """Latent part of every node's first layer, bias included: [B * n_nodes, H].

    weight [M, H, lat_dim_glob + lat_dim_loc] is the latent block of the stacked first layers;
    node k of sample b sees [global code of b, local code k of b].
    """
    glob = codes[:, : config.lat_dim_glob]
    local = codes[:, config.lat_dim_glob :].reshape(codes.shape[0], config.n_nodes, config.lat_dim_loc)
    w = weight.index_select(0, node_member)
    terms = (
        torch.einsum("khg,bg->bkh", w[..., : config.lat_dim_glob], glob)
        + torch.einsum("khl,bkl->bkh", w[..., config.lat_dim_glob :], local)
        + bias.index_select(0, node_member)
    )
    return terms.reshape(-1, weight.shape[1])


class CanonicalField:
    """The canonical SDF (and colour) of one batch of latents, ready for any number of query chunks."""

    def __init__(self, decoder: IdentityDecoder, z_geo: Tensor, anchors: Tensor, z_app: Tensor | None):
        config = decoder.config
        self.config = config
        self.decoder = decoder
        self.batch_size = z_geo.shape[0]
        self.anchors = anchors
        latent_dim = config.lat_dim_glob + config.lat_dim_loc
        # node positions padded to the canonical dimension; the global node sits at the origin
        positions = F.pad(anchors, (0, config.n_hyper, 0, 1))
        self.node_positions = positions.reshape(-1, config.canonical_dim)
        self.geo_layers = decoder.deepSDFensemble.stacked()
        first_w, first_b = self.geo_layers[0]
        self.geo_node_terms = _node_terms(first_w[..., :latent_dim], first_b, z_geo, decoder.node_member, config)
        self.geo_position_weight = first_w[..., latent_dim:]
        self.app_layers: list[tuple[Tensor, Tensor]] | None = None
        if z_app is not None:
            self.app_layers = decoder.aggr_app.stacked()
            app_w, app_b = self.app_layers[0]
            self.app_node_terms = _node_terms(app_w[..., :latent_dim], app_b, z_app, decoder.node_member, config)
            self.app_comm_weight = app_w[..., latent_dim:]

    def __call__(self, canonical_points: Tensor, with_rgb: bool = False) -> CanonicalOutput:
        """Blend the 12 nearest anchors' MLPs and the global MLP at canonical points [B, N, 3 + n_hyper]."""
        config = self.config
        batch, _, dim = canonical_points.shape
        if batch != self.batch_size or dim != config.canonical_dim:
            raise ValueError(
                f"canonical points must have shape [{self.batch_size}, N, {config.canonical_dim}], "
                f"got {list(canonical_points.shape)}."
            )
        if with_rgb and self.app_layers is None:
            raise ValueError("Colour needs an appearance code: bind the model with z_app.")
        nodes = self._neighbours(canonical_points)
        batch_offset = torch.arange(batch, device=nodes.device).view(batch, 1, 1) * config.n_nodes
        flat_nodes = nodes + batch_offset
        # index_select, not fancy indexing: its backward is far faster on the GPU
        node_positions = self.node_positions.index_select(0, flat_nodes.reshape(-1)).view(
            *flat_nodes.shape, self.node_positions.shape[-1]
        )
        delta = canonical_points.unsqueeze(2) - node_positions
        weights = gaussian_blend_weights(
            delta[..., : config.n_neighbours, :3].norm(dim=-1),
            config.global_node_distance,
            config.blend_std,
            config.sigma_neighbours,
        )
        mirrored_x = delta[..., :1] * self.decoder.node_sign[nodes].unsqueeze(-1).to(delta.dtype)
        delta = torch.cat([mirrored_x, delta[..., 1:]], dim=-1)

        layout = edge_layout(self.decoder.node_member[nodes], config.n_members)
        edge_sdf, geo_feature = layout.mlp(
            layout.gather_rows(self.geo_node_terms, flat_nodes),
            layout.scatter(delta.reshape(-1, dim)),
            self.geo_position_weight,
            self.geo_layers[1:],
            softplus_beta=config.softplus_beta,
            keep_last_hidden=with_rgb,
        )
        sdf = (weights * layout.gather(edge_sdf).view(weights.shape)).sum(dim=-1)
        rgb = self._colour(layout, flat_nodes, geo_feature, weights) if with_rgb else None
        return CanonicalOutput(sdf=sdf, rgb=rgb, nodes=nodes, weights=weights)

    def _neighbours(self, canonical_points: Tensor) -> Tensor:
        """Edge nodes [B, N, K+1]: the K nearest anchors in xyz (ascending), then the global node."""
        config = self.config
        with torch.no_grad():
            diff = canonical_points[..., None, :3] - self.anchors[:, None]
            knn = (diff * diff).sum(dim=-1).topk(config.n_neighbours, dim=-1, largest=False, sorted=True).indices
        global_node = torch.full_like(knn[..., :1], config.n_anchors)
        return torch.cat([knn, global_node], dim=-1)

    def _colour(
        self, layout: MemberBlocks | MemberSlices, flat_nodes: Tensor, geo_feature: Tensor, weights: Tensor
    ) -> Tensor:
        """Blended colour [B, N, 3]; the geometry MLPs pass on the pre-activation of their last hidden layer."""
        decoder = self.decoder
        comm = decoder.communcation_bottleneck2(F.relu(decoder.communcation_bottleneck1(geo_feature)))
        base = layout.gather_rows(self.app_node_terms, flat_nodes)
        edge_rgb, _ = layout.mlp(base, comm, self.app_comm_weight, self.app_layers[1:], softplus_beta=None)
        edge_rgb = layout.gather(edge_rgb)
        return (weights.unsqueeze(-1) * edge_rgb.view(*weights.shape, 3)).sum(dim=-2)
