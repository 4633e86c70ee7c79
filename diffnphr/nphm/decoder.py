"""The MonoNPHM decoder: latents (z_geo, z_exp, z_app) -> SDF and colour of a head at any point.

A posed point x is mapped backwards into the canonical space by the expression network
(xyz offset + hyper-coordinates), where an ensemble of local MLPs around predicted anchors,
blended with Gaussian weights, gives the SDF (negative inside) and the colour. Parameter names
and shapes equal the official checkpoint's, so `id_decoder` / `ex_decoder` load it with
`strict=True`.

Differences from the reference implementation (SimonGiebenhain/MonoNPHM, `nn3dmm` + `NPHM`):
* batches of B > 1 are correct: the reference gives node k of sample b the global appearance code
  of sample (66·b + k) mod B (a `repeat`/`view` slip); for B = 1 both agree;
* colour is skipped when not asked for (`HeadField.sdf`); the reference always computes it;
* the latent-only part of every first layer is computed once per latent (`MonoNPHM.bind`) and the
  36 member MLPs run as one batched GEMM per layer, so numbers agree with the reference up to
  float rounding, not bit for bit;
* kept as in the reference: σ from the 8 nearest anchors, the global node at distance 0.75 with
  the zero position in the hyper dims, mirrored x for the odd anchor of each pair, colour taken
  from the pre-activation of the last hidden geometry layer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from diffnphr.nphm.canonical import CanonicalOutput, IdentityDecoder
from diffnphr.nphm.config import MonoNPHMConfig
from diffnphr.nphm.cpu_passes import map_passes
from diffnphr.nphm.deformation import ExpressionDecoder
from diffnphr.weights import PretrainedModule, WeightsNotFoundError

ANCHORS_FILE = "anchors.npy"
# On CPU, queries run in passes of at most this many points, side by side on single-threaded
# workers (`cpu_passes`): larger passes allocate tensors above the C allocator's mmap
# threshold, and the page faults cost more than the extra passes.
_CPU_POINTS_PER_PASS = 2048


def _anchor_template(anchors: Tensor | np.ndarray, config: MonoNPHMConfig) -> Tensor:
    template = anchors if isinstance(anchors, Tensor) else torch.from_numpy(np.asarray(anchors))
    if template.shape != (config.n_anchors, 3):
        raise ValueError(f"The anchor template must have shape ({config.n_anchors}, 3), got {tuple(template.shape)}.")
    if not template.is_floating_point() or not torch.isfinite(template).all():
        raise ValueError("The anchor template must hold finite floating-point coordinates.")
    return template.detach().to(torch.float32).clone()


class MonoNPHM(PretrainedModule):
    """MonoNPHM decoder: `id_decoder` (canonical geometry + colour + anchors) and `ex_decoder` (backward deformation).

    `anchor_template` [n_anchors, 3] is the base position of every anchor (the official
    `assets/anchors_65.npy` for the official weights); it is saved beside the weights as
    `anchors.npy`. Query through `bind(...)` (latent-only work done once) or `forward`.
    """

    config_class = MonoNPHMConfig

    def __init__(self, config: MonoNPHMConfig, anchor_template: Tensor | np.ndarray):
        super().__init__(config)
        self.id_decoder = IdentityDecoder(config, _anchor_template(anchor_template, config))
        self.ex_decoder = ExpressionDecoder(config)

    def save_extra_files(self, directory: Path) -> None:
        """Write the anchor template as `anchors.npy` (float32) beside the weights."""
        np.save(directory / ANCHORS_FILE, self.id_decoder.anchor_template.detach().cpu().numpy())

    @classmethod
    def from_config_dir(cls, directory: Path, config: MonoNPHMConfig) -> MonoNPHM:
        """Build the decoder for `config` with the anchor template stored in `directory`."""
        path = Path(directory) / ANCHORS_FILE
        if not path.is_file():
            raise WeightsNotFoundError(
                f"{directory} has no {ANCHORS_FILE}: a MonoNPHM weights folder needs its anchor template."
            )
        return cls(config, np.load(path, allow_pickle=False))

    def anchors(self, z_geo: Tensor) -> Tensor:
        """Predicted anchor positions [B, n_anchors, 3] for geometry codes [B, z_geo_dim] (for anchor supervision)."""
        self._check_latents(z_geo, None, None)
        return self.id_decoder.anchors(z_geo)

    def bind(self, z_geo: Tensor, z_exp: Tensor, z_app: Tensor | None = None) -> HeadField:
        """Fix the latents of B heads and return their field, ready to query in chunks.

        z_geo [B, z_geo_dim], z_exp [B, lat_dim_exp], z_app [B, z_app_dim] or None (SDF only).
        Differentiable with respect to latents and weights outside `torch.inference_mode`; bind
        again after an optimiser step (the field holds tensors derived from the weights).
        """
        self._check_latents(z_geo, z_exp, z_app)
        return HeadField(self, z_geo, z_exp, z_app)

    def forward(self, points: Tensor, z_geo: Tensor, z_exp: Tensor, z_app: Tensor | None = None) -> dict[str, Tensor]:
        """Evaluate posed points [B, N, 3]; keys sdf [B,N], rgb [B,N,3] (if z_app), anchors, offsets, hyper_coords."""
        field = self.bind(z_geo, z_exp, z_app)
        return field.query(points, with_rgb=z_app is not None)

    def _check_latents(self, z_geo: Tensor, z_exp: Tensor | None, z_app: Tensor | None) -> None:
        config = self.config
        expected = {"z_geo": config.z_geo_dim, "z_exp": config.lat_dim_exp, "z_app": config.z_app_dim}
        given = {"z_geo": z_geo, "z_exp": z_exp, "z_app": z_app}
        batch = z_geo.shape[0] if z_geo.dim() == 2 else None
        for name, code in given.items():
            if code is None:
                continue
            if code.dim() != 2 or code.shape[1] != expected[name] or code.shape[0] != batch:
                raise ValueError(
                    f"{name} must have shape [B, {expected[name]}] with the same B for every code; "
                    f"got {list(code.shape)} (z_geo {list(z_geo.shape)})."
                )


class HeadField:
    """SDF and colour of B heads with fixed latents (made by `MonoNPHM.bind`).

    Query with posed points [B, N, 3] in MonoNPHM's canonical frame (1 unit = 0.25 m, +y up,
    +z forward). Any chunking of N gives the same per-point values up to float rounding.
    """

    def __init__(self, model: MonoNPHM, z_geo: Tensor, z_exp: Tensor, z_app: Tensor | None):
        self.batch_size = z_geo.shape[0]
        self.n_hyper = model.config.n_hyper
        self.anchors = model.id_decoder.anchors(z_geo)
        self._deformation = model.ex_decoder.bind(z_geo, self.anchors, z_exp)
        self._canonical = model.id_decoder.bind(z_geo, self.anchors, z_app)

    def sdf(self, points: Tensor) -> Tensor:
        """Signed distance [B, N] (negative inside) at posed points [B, N, 3]; colour is not computed."""
        return self.query(points)["sdf"]

    def sdf_and_rgb(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Signed distance [B, N] and colour [B, N, 3] at posed points [B, N, 3].

        Colours are in the official range: trained on RGB mapped to [-1, 1] by (c/255 - 0.5)·2 and
        not clamped; 8-bit colour is clip((c + 1)/2 · 255, 0, 255).
        """
        out = self.query(points, with_rgb=True)
        return out["sdf"], out["rgb"]

    def point_sdf(self, points: Tensor) -> Tensor:
        """Signed distance [N] at points [N, 3] of a single bound head: the form mesh extraction queries."""
        self._check_single_head()
        return self.sdf(points[None])[0]

    def point_colour(self, points: Tensor) -> Tensor:
        """Colour [N, 3] in [0, 1] at points [N, 3] of a single bound head (official [-1, 1] mapped by (c + 1) / 2)."""
        self._check_single_head()
        return (self.sdf_and_rgb(points[None])[1][0] + 1.0) / 2.0

    def _check_single_head(self) -> None:
        if self.batch_size != 1:
            raise ValueError(
                f"point_sdf / point_colour need a field bound to one head; this one holds {self.batch_size}."
            )

    def query(self, points: Tensor, with_rgb: bool = False) -> dict[str, Tensor]:
        """Every per-point output: sdf, rgb (if with_rgb), offsets [B,N,3], hyper_coords [B,N,n_hyper],
        canonical_points [B,N,3+n_hyper], and the predicted anchors [B,n_anchors,3]."""
        if points.dim() != 3 or points.shape[0] != self.batch_size or points.shape[2] != 3:
            raise ValueError(f"points must have shape [{self.batch_size}, N, 3], got {list(points.shape)}.")
        if points.device.type != "cpu" or points.shape[1] <= _CPU_POINTS_PER_PASS:
            return self._query(points, with_rgb)
        passes = points.split(_CPU_POINTS_PER_PASS, dim=1)
        if torch.is_grad_enabled():
            parts = [self._query(part, with_rgb) for part in passes]
        else:
            parts = map_passes(lambda part: self._query(part, with_rgb), passes)
        merged = {key: torch.cat([part[key] for part in parts], dim=1) for key in parts[0] if key != "anchors"}
        return {**merged, "anchors": self.anchors}

    def _query(self, points: Tensor, with_rgb: bool) -> dict[str, Tensor]:
        deformation = self._deformation(points)
        offsets, hyper = deformation[..., :3], deformation[..., 3:]
        canonical_points = torch.cat([points + offsets, hyper], dim=-1)
        out = self._canonical(canonical_points, with_rgb=with_rgb)
        result = {
            "sdf": out.sdf,
            "anchors": self.anchors,
            "offsets": offsets,
            "hyper_coords": hyper,
            "canonical_points": canonical_points,
        }
        if with_rgb:
            result["rgb"] = out.rgb
        return result

    def canonical(self, canonical_points: Tensor, with_rgb: bool = False) -> CanonicalOutput:
        """The canonical field alone at canonical points [B, N, 3 + n_hyper] (no deformation), with its blend."""
        return self._canonical(canonical_points, with_rgb=with_rgb)
