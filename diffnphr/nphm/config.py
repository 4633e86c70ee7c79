"""Sizes of the MonoNPHM decoder; the defaults are the official `scripts/configs/mononphm.yaml`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class MonoNPHMConfig:
    """Every size the MonoNPHM decoder needs (official values by default).

    Geometry and colour are ensembles of local MLPs around `n_anchors` anchors plus one global
    node; the two anchors of each of the `n_symmetric_pairs` pairs (indices 2j, 2j+1) share one
    MLP, the odd one seeing mirrored x. The expression network is a backward deformation into
    the canonical space, with `n_hyper` extra hyper-coordinates.
    """

    # anchors and neighbourhoods (decoder.id.*)
    n_anchors: int = 65
    n_symmetric_pairs: int = 30
    n_neighbours: int = 12
    blend_std: float = 3.75
    # hard-coded in the official code: sigma = max distance of the first 8 neighbours / blend_std,
    # and the global node counts as being at this fixed distance
    sigma_neighbours: int = 8
    global_node_distance: float = 0.75
    # latent codes
    lat_dim_glob: int = 64
    lat_dim_loc: int = 32
    lat_dim_exp: int = 100
    # canonical geometry / colour ensembles (decoder.id.gnn.*)
    hidden_dim_geo: int = 200
    n_layers_geo: int = 4
    hidden_dim_app: int = 200
    n_layers_app: int = 4
    communication_dim: int = 16
    anchor_mlp_dim: int = 64
    # backward deformation (decoder.ex.*)
    lat_dim_id_compressed: int = 16
    hidden_dim_ex: int = 400
    n_layers_ex: int = 6
    n_hyper: int = 2
    softplus_beta: float = 100.0

    def __post_init__(self) -> None:
        may_be_zero = ("n_symmetric_pairs", "n_hyper")
        bad = [f.name for f in dataclasses.fields(self) if f.name not in may_be_zero and not getattr(self, f.name) > 0]
        if bad:
            values = ", ".join(f"{name}={getattr(self, name)}" for name in bad)
            raise ValueError(f"MonoNPHMConfig sizes must be positive; got {values}.")
        if self.n_symmetric_pairs < 0 or self.n_hyper < 0:
            raise ValueError("MonoNPHMConfig.n_symmetric_pairs and n_hyper must not be negative.")
        if 2 * self.n_symmetric_pairs > self.n_anchors:
            raise ValueError(
                f"{self.n_symmetric_pairs} symmetric pairs need {2 * self.n_symmetric_pairs} anchors, "
                f"but n_anchors is {self.n_anchors}."
            )
        if not self.sigma_neighbours <= self.n_neighbours <= self.n_anchors:
            raise ValueError(
                f"n_neighbours must lie between sigma_neighbours ({self.sigma_neighbours}) and "
                f"n_anchors ({self.n_anchors}); got {self.n_neighbours}."
            )
        if self.n_layers_ex < 2:
            raise ValueError("n_layers_ex must be at least 2 (the skip connection enters at layer n_layers_ex // 2).")

    @classmethod
    def small(cls) -> MonoNPHMConfig:
        """Same latent layout as the official model, narrower MLPs (a CPU-friendly size for our own training)."""
        return cls(hidden_dim_geo=128, hidden_dim_app=128, hidden_dim_ex=256)

    @property
    def n_nodes(self) -> int:
        """Anchors plus the global node (the last node, at the origin)."""
        return self.n_anchors + 1

    @property
    def n_members(self) -> int:
        """MLPs per ensemble: one per pair, one per unpaired anchor, one for the global node."""
        return self.n_anchors - self.n_symmetric_pairs + 1

    @property
    def z_geo_dim(self) -> int:
        """Geometry code: global part, then one local code per node."""
        return self.lat_dim_glob + self.lat_dim_loc * self.n_nodes

    @property
    def z_app_dim(self) -> int:
        """Appearance code: same layout as the geometry code."""
        return self.lat_dim_glob + self.lat_dim_loc * self.n_nodes

    @property
    def canonical_dim(self) -> int:
        """Canonical query: xyz plus the hyper-coordinates."""
        return 3 + self.n_hyper
