"""Batched, on-the-fly training samples for the decoder, on the device of your choice.

`HeadSampler` draws from the whole closed surface of `diffnphr.data.head_geometry` (skin with
hair and beard, eyeballs, teeth, long-hair curtain, bun). `sample` takes B heads'
`HeadFactors` and returns a `HeadBatch`, with every step batched over heads (no Python loop
over heads):

* surface points, uniform by area over the triangles exposed on that head (`HeadMeshes.exposed`),
  a fraction `face_fraction` of them drawn from the face region only (ICT's `face` part, the
  eyeballs and teeth: where detail and the evaluation's face metrics are), the eyeballs
  weighted `eye_weight` times their area there (they are 2 % of the face, and a head is
  recognised by its eyes); uniform barycentric coordinates;
  normals interpolated from area-weighted vertex normals (unit, outward) and sRGB colours
  interpolated from the head's vertex colours (appearance, with the hair's colour over it);
* space points: surface points (drawn again from the ones above) plus N(0, sigma²) per axis
  for each of `near_sigmas` (1 mm and 1 cm by default), then points uniform in the
  canonical box (MonoNPHM's extraction box);
* correspondences: a triangle and barycentric coordinates, drawn like the surface points,
  give the point on the posed head and on the same identity's neutral head; both are moved
  along their own normal by the same offset, N(0, sigma²) for each of
  `correspondence_sigmas` in equal shares (MonoNPHM samples its correspondences likewise);
* anchors: the 65 anchor vertices of each identity's neutral head with its hair (MonoNPHM
  supervises every expression with its neutral anchors).

Units are MonoNPHM's canonical frame (`diffnphr.data.ict`). Randomness comes only from the
`seed` of each call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.head_geometry import HeadGeometry
from diffnphr.data.samples import HeadBatch, SamplingConfig
from diffnphr.frame import BOX_MAX, BOX_MIN

if TYPE_CHECKING:
    from diffnphr.data.factors import HeadFactors
    from diffnphr.data.ict import ICTFaceModel


class HeadSampler:
    """Draws `HeadBatch`es for heads of one ICT model, on one device."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu", config: SamplingConfig | None = None):
        self.config = config or SamplingConfig()
        self.device = torch.device(device)
        self.geometry = HeadGeometry(model, self.device)
        self.surface = self.geometry.surface
        rows = self.surface.vertex_ids
        anchor_ids = anchor_vertices(model)
        anchor_rows = np.searchsorted(rows, anchor_ids)
        if not np.array_equal(rows[np.minimum(anchor_rows, len(rows) - 1)], anchor_ids):
            raise ValueError("every anchor vertex must lie on the training surface")
        self._anchor_rows = torch.as_tensor(anchor_rows, device=self.device)
        self._box_min = torch.as_tensor(BOX_MIN, dtype=torch.float32, device=self.device)
        self._box_max = torch.as_tensor(BOX_MAX, dtype=torch.float32, device=self.device)
        self.num_identity_modes = int(model.identity_modes.shape[0])
        self.num_expressions = len(model.expression_names)

    def sample(self, factors: HeadFactors, seed: int) -> HeadBatch:
        """Training samples of B heads given by their generating factors."""
        config = self.config
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._check(factors)
        posed_meshes = self.geometry.build(factors)
        posed, faces = posed_meshes.vertices, posed_meshes.faces
        neutral = self.geometry.vertices(factors.neutral())
        batch = posed.shape[0]

        posed_normals = _vertex_normals(posed, faces)
        areas = _face_areas(posed, faces) * posed_meshes.exposed
        face_count = round(config.surface_points * config.face_fraction)
        drawn = torch.cat(
            [
                _draw_faces(
                    areas * posed_meshes.face_region * (1 + (config.eye_weight - 1) * posed_meshes.is_eye),
                    face_count,
                    generator,
                ),
                _draw_faces(areas, config.surface_points - face_count, generator),
            ],
            dim=1,
        )
        barycentric = _uniform_barycentric(drawn.shape, generator)
        points = _interpolate(posed, faces, drawn, barycentric)

        near = []
        for share, sigma in zip(_shares(config.near_points, len(config.near_sigmas)), config.near_sigmas):
            pick = torch.randint(points.shape[1], (batch, share), generator=generator, device=self.device)
            centre = points.gather(1, pick[..., None].expand(-1, -1, 3))
            near.append(centre + sigma * torch.randn(centre.shape, generator=generator, device=self.device))
        uniform = torch.rand((batch, config.uniform_points, 3), generator=generator, device=self.device)
        near.append(self._box_min + uniform * (self._box_max - self._box_min))

        corr_faces = _draw_faces(areas, config.correspondences, generator)
        corr_barycentric = _uniform_barycentric(corr_faces.shape, generator)
        shares = _shares(config.correspondences, len(config.correspondence_sigmas))
        sigmas = torch.cat(
            [
                torch.full((share,), sigma, device=self.device)
                for share, sigma in zip(shares, config.correspondence_sigmas)
            ]
        )
        offsets = sigmas * torch.randn(corr_faces.shape, generator=generator, device=self.device)
        neutral_normals = _vertex_normals(neutral, faces)

        def moved(vertices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
            direction = _unit(_interpolate(normals, faces, corr_faces, corr_barycentric))
            return _interpolate(vertices, faces, corr_faces, corr_barycentric) + offsets[..., None] * direction

        return HeadBatch(
            surface_points=points,
            surface_normals=_unit(_interpolate(posed_normals, faces, drawn, barycentric)),
            surface_colours=_interpolate(posed_meshes.colours, faces, drawn, barycentric).clamp(0.0, 1.0),
            surface_faces=drawn,
            surface_barycentric=barycentric,
            surface_on_face=posed_meshes.face_region[drawn],
            space_points=torch.cat(near, dim=1),
            posed_points=moved(posed, posed_normals),
            neutral_points=moved(neutral, neutral_normals),
            correspondence_faces=corr_faces,
            correspondence_barycentric=corr_barycentric,
            correspondence_offsets=offsets,
            anchors=neutral[:, self._anchor_rows],
        )

    def _check(self, factors: HeadFactors) -> None:
        """A clear error when the factors do not fit this model."""
        if factors.identity.ndim != 2 or factors.identity.shape[1] != self.num_identity_modes:
            raise ValueError(
                f"identity must have shape (B, {self.num_identity_modes}), got {tuple(factors.identity.shape)}"
            )
        if factors.expression.ndim != 2 or factors.expression.shape[1] != self.num_expressions:
            raise ValueError(
                f"expression must have shape (B, {self.num_expressions}), got {tuple(factors.expression.shape)}"
            )


def _shares(total: int, parts: int) -> list[int]:
    """`total` split into `parts` near-equal counts."""
    return [total // parts + (1 if k < total % parts else 0) for k in range(parts)]


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _face_areas(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, F) triangle areas."""
    corners = vertices[:, faces]
    doubled = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    return 0.5 * doubled.norm(dim=-1)


def _vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """(B, N, 3) area-weighted, unnormalised vertex normals."""
    corners = vertices[:, faces]
    scaled = torch.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    normals = torch.zeros_like(vertices)
    normals.index_add_(1, faces.reshape(-1), scaled.repeat_interleave(3, dim=1))
    return normals


def _draw_faces(weights: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """(B, count) triangle rows drawn with probability proportional to `weights` (B, F)."""
    if count == 0:
        return torch.zeros((weights.shape[0], 0), dtype=torch.long, device=weights.device)
    return torch.multinomial(weights, count, replacement=True, generator=generator)


def _uniform_barycentric(shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
    """(*shape, 3) barycentric coordinates uniform over a triangle."""
    u, v = torch.rand((2,) + tuple(shape), generator=generator, device=generator.device)
    outside = u + v > 1
    u, v = torch.where(outside, 1 - u, u), torch.where(outside, 1 - v, v)
    return torch.stack([1 - u - v, u, v], dim=-1)


def _interpolate(
    values: torch.Tensor, faces: torch.Tensor, face_rows: torch.Tensor, barycentric: torch.Tensor
) -> torch.Tensor:
    """(B, S, C) per-vertex values (B, N, C) interpolated at triangles `face_rows` (B, S)."""
    batch, count = face_rows.shape
    corners = faces[face_rows].reshape(batch, count * 3, 1).expand(-1, -1, values.shape[-1])
    gathered = values.gather(1, corners).view(batch, count, 3, values.shape[-1])
    return (gathered * barycentric[..., None]).sum(dim=2)
