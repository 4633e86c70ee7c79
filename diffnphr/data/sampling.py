"""Batched, on-the-fly training samples for the decoder, on the device of your choice.

`HeadSampler` holds the model's basis restricted to the training surface (`HeadSurface`:
capped skin + eyeball shells) as tensors on one device. `sample` takes B heads (identity
coefficients, expression weights, appearance parameters) and returns a `HeadBatch`, with
every step batched over heads (no Python loop over heads):

* surface points, uniform by area over the triangles exposed on that head (`exposed_faces`),
  a fraction `face_fraction` of them drawn from the face region only (the ICT `face` part,
  where detail and the evaluation's face metrics are); uniform barycentric coordinates;
  normals interpolated from area-weighted vertex normals (unit, outward) and sRGB colours
  interpolated from the head's vertex colours (`diffnphr.data.appearance`);
* space points: surface points (drawn again from the ones above) plus N(0, sigma²) per axis
  for each of `near_sigmas` (1 mm and 1 cm by default), then points uniform in the
  canonical box (MonoNPHM's extraction box);
* correspondences: a triangle and barycentric coordinates, drawn like the surface points,
  give the point on the posed head and on the same identity's neutral head; both are moved
  along their own normal by the same offset, N(0, sigma²) for each of
  `correspondence_sigmas` in equal shares (MonoNPHM samples its correspondences likewise);
* anchors: the 65 anchor vertices of each identity's neutral head (MonoNPHM supervises
  every expression with its neutral anchors).

Units are MonoNPHM's canonical frame (`diffnphr.data.ict`). Randomness comes only from the
`seed` of each call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.appearance import AppearanceParams, appearance_basis, vertex_colours
from diffnphr.data.heads import exposed_faces, head_surface
from diffnphr.frame import BOX_MAX, BOX_MIN

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel


@dataclass(frozen=True)
class SamplingConfig:
    """How many samples of each kind one head gets, and the noise scales (canonical units)."""

    surface_points: int = 4096
    face_fraction: float = 0.5
    near_points: int = 2048  # shared equally by near_sigmas
    near_sigmas: tuple[float, ...] = (0.004, 0.04)
    uniform_points: int = 512
    correspondences: int = 1024  # shared equally by correspondence_sigmas
    correspondence_sigmas: tuple[float, ...] = (0.002, 0.01)

    def __post_init__(self) -> None:
        counts = (self.surface_points, self.near_points, self.uniform_points, self.correspondences)
        if min(counts) < 0 or self.surface_points == 0:
            raise ValueError(f"sample counts must be non-negative and surface_points positive, got {counts}")
        if not 0.0 <= self.face_fraction <= 1.0:
            raise ValueError(f"face_fraction must lie in [0, 1], got {self.face_fraction}")
        if not self.near_sigmas or not self.correspondence_sigmas:
            raise ValueError("near_sigmas and correspondence_sigmas need at least one scale each")


@dataclass(frozen=True)
class HeadBatch:
    """Training samples of B heads; see the module docstring for how each is drawn."""

    surface_points: torch.Tensor  # (B, S, 3) on the posed head
    surface_normals: torch.Tensor  # (B, S, 3) unit, outward
    surface_colours: torch.Tensor  # (B, S, 3) sRGB in [0, 1]
    surface_faces: torch.Tensor  # (B, S) rows of HeadSurface.faces
    surface_barycentric: torch.Tensor  # (B, S, 3)
    surface_on_face: torch.Tensor  # (B, S) bool: the point lies in the face region
    space_points: torch.Tensor  # (B, Q, 3): near points per sigma in order, then uniform ones
    posed_points: torch.Tensor  # (B, C, 3) correspondences on the posed head ...
    neutral_points: torch.Tensor  # (B, C, 3) ... and the same points on its neutral head
    correspondence_faces: torch.Tensor  # (B, C)
    correspondence_barycentric: torch.Tensor  # (B, C, 3)
    correspondence_offsets: torch.Tensor  # (B, C) distance moved along the normals
    anchors: torch.Tensor  # (B, 65, 3) on the neutral head


class HeadSampler:
    """Draws `HeadBatch`es for heads of one ICT model, on one device."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu", config: SamplingConfig | None = None):
        self.config = config or SamplingConfig()
        self.device = torch.device(device)
        self.surface = head_surface(model)
        rows = self.surface.vertex_ids
        anchor_ids = anchor_vertices(model)
        anchor_rows = np.searchsorted(rows, anchor_ids)
        if not np.array_equal(rows[np.minimum(anchor_rows, len(rows) - 1)], anchor_ids):
            raise ValueError("every anchor vertex must lie on the training surface")

        def tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> torch.Tensor:
            return torch.as_tensor(np.ascontiguousarray(array), dtype=dtype, device=self.device)

        self._neutral = tensor(model.neutral[rows])
        self._identity_modes = tensor(model.identity_modes[:, rows].reshape(model.identity_modes.shape[0], -1))
        self._expression_modes = tensor(model.expression_modes[:, rows].reshape(model.expression_modes.shape[0], -1))
        self._faces = tensor(self.surface.faces, torch.long)
        self._face_region = tensor(self.surface.face_region, torch.bool)
        self._cap_loop = tensor(self.surface.cap_loop_rows, torch.long)
        self._exposure_tests = [(tensor(q, torch.long), tensor(s, torch.long)) for q, s in self.surface.exposure_tests]
        self._anchor_rows = tensor(anchor_rows, torch.long)
        self._appearance = appearance_basis(model).rows(rows).to(self.device)
        self._box_min, self._box_max = tensor(BOX_MIN), tensor(BOX_MAX)

    @property
    def num_identity_modes(self) -> int:
        """I, the length of an identity coefficient vector."""
        return self._identity_modes.shape[0]

    @property
    def num_expressions(self) -> int:
        """E, the length of an expression weight vector."""
        return self._expression_modes.shape[0]

    def head_vertices(self, identity: torch.Tensor, expression: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N+1, 3) surface vertices (rows of `self.surface`, cap centre last) of B heads."""
        identity = self._coefficients(identity, self.num_identity_modes, "identity")
        vertices = self._neutral + (identity @ self._identity_modes).view(identity.shape[0], -1, 3)
        if expression is not None:
            expression = self._coefficients(expression, self.num_expressions, "expression")
            if expression.shape[0] != identity.shape[0]:
                raise ValueError(f"got {identity.shape[0]} identities but {expression.shape[0]} expressions")
            vertices = vertices + (expression @ self._expression_modes).view(expression.shape[0], -1, 3)
        return torch.cat([vertices, vertices[:, self._cap_loop].mean(dim=1, keepdim=True)], dim=1)

    def sample(
        self, identity: torch.Tensor, expression: torch.Tensor, appearance: AppearanceParams, seed: int
    ) -> HeadBatch:
        """Training samples of B heads: identity (B, I), expression (B, E), appearance of B heads."""
        config = self.config
        generator = torch.Generator(device=self.device).manual_seed(int(seed))
        neutral = self.head_vertices(identity)
        posed = self.head_vertices(identity, expression)
        batch = posed.shape[0]
        if appearance.region_colours.shape[0] != batch:
            raise ValueError(f"got {batch} heads but appearance parameters for {appearance.region_colours.shape[0]}")

        posed_normals = _vertex_normals(posed, self._faces)
        areas = _face_areas(posed, self._faces) * exposed_faces(posed, self._faces, self._exposure_tests)
        face_count = round(config.surface_points * config.face_fraction)
        faces = torch.cat(
            [
                _draw_faces(areas * self._face_region, face_count, generator),
                _draw_faces(areas, config.surface_points - face_count, generator),
            ],
            dim=1,
        )
        barycentric = _uniform_barycentric(faces.shape, generator)
        points = _interpolate(posed, self._faces, faces, barycentric)
        colours = vertex_colours(self._appearance, appearance.to(self.device))
        colours = torch.cat([colours, colours[:, self._cap_loop].mean(dim=1, keepdim=True)], dim=1)

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
        neutral_normals = _vertex_normals(neutral, self._faces)

        def moved(vertices: torch.Tensor, normals: torch.Tensor) -> torch.Tensor:
            direction = _unit(_interpolate(normals, self._faces, corr_faces, corr_barycentric))
            return _interpolate(vertices, self._faces, corr_faces, corr_barycentric) + offsets[..., None] * direction

        return HeadBatch(
            surface_points=points,
            surface_normals=_unit(_interpolate(posed_normals, self._faces, faces, barycentric)),
            surface_colours=_interpolate(colours, self._faces, faces, barycentric).clamp(0.0, 1.0),
            surface_faces=faces,
            surface_barycentric=barycentric,
            surface_on_face=self._face_region[faces],
            space_points=torch.cat(near, dim=1),
            posed_points=moved(posed, posed_normals),
            neutral_points=moved(neutral, neutral_normals),
            correspondence_faces=corr_faces,
            correspondence_barycentric=corr_barycentric,
            correspondence_offsets=offsets,
            anchors=neutral[:, self._anchor_rows],
        )

    def _coefficients(self, values: torch.Tensor, width: int, name: str) -> torch.Tensor:
        values = torch.as_tensor(values, dtype=torch.float32, device=self.device)
        if values.ndim != 2 or values.shape[1] != width:
            raise ValueError(f"{name} must have shape (B, {width}), got {tuple(values.shape)}")
        return values


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
