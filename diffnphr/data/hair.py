"""Hair and beard as closed volumes on ICT heads: what the renders show and the decoder learns.

`HairModel` turns `HairStyles` (`diffnphr.data.hair_styles`) into geometry of one fixed
topology for B heads at once, from their vertices in the canonical frame before any pose:

* **scalp and beard volume as a displacement of the skin**: the skin vertices that can carry
  hair (above the brows at the front, above and behind the ears at the sides, down to the nape
  at the back; never the ears nor the face between brows and chin) move out along their
  normals by the style's thickness (with long-wavelength lumps and short-wavelength curls),
  thinning towards the hairline, which is a height interpolated over the azimuth round the
  head (forehead, temples, sideburns, behind the ears, nape), with an optional horseshoe-bald
  top. Beard vertices (jaw, chin, upper lip, under the jaw; never the lips) move out by the
  beard's thickness. Near the ears the displacement is capped by the distance to the ear, so
  the displaced skin never runs through it. The displaced skin is still the same closed,
  outward-wound surface: skin ∪ hair volume, with real thickness everywhere and nothing
  zero-width;
* **a long-hair curtain as a closed slab**: an outer and an inner sheet of columns round the
  back half of the head, hanging from the widest part of the hair surface down to the
  style's length (neck to below the shoulders), with waves and ragged ends, `curtain_thickness`
  apart and joined along their edges; for other styles it is folded flat inside the skull;
* **a bun**: a sphere at the back of the head for bun styles, a tiny one inside the skull
  otherwise;
* **colours**: the style's colour with strand-like streaks that vary round the head and stay
  nearly constant downwards, lighter tips on long hair; `coverage` says how much of each skin
  vertex's colour the hair (or beard, by its density) replaces.

The union with the eyeballs and teeth, and which triangles bound it, is
`diffnphr.data.head_geometry`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from torch import Tensor

from diffnphr.data.colour import linear_to_srgb
from diffnphr.data.fields import smoothstep
from diffnphr.data.hair_regions import (
    AZIMUTH_CENTRE_Z,
    beard_field,
    cosine_features,
    ear_box,
    may_carry_hair,
    room_beside,
    streak_features,
)
from diffnphr.data.hair_styles import (
    CURL_FEATURES,
    CURTAIN_COLUMNS,
    CURTAIN_TOP,
    HAIRLINE_AZIMUTHS,
    LUMP_FEATURES,
    STREAK_FEATURES,
    HairStyles,
    curtain_column_azimuths,
)
from diffnphr.data.skin_shell import check_heads, outer_skin_faces, slab_faces
from diffnphr.render import vertex_normals

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

_CURTAIN_ROWS = 32
_CURTAIN_ROW_POWER = 1.6  # row k of R hangs at t = (k / (R - 1)) ** power of the length: dense where it is tucked in
_CURTAIN_FULL = 0.12  # y from where the curtain hangs outside the widest part of the hair
_BUN_SUBDIVISIONS = 2  # an icosphere of 162 vertices
_HIDDEN_BUN = (0.0, 0.35, -0.3, 0.02)  # centre and radius of the bun of styles without one: inside the skull
# Cells of the back of the head's radial profile (`inside_head`): heights from _CELL_BOTTOM up.
_CELL_BOTTOM, _CELL_HEIGHT, _CELL_ROWS, _CELL_COLUMNS = -0.8, 0.025, 68, 72
_FILL_PASSES = 6  # passes that fill empty curtain columns from their neighbours


@dataclass(frozen=True)
class HairOnHeads:
    """What hair does to B heads' skin: displaced vertices, how much hair colour each shows, and that colour."""

    vertices: Tensor  # (B, V, 3) every ICT vertex, skin carrying hair or beard moved out
    coverage: Tensor  # (B, V) in [0, 1]: the hair colour's share of each vertex's colour
    colours: Tensor  # (B, V, 3) sRGB hair colour (meaningful where coverage > 0)


@dataclass(frozen=True)
class HairPieces:
    """The closed hair solids beside the skin: the curtain slab and the bun (one topology for all
    styles), and the shapes they were made from, for inside tests (`contains`)."""

    vertices: Tensor  # (B, P, 3)
    faces: Tensor  # (F, 3) long, indexing the pieces' own vertices, wound outward
    colours: Tensor  # (B, P, 3) sRGB
    is_bun: Tensor  # (F,) bool: the bun's triangles (the others are the curtain's)
    curtain_centre: Tensor  # (B, 3): the vertical axis the curtain hangs round
    curtain_y: Tensor  # (B, R, C) height of each curtain grid point
    curtain_radii: Tensor  # (B, 2, R, C) outer and inner sheet's distance from the axis
    bun_centre: Tensor  # (B, 3)
    bun_radius: Tensor  # (B,)

    def contains(self, points: Tensor) -> Tensor:
        """(B, Q) bool: which points (B, Q, 3) lie inside the bun or between the curtain's sheets."""
        in_bun = (points - self.bun_centre[:, None]).norm(dim=-1) < self.bun_radius[:, None]
        return in_bun | self._in_curtain(points)

    def _in_curtain(self, points: Tensor) -> Tensor:
        rows, columns = self.curtain_y.shape[1:]
        azimuths = curtain_column_azimuths().to(points.device)
        offset = points - self.curtain_centre[:, None]
        azimuth = torch.remainder(torch.atan2(offset[..., 0], offset[..., 2]), 2 * math.pi)
        column = (azimuth - azimuths[0]) / (azimuths[1] - azimuths[0])
        left = column.floor().clamp(0, columns - 2).long()
        across = (column - left).clamp(0, 1)
        end = self.curtain_y[:, -1]  # (B, C) where each column ends
        end = end.gather(1, left) * (1 - across) + end.gather(1, left + 1) * across
        t = (CURTAIN_TOP - points[..., 1]) / (CURTAIN_TOP - end).clamp_min(1e-6)
        down = t.clamp_min(0) ** (1 / _CURTAIN_ROW_POWER) * (rows - 1) - (t < 0).float()  # < 0 above the top
        top = down.floor().clamp(0, rows - 2).long()
        along = (down - top).clamp(0, 1)
        grid = self.curtain_radii.flatten(2)  # (B, 2, R·C)

        def radius(sheet: int) -> Tensor:
            value = 0.0
            for row, row_weight in ((top, 1 - along), (top + 1, along)):
                for col, col_weight in ((left, 1 - across), (left + 1, across)):
                    value = value + grid[:, sheet].gather(1, row * columns + col) * row_weight * col_weight
            return value

        distance = offset[..., [0, 2]].norm(dim=-1)
        within = (column >= 0) & (column <= columns - 1) & (down >= 0) & (down <= rows - 1)
        return within & (distance < radius(0)) & (distance > radius(1))


class HairModel:
    """Hair geometry of one fixed topology over an ICT model's heads (module docstring)."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        positions = model.neutral.astype(np.float64)
        landmarks = positions[model.landmarks_68]
        skin_faces = outer_skin_faces(model)
        skin_rows = np.unique(skin_faces)
        azimuth = np.arctan2(positions[:, 0], positions[:, 2] - AZIMUTH_CENTRE_Z)
        ear = ear_box(positions, landmarks)
        scalp = np.zeros(model.num_vertices, dtype=bool)
        scalp[skin_rows] = may_carry_hair(positions[skin_rows], azimuth[skin_rows], landmarks) & ~ear[skin_rows]
        beard = np.zeros(model.num_vertices)
        beard[skin_rows] = beard_field(model, positions[skin_rows], azimuth[skin_rows], landmarks)
        beard[ear] = 0.0

        rows = np.flatnonzero(scalp | (beard > 0))
        self.rows = torch.as_tensor(rows, device=self.device)
        self._normal_faces = torch.as_tensor(skin_faces[np.isin(skin_faces, rows).any(axis=1)], device=self.device)
        # The scalp's outline (a scalp vertex with a skin neighbour outside the scalp) never moves.
        outline = np.zeros(model.num_vertices, dtype=bool)
        crossing = scalp[skin_faces].any(axis=1) & ~scalp[skin_faces].all(axis=1)
        outline[skin_faces[crossing].ravel()] = True
        self._scalp = torch.as_tensor(scalp[rows] & ~outline[rows], device=self.device)
        self._beard = torch.as_tensor(beard[rows], dtype=torch.float32, device=self.device)
        self._room = torch.as_tensor(
            room_beside(positions[rows], positions[ear]), dtype=torch.float32, device=self.device
        )
        self._azimuth = torch.as_tensor(np.abs(azimuth[rows]), dtype=torch.float32, device=self.device)
        self._height = torch.as_tensor(positions[rows, 1], dtype=torch.float32, device=self.device)
        shell = positions[rows]
        self._lump_features = _tensor(cosine_features(shell, LUMP_FEATURES, 0.25, 0.6, seed=11), self.device)
        self._curl_features = _tensor(cosine_features(shell, CURL_FEATURES, 0.08, 0.2, seed=13), self.device)
        self._streak_features = _tensor(streak_features(azimuth[rows], shell[:, 1], STREAK_FEATURES), self.device)
        self._num_head_vertices = model.num_vertices
        self._profile_rows = torch.as_tensor(skin_rows[positions[skin_rows, 2] < 0.05], device=self.device)
        self._init_curtain(positions, azimuth, scalp)
        self._init_bun()
        self.pieces_faces = torch.cat([self._curtain_faces, self._bun_faces + 2 * self._curtain_size])
        self.pieces_is_bun = torch.arange(len(self.pieces_faces), device=self.device) >= len(self._curtain_faces)

    def _init_curtain(self, positions: np.ndarray, azimuth: np.ndarray, scalp: np.ndarray) -> None:
        """Curtain columns round the back, and which scalp vertices measure the skull at each."""
        self._column_azimuth = curtain_column_azimuths().to(self.device)
        spacing = float(self._column_azimuth[1] - self._column_azimuth[0])
        rows = self.rows.cpu().numpy()
        signed = np.mod(azimuth[rows], 2 * math.pi)
        column = np.rint((signed - float(self._column_azimuth[0])) / spacing).astype(np.int64)
        height = positions[rows, 1]
        band = scalp[rows] & (height > _CURTAIN_FULL - 0.1) & (height < CURTAIN_TOP + 0.05)
        band &= (column >= 0) & (column < CURTAIN_COLUMNS)
        self._band_rows = torch.as_tensor(np.flatnonzero(band), device=self.device)
        self._band_column = torch.as_tensor(column[band], device=self.device)
        self._band_top = torch.as_tensor(height[band] > CURTAIN_TOP - 0.05, device=self.device)
        self._band_sides = torch.as_tensor(
            np.isin(column[band], [0, 1, CURTAIN_COLUMNS - 2, CURTAIN_COLUMNS - 1]), device=self.device
        )
        self._curtain_t = torch.linspace(0.0, 1.0, _CURTAIN_ROWS, device=self.device) ** _CURTAIN_ROW_POWER
        self._curtain_size = _CURTAIN_ROWS * CURTAIN_COLUMNS
        self._curtain_faces = torch.as_tensor(slab_faces(_CURTAIN_ROWS, CURTAIN_COLUMNS), device=self.device)
        curtain_azimuth = np.angle(np.exp(1j * np.tile(self._column_azimuth.cpu().numpy(), _CURTAIN_ROWS)))
        curtain_height = CURTAIN_TOP - np.repeat(self._curtain_t.cpu().numpy(), CURTAIN_COLUMNS)
        features = _tensor(streak_features(curtain_azimuth, curtain_height, STREAK_FEATURES), self.device)
        self._curtain_streak_features = torch.cat([features, features])  # outer and inner sheet

    def _init_bun(self) -> None:
        sphere = trimesh.creation.icosphere(subdivisions=_BUN_SUBDIVISIONS)
        self._bun_unit = _tensor(np.asarray(sphere.vertices), self.device)
        self._bun_faces = torch.as_tensor(np.asarray(sphere.faces, dtype=np.int64), device=self.device)
        self._bun_streak_features = _tensor(
            cosine_features(np.asarray(sphere.vertices) * 0.1, STREAK_FEATURES, 0.04, 0.12, seed=29), self.device
        )

    # ----------------------------------------------------------------------------------------
    def on_heads(self, head_vertices: Tensor, styles: HairStyles) -> HairOnHeads:
        """The scalp and beard volume of B heads (B, V, 3) as displaced skin, with coverage and colour."""
        head_vertices = check_heads(head_vertices, self._num_head_vertices)
        if len(styles) != head_vertices.shape[0]:
            raise ValueError(f"{len(styles)} hair styles for {head_vertices.shape[0]} heads")
        styles = styles.to(head_vertices.device)
        normals = vertex_normals(head_vertices, self._normal_faces)[:, self.rows]
        presence, above = self._presence(styles)
        modulation = 1.0 + styles.lumps @ self._lump_features.T + styles.curls @ self._curl_features.T
        scalp = styles.thickness[:, None] * modulation.clamp(0.5, 1.6) * (0.25 + 0.75 * above) * presence
        beard = styles.beard[:, :1] * self._beard
        offset = torch.minimum(torch.maximum(scalp, beard), self._room)
        vertices = head_vertices.clone()
        vertices[:, self.rows] = head_vertices[:, self.rows] + normals * offset[..., None]

        thick = (styles.thickness / 0.012).clamp(0.6, 1.0)[:, None]  # a buzz cut shows some scalp
        shows = torch.maximum(presence * thick, styles.beard[:, 1:] * self._beard)
        coverage = head_vertices.new_zeros(head_vertices.shape[:2])
        coverage[:, self.rows] = shows
        colours = head_vertices.new_zeros(head_vertices.shape)
        colours[:, self.rows] = self._streaked(styles, self._streak_features)
        return HairOnHeads(vertices, coverage, colours)

    def pieces(self, hair_vertices: Tensor, styles: HairStyles) -> HairPieces:
        """The curtain slab and the bun of B heads, from their displaced skin (`on_heads(...).vertices`)."""
        hair_vertices = check_heads(hair_vertices, self._num_head_vertices)
        styles = styles.to(hair_vertices.device)
        scalp = hair_vertices[:, self.rows]
        centre, y, radii = self._curtain(scalp, styles)
        bun_centre, bun_radius = self._bun(scalp, styles)
        azimuth = self._column_azimuth[None, None, :]
        sheets = [
            torch.stack(
                [
                    centre[:, 0, None, None] + r * torch.sin(azimuth),
                    y,
                    centre[:, 2, None, None] + r * torch.cos(azimuth),
                ],
                dim=-1,
            ).flatten(1, 2)
            for r in radii.unbind(dim=1)
        ]
        bun = bun_centre[:, None] + bun_radius[:, None, None] * self._bun_unit
        tips = 0.25 * self._curtain_t.repeat_interleave(CURTAIN_COLUMNS) ** 2
        curtain_colours = self._streaked(styles, self._curtain_streak_features, torch.cat([tips, tips]))
        colours = torch.cat([curtain_colours, self._streaked(styles, self._bun_streak_features)], dim=1)
        return HairPieces(
            torch.cat([*sheets, bun], dim=1),
            self.pieces_faces,
            colours,
            self.pieces_is_bun,
            centre,
            y,
            radii,
            bun_centre,
            bun_radius,
        )

    def radial_profile(self, hair_vertices: Tensor, centre: Tensor, points: Tensor) -> tuple[Tensor, Tensor]:
        """Distance (B, Q) of points (B, Q, 3) from the vertical axis through `centre` (B, 3), and the
        distance of the heads' skin with hair (`on_heads(...).vertices`) from it in the same direction.

        The back of a head is star-shaped about that axis: the skin's distance in a direction is the
        largest distance of its vertices in the same (height, azimuth) cell (6 mm × 5°; an empty
        cell takes its neighbours'). Meant for points behind the ears (the curtain, the bun and
        the skin they touch), not for the face.
        """
        profile = self._cells(hair_vertices[:, self._profile_rows], centre)
        cell, distance = self._cell_of(points, centre)
        return distance, profile.gather(1, cell)

    # ----------------------------------------------------------------------------------------
    def _presence(self, styles: HairStyles) -> tuple[Tensor, Tensor]:
        """(B, Vr) where each style has scalp hair (0..1, 0 on the scalp's outline and off it) and how
        far above its hairline (0..1 over 6 cm), for hair that thins towards the hairline."""
        knots = torch.tensor(HAIRLINE_AZIMUTHS, device=styles.hairline.device).deg2rad()
        segment = (torch.searchsorted(knots, self._azimuth.contiguous()) - 1).clamp(0, len(knots) - 2)
        fraction = ((self._azimuth - knots[segment]) / (knots[segment + 1] - knots[segment])).clamp(0, 1)
        line = styles.hairline[:, segment] + (styles.hairline[:, segment + 1] - styles.hairline[:, segment]) * fraction
        rise = self._height - line
        presence = smoothstep(-0.035, 0.035, rise) * smoothstep(0.03, -0.03, self._height - styles.bald_top[:, None])
        return presence * self._scalp.float(), smoothstep(0.0, 0.25, rise)

    def _streaked(self, styles: HairStyles, features: Tensor, extra: Tensor | float = 0.0) -> Tensor:
        """(B, N, 3) sRGB: the styles' colours times the exp of their streaks on `features` (N, 12)."""
        log_brightness = styles.streaks @ features.T + extra
        return linear_to_srgb(styles.colour[:, None, :] * torch.exp(log_brightness)[..., None])

    def _curtain(self, scalp: Tensor, styles: HairStyles) -> tuple[Tensor, Tensor, Tensor]:
        """The long-hair slab's axis (B, 3), grid heights (B, R, C) and outer and inner radii
        (B, 2, R, C), or a flat ring folded inside the skull for styles without one."""
        band = scalp[:, self._band_rows]
        # The skull's vertical axis: midway between the band's sides in x, at the sides' depth in z.
        sides = band[:, self._band_sides]
        centre = torch.stack([band[..., 0].mean(dim=1), band[..., 1].mean(dim=1), sides[..., 2].mean(dim=1)], dim=1)
        radius = torch.linalg.vector_norm((band - centre[:, None])[..., [0, 2]], dim=-1)
        widest = self._column_maximum(radius)
        top = self._column_maximum(torch.where(self._band_top, radius, torch.zeros_like(radius)))
        top = torch.where(top > 0, top, widest)

        t = self._curtain_t.view(_CURTAIN_ROWS, 1)[None]  # (1, R, 1)
        used = (styles.length < CURTAIN_TOP - 0.1).float()[:, None, None]
        end = (styles.length[:, None] - styles.ragged)[:, None, :]  # (B, 1, C)
        y = CURTAIN_TOP + (end - CURTAIN_TOP) * t
        wave = styles.wave[:, 0, None, None] * torch.sin(12.0 * (CURTAIN_TOP - y) + styles.wave[:, 1, None, None])
        # Tucked under the hair at the top, out over its widest part lower down, loosening below.
        spread = smoothstep(CURTAIN_TOP, _CURTAIN_FULL, y)
        r = top[:, None] - 0.015 + (widest[:, None] + 0.005 - top[:, None] + 0.015) * spread
        r = r + 0.03 * (_CURTAIN_FULL - y).clamp_min(0.0) + wave * spread
        r = r * used + (1 - used) * 0.5 * widest[:, None, :]  # unused: folded well inside the skull
        y = y * used + (1 - used) * CURTAIN_TOP
        inner = (r - styles.curtain_thickness[:, None, None] * used).clamp_min(0.2 * widest[:, None, :])
        return centre, y, torch.stack([r, inner], dim=1)

    def _bun(self, scalp: Tensor, styles: HairStyles) -> tuple[Tensor, Tensor]:
        """Centre (B, 3) and radius (B,) of the bun behind the hair at the style's height, or of a
        tiny sphere inside the skull."""
        radius, height = styles.bun[:, 0], styles.bun[:, 1]
        near = (scalp[..., 0].abs() < 0.08) & ((scalp[..., 1] - height[:, None]).abs() < 0.06)
        back = torch.where(near, scalp[..., 2], torch.zeros_like(scalp[..., 2])).amin(dim=1)
        centre = torch.stack([torch.zeros_like(height), height, back - 0.55 * radius], dim=1)
        hidden = torch.tensor(_HIDDEN_BUN, device=scalp.device)
        has_bun = radius > 0
        return torch.where(has_bun[:, None], centre, hidden[:3]), torch.where(has_bun, radius, hidden[3])

    @staticmethod
    def _cell_of(points: Tensor, centre: Tensor) -> tuple[Tensor, Tensor]:
        """Each point's (height, azimuth) cell index (B, Q) round the axis through `centre` (B, 3),
        and its distance from the axis."""
        y = points[..., 1]
        x, z = (points[..., 0] - centre[:, None, 0]), (points[..., 2] - centre[:, None, 2])
        row = ((y - _CELL_BOTTOM) / _CELL_HEIGHT).floor().clamp(0, _CELL_ROWS - 1).long()
        azimuth = torch.atan2(x, z) + math.pi
        column = (azimuth / (2 * math.pi) * _CELL_COLUMNS).floor().clamp(0, _CELL_COLUMNS - 1).long()
        return row * _CELL_COLUMNS + column, torch.hypot(x, z)

    def _cells(self, skin: Tensor, centre: Tensor) -> Tensor:
        """(B, cells) the largest distance from the axis of the skin points (B, N, 3) in each cell."""
        cell, distance = self._cell_of(skin, centre)
        largest = skin.new_zeros(skin.shape[0], _CELL_ROWS * _CELL_COLUMNS)
        largest = largest.scatter_reduce(1, cell, distance, reduce="amax")
        grid = largest.view(-1, 1, _CELL_ROWS, _CELL_COLUMNS)
        around = torch.nn.functional.max_pool2d(grid, 3, stride=1, padding=1)
        return torch.where(grid > 0, grid, around).flatten(1)

    def _column_maximum(self, values: Tensor) -> Tensor:
        """(B, C) the largest of per-band-vertex `values` (B, N) in each curtain column, smoothed
        over neighbouring columns; an empty column takes its nearest filled neighbours' mean."""
        count = values.shape[0]
        largest = torch.zeros(count, CURTAIN_COLUMNS, device=values.device)
        largest = largest.scatter_reduce(1, self._band_column.expand(count, -1), values, reduce="amax")
        for _ in range(_FILL_PASSES):
            padded = torch.cat([largest[:, :1] * 0, largest, largest[:, -1:] * 0], dim=1)
            filled = (padded[:, :-2] > 0).float() + (padded[:, 2:] > 0).float()
            mean = (padded[:, :-2] + padded[:, 2:]) / filled.clamp_min(1)
            largest = torch.where((largest > 0) | (filled == 0), largest, mean)
        largest = torch.where(largest > 0, largest, largest.amax(dim=1, keepdim=True))
        padded = torch.cat([largest[:, :1], largest, largest[:, -1:]], dim=1)
        return (padded[:, :-2] + 2 * largest + padded[:, 2:]) / 4


def _tensor(array: np.ndarray, device: torch.device) -> Tensor:
    return torch.as_tensor(np.ascontiguousarray(array), dtype=torch.float32, device=device)
