"""The whole closed surface of B random heads: skin with hair, eyeballs, teeth, curtain and bun.

`HeadGeometry.build(factors)` is the one place that turns `HeadFactors` into the surface the
decoder learns and the evaluation compares against: the capped skin of `diffnphr.data.heads`
with the scalp and beard volume of `diffnphr.data.hair` as a displacement, the eyeball and
teeth shells, and the long-hair slab and the bun. Their solid is the union of those closed
pieces, so only the triangles on the union's boundary are surface (`HeadMeshes.exposed`):
besides `heads`' eye and teeth tests, the curtain and bun vertices are hidden where they lie
inside the skin with hair, and the skin of the back of the head where it lies inside the
curtain slab or the bun. Both come from one radial profile of the back of the head
(`HairModel.radial_profile`: it is star-shaped about the curtain's axis): a piece's vertex is
inside where it is nearer the axis than the skin in its direction, and a skin vertex is tested
(`HairPieces.contains`, from the shapes the pieces were built from) at the profile's distance
in its direction, so the two decisions agree and leave no hole where a piece meets the skin.
Both cost one pass over the points, where winding numbers against thousands of triangles
would cost more than the decoder's step. Colours are the appearance's vertex
colours with the hair colour laid over the skin by the hair's coverage; the hair region is
what hair covers (more than half) plus the curtain and bun; the face region is what a photo of
the face shows: ICT's `face` part, the eyeballs and the teeth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.appearance import appearance_basis, vertex_colours
from diffnphr.data.hair import HairModel
from diffnphr.data.heads import COMPONENTS as SURFACE_COMPONENTS
from diffnphr.data.heads import exposed_faces, head_surface

if TYPE_CHECKING:
    from diffnphr.data.factors import HeadFactors
    from diffnphr.data.hair import HairOnHeads, HairPieces
    from diffnphr.data.ict import ICTFaceModel

COMPONENTS = (*SURFACE_COMPONENTS, "curtain", "bun")
_BACK_Z = 0.0  # skin vertices behind this depth (mean head) are tested against the curtain and the bun
_HAIR_COVERED = 0.5  # coverage above which a skin triangle counts as hair


@dataclass(frozen=True)
class HeadMeshes:
    """B heads' closed surfaces of one topology: the surface rows (`HeadSurface`), then the hair pieces."""

    vertices: Tensor  # (B, N, 3) canonical frame
    faces: Tensor  # (F, 3) long
    component: Tensor  # (F,) index into COMPONENTS
    exposed: Tensor  # (B, F) bool: on the boundary of the union
    colours: Tensor  # (B, N, 3) sRGB in [0, 1]
    face_region: Tensor  # (F,) bool: the ICT face part, the eyeballs and the teeth
    is_eye: Tensor  # (F,) bool: the eyeballs' triangles
    hair_region: Tensor  # (B, F) bool

    def head(self, index: int) -> dict[str, Tensor]:
        """One head's exposed surface: vertices, faces, face_region and hair_region per face, colours."""
        keep = self.exposed[index]
        return {
            "vertices": self.vertices[index],
            "faces": self.faces[keep],
            "face_region": self.face_region[keep],
            "hair_region": self.hair_region[index, keep],
            "colours": self.colours[index],
        }


class HeadGeometry:
    """Builds `HeadMeshes` from `HeadFactors` on one device (module docstring)."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu") -> None:
        self.model, self.device = model, torch.device(device)
        self.surface = surface = head_surface(model)
        self.hair = HairModel(model, self.device)

        def tensor(array: np.ndarray, dtype: torch.dtype = torch.float32) -> Tensor:
            return torch.as_tensor(np.array(array), dtype=dtype, device=self.device)

        vertex_count = model.num_vertices
        self._neutral = tensor(model.neutral)
        self._identity_modes = tensor(model.identity_modes.reshape(-1, vertex_count * 3))
        self._expression_modes = tensor(model.expression_modes.reshape(-1, vertex_count * 3))
        self._rows = tensor(surface.vertex_ids, torch.long)
        self._cap_loop = tensor(surface.cap_loop_rows, torch.long)
        self._basis = appearance_basis(model).to(self.device)
        rows = len(surface.vertex_ids) + 1
        pieces = self.hair.pieces_faces
        self.faces = torch.cat([tensor(surface.faces, torch.long), pieces + rows])
        self.component = torch.cat(
            [tensor(surface.component, torch.long), len(SURFACE_COMPONENTS) + self.hair.pieces_is_bun.long()]
        )
        shells = (self.component > 0) & (self.component < len(SURFACE_COMPONENTS))
        self.face_region = torch.cat([tensor(surface.face_region, torch.bool), torch.zeros_like(pieces[:, 0]).bool()])
        self.face_region |= shells
        self.is_eye = shells & (self.component != SURFACE_COMPONENTS.index("teeth"))
        self.tests = [test.to(self.device) for test in surface.exposure_tests]
        self._always_hidden = torch.cat(
            [
                tensor(surface.always_hidden, torch.bool),
                torch.zeros(int(self.hair.pieces_faces.max()) + 1, dtype=torch.bool, device=self.device),
            ]
        )
        positions = surface.vertices(model.neutral)
        skin_rows = np.unique(surface.faces[surface.component == 0])
        self._back_rows = tensor(skin_rows[positions[skin_rows, 2] < _BACK_Z], torch.long)

    def ict_vertices(self, factors: HeadFactors) -> Tensor:
        """(B, V, 3) every ICT vertex of the heads, without hair."""
        factors = factors.to(self.device)
        offsets = factors.identity.float() @ self._identity_modes + factors.expression.float() @ self._expression_modes
        return offsets.view(len(factors), -1, 3) + self._neutral

    def vertices(self, factors: HeadFactors) -> Tensor:
        """(B, N, 3) the heads' surface vertices alone (as `build(factors).vertices`)."""
        return self._pieces(factors.to(self.device))[2]

    def _pieces(self, factors: HeadFactors) -> tuple[HairOnHeads, HairPieces, Tensor]:
        on_heads = self.hair.on_heads(self.ict_vertices(factors), factors.hair)
        pieces = self.hair.pieces(on_heads.vertices, factors.hair)
        skin = on_heads.vertices[:, self._rows]
        cap = skin[:, self._cap_loop].mean(dim=1, keepdim=True)
        return on_heads, pieces, torch.cat([skin, cap, pieces.vertices], dim=1)

    def build(self, factors: HeadFactors) -> HeadMeshes:
        """The heads' closed surfaces, which triangles bound their union, colours and regions."""
        factors = factors.to(self.device)
        on_heads, pieces, vertices = self._pieces(factors)
        skin = vertices[:, : len(self.surface.vertex_ids)]

        albedo = vertex_colours(self._basis, factors.appearance)
        coverage = on_heads.coverage[..., None]
        albedo = albedo * (1 - coverage) + on_heads.colours * coverage
        skin_colours = albedo[:, self._rows]
        colours = torch.cat(
            [skin_colours, skin_colours[:, self._cap_loop].mean(dim=1, keepdim=True), pieces.colours], dim=1
        ).clamp(0.0, 1.0)

        hidden = self._always_hidden.expand(len(factors), -1).clone()
        rows, back = skin.shape[1] + 1, vertices[:, self._back_rows]
        centre = pieces.curtain_centre
        distance, radius = self.hair.radial_profile(on_heads.vertices, centre, torch.cat([pieces.vertices, back], 1))
        pieces_count = pieces.vertices.shape[1]
        hidden[:, rows:] = distance[:, :pieces_count] < radius[:, :pieces_count]
        axis = torch.stack([centre[:, 0], centre[:, 2]], dim=1)[:, None]
        direction = (back[..., [0, 2]] - axis) / distance[:, pieces_count:, None].clamp_min(1e-6)
        on_profile = axis + direction * radius[:, pieces_count:, None]
        on_profile = torch.stack([on_profile[..., 0], back[..., 1], on_profile[..., 1]], dim=-1)
        hidden[:, self._back_rows] |= pieces.contains(on_profile)
        exposed = exposed_faces(vertices, self.faces, self.tests, hidden)
        covered = torch.cat([on_heads.coverage[:, self._rows], on_heads.coverage.new_zeros(len(factors), 1)], dim=1)
        hair_faces = covered[:, self.faces[: len(self.surface.faces)]].mean(dim=-1) > _HAIR_COVERED
        pieces_faces = torch.ones(len(factors), len(pieces.faces), dtype=torch.bool, device=self.device)
        hair_region = torch.cat([hair_faces, pieces_faces], dim=1)
        return HeadMeshes(
            vertices, self.faces, self.component, exposed, colours, self.face_region, self.is_eye, hair_region
        )
