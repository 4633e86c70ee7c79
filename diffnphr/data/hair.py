"""Procedural hair and torso meshes, rasterised together with an ICT head in training renders.

Real photos show hair, a neck and shoulders around the face; ICT heads are bald busts cut at
the neck. Both models here give B meshes of one fixed topology (so a batch rasterises in one
go) from the B heads' vertices in the canonical frame, before any pose is applied: the
renderer poses them with the head.

Hair (`HairModel`):

* a shell over the scalp: the skin vertices of `face` and `head_and_neck` that can carry hair
  (above the brows at the front, above and behind the ears at the sides, down to the nape at
  the back; never the ears nor the face between brows and chin), moved along the vertex
  normals by the style's thickness (0.3-4 cm, with low-frequency lumps) where the style has
  hair and 2 mm inside the skin where it has none. Where hair grows is a hairline height
  interpolated over the azimuth around the head (forehead, temples, sideburns, behind the
  ears, nape), optionally with a bald top (horseshoe pattern) or no hair at all; the shell's
  outer rim always stays inside the skin, and the hair thins towards the hairline;
* a curtain for long hair: a strip of columns around the back half of the head hanging from
  the widest part of the skull shell down to the style's length (neck to below the
  shoulders), with waves and ragged ends; for short styles it collapses inside the head;
* colour: the head's own hair colour (appearance region "hair", so hair matches the brows)
  or one from a palette (black ... blond, red, grey; dyed rarely), with strand-like streaks
  that vary around the head and stay nearly constant downwards, lighter tips on long hair.

Torso (`TorsoModel`): rows of rings hanging from the ICT neck cut (`neck_boundary_loop`),
each column a smooth curve leaving the cut the way the skin arrives at it, over the trapezius
to the shoulder / chest edge of a superelliptic torso section, then down; plus a clothes
shell over the ICT neck and upper chest (which the ICT bust includes), built like the hair
shell and pinned to the cut, so a neckline can sit anywhere from under the jaw (turtleneck)
to below the shoulders (bare). Below the style's neckline (front, side and back heights,
round or V) both are clothes, lifted off the body by the clothes' thickness and coloured as a
shirt, or an open jacket beside a front opening; above it the torso takes the given skin
colour and the shell hides inside the skin. Width, depth, shoulder slope, lean and a small
turn of the torso are drawn per style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.appearance import HAIR_SRGB, linear_to_srgb, srgb_to_linear
from diffnphr.data.ict import ICTFaceModel
from diffnphr.render import vertex_normals

# Fixed landmarks of the mean head (canonical units), where hair may grow and where it must not.
_AZIMUTH_CENTRE_Z = -0.3  # the ears' depth: azimuth 0 faces the nose, +-pi the back of the head
_BROW_CLEARANCE = 0.01  # the shell starts this far above the highest brow landmark at the front
_FACE_AZIMUTH = math.radians(62)  # the face (brows to chin) lies within this azimuth
_EAR_MARGIN = 0.03  # ears plus this margin carry no hair shell
_HIDDEN_DEPTH = 0.008  # 2 mm: where a style has no hair the shell sits this far inside the skin
_HAIRLINE_AZIMUTHS = (0.0, 40.0, 65.0, 82.0, 110.0, 140.0, 180.0)  # degrees, control points of the hairline
_THICKNESS_CM = (0.3, 4.0)
_LUMP_FEATURES = 10
_STREAK_FEATURES = 12
_CURTAIN_COLUMNS = 40
_CURTAIN_ROWS = 18
_CURTAIN_START_AZIMUTH = math.radians(80)  # the curtain runs from here round the back to -here
_CURTAIN_TOP = 0.42  # y where long hair leaves the skull shell (well above the ears)
_CURTAIN_FULL = 0.12  # y from where it hangs outside the widest part of the shell
_DYED_SRGB = ((150, 40, 110), (40, 70, 150), (120, 60, 160), (230, 225, 215), (180, 40, 40))
_CLOTHES_SRGB = (
    (25, 25, 28),
    (240, 240, 238),
    (120, 120, 125),
    (30, 40, 70),
    (60, 80, 120),
    (110, 30, 35),
    (40, 70, 50),
    (180, 160, 130),
    (90, 60, 40),
    (200, 80, 60),
    (230, 200, 80),
    (120, 160, 200),
    (200, 150, 170),
    (70, 45, 80),
)
_NECKLINES = ("crew", "v", "scoop", "turtleneck", "bare")
_NECKLINE_ODDS = (0.4, 0.2, 0.2, 0.12, 0.08)
_TORSO_COLUMNS_PER_EDGE = 3
_TORSO_ROWS = 24
_TORSO_BOTTOM_Y = -2.6  # far below any frame the renderer draws
_NO_JACKET = 4.0  # a front opening wider than all round: no jacket
_COLLAR_TOP = -0.38  # the clothes shell covers the ICT skin below this height (the neck under the jaw)


@dataclass(frozen=True)
class HairStyles:
    """Per-style hair parameters (B rows), drawn by `HairModel.sample_styles`.

    Heights are canonical y; `hairline` (B, 7) at the azimuths `_HAIRLINE_AZIMUTHS`; `bald_top`
    (B,) the height above which a horseshoe-bald style has no hair (large: none);
    `thickness` (B,) units; `lumps` (B, 10) thickness modulation; `length` (B,) the y where a
    long style's curtain ends (>= `_CURTAIN_TOP`: no curtain); `wave` (B, 2) amplitude and
    phase of the curtain's waves; `ragged` (B, 40) per-column end jitter; `colour` (B, 3)
    linear RGB; `streaks` (B, 12) log-brightness coefficients of the streak features.
    """

    hairline: Tensor
    bald_top: Tensor
    thickness: Tensor
    lumps: Tensor
    length: Tensor
    wave: Tensor
    ragged: Tensor
    colour: Tensor
    streaks: Tensor

    def __len__(self) -> int:
        return int(self.thickness.shape[0])

    def to(self, device: torch.device | str) -> HairStyles:
        """The same styles on another device."""
        return HairStyles(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


@dataclass(frozen=True)
class TorsoStyles:
    """Per-style torso parameters (B rows), drawn by `TorsoModel.sample_styles`.

    `shape` (B, 6): shoulder half-width, chest half-depth (units), shoulder drop per unit of
    reach, superellipse exponent, forward lean (z shift) and turn (radians about the vertical);
    `neckline` (B, 5): the neckline's height (canonical y) at the front, the sides and the back,
    the sharpness of its front (1 round, 3-4 a V) and the clothes' thickness (units);
    `clothes` (B, 2, 3) linear RGB colours of the shirt and of an open jacket over it;
    `jacket` (B,): the half-angle (radians) of the jacket's front opening, beyond pi for none.
    """

    shape: Tensor
    neckline: Tensor
    clothes: Tensor
    jacket: Tensor

    def __len__(self) -> int:
        return int(self.shape.shape[0])

    def to(self, device: torch.device | str) -> TorsoStyles:
        """The same styles on another device."""
        return TorsoStyles(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})


class HairModel:
    """Hair shell and long-hair curtain of one fixed topology over an ICT model's heads (module docstring)."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        positions = model.neutral.astype(np.float64)
        landmarks = positions[model.landmarks_68]
        skin_faces = _skin_faces(model)
        skin_rows = np.unique(skin_faces)
        azimuth_all = np.arctan2(positions[:, 0], positions[:, 2] - _AZIMUTH_CENTRE_Z)
        carries = np.zeros(model.num_vertices, dtype=bool)
        carries[skin_rows] = _may_carry_hair(positions[skin_rows], azimuth_all[skin_rows], landmarks)

        rows, shell_faces, normal_faces, rim = _skin_shell(skin_faces, carries)
        self.shell_rows = torch.as_tensor(rows, device=self.device)
        self.shell_faces = torch.as_tensor(shell_faces, device=self.device)
        self._normal_faces = torch.as_tensor(normal_faces, device=self.device)
        self._rim = torch.as_tensor(rim, device=self.device)

        shell = positions[rows]
        self._shell_azimuth = torch.as_tensor(np.abs(azimuth_all[rows]), dtype=torch.float32, device=self.device)
        self._shell_y = torch.as_tensor(shell[:, 1], dtype=torch.float32, device=self.device)
        self._lump_features = torch.as_tensor(
            _cosine_features(shell, _LUMP_FEATURES, 0.25, 0.6, seed=11), dtype=torch.float32, device=self.device
        )

        # Curtain columns round the back, and which shell vertices measure the skull at each.
        self._column_azimuth = torch.linspace(
            _CURTAIN_START_AZIMUTH, 2 * math.pi - _CURTAIN_START_AZIMUTH, _CURTAIN_COLUMNS, device=self.device
        )
        spacing = float(self._column_azimuth[1] - self._column_azimuth[0])
        signed = np.mod(azimuth_all[rows], 2 * math.pi)
        column = np.rint((signed - _CURTAIN_START_AZIMUTH) / spacing).astype(np.int64)
        band = (shell[:, 1] > _CURTAIN_FULL - 0.1) & (shell[:, 1] < _CURTAIN_TOP + 0.05)
        band &= (column >= 0) & (column < _CURTAIN_COLUMNS)
        self._band_rows = torch.as_tensor(np.nonzero(band)[0], device=self.device)
        self._band_column = torch.as_tensor(column[band], device=self.device)
        self._band_top = torch.as_tensor(shell[band, 1] > _CURTAIN_TOP - 0.05, device=self.device)
        grid = np.arange(_CURTAIN_ROWS * _CURTAIN_COLUMNS).reshape(_CURTAIN_ROWS, _CURTAIN_COLUMNS)
        curtain_faces = _grid_faces(grid) + len(rows)
        self.faces = torch.cat([self.shell_faces, torch.as_tensor(curtain_faces, device=self.device)])
        self.num_vertices = len(rows) + _CURTAIN_ROWS * _CURTAIN_COLUMNS

        # Streak features over every hair vertex: azimuth (fast) and height (slow).
        curtain_azimuth = np.angle(np.exp(1j * np.tile(self._column_azimuth.cpu().numpy(), _CURTAIN_ROWS)))
        curtain_t = np.repeat(np.linspace(0.0, 1.0, _CURTAIN_ROWS), _CURTAIN_COLUMNS)
        self._curtain_t = torch.as_tensor(curtain_t, dtype=torch.float32, device=self.device)
        azimuth = np.concatenate([azimuth_all[rows], curtain_azimuth])
        height = np.concatenate([shell[:, 1], _CURTAIN_TOP - curtain_t])
        self._streak_features = torch.as_tensor(
            _streak_features(azimuth, height), dtype=torch.float32, device=self.device
        )
        self._num_head_vertices = model.num_vertices

    def sample_styles(self, count: int, generator: torch.Generator, colours: Tensor | None = None) -> HairStyles:
        """`count` random hair styles (on CPU), from bald to shoulder length.

        `colours` (count, 3), optional linear RGB hair colours (e.g. the appearance's "hair"
        region, so hair matches the brows); a few styles still get grey or dyed hair.
        """
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        g = generator

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            return low + (high - low) * torch.rand((count, *shape), generator=g)

        kind = (
            torch.multinomial(torch.tensor([0.06, 0.1, 0.5, 0.34]), count, replacement=True, generator=g)
            if count
            else torch.zeros(0, dtype=torch.long)
        )
        bald, balding, _short, long_ = (kind == k for k in range(4))
        fringe = torch.rand(count, generator=g) < 0.2
        front = torch.where(fringe, uniform(0.345, 0.38), uniform(0.5, 0.6))
        front = torch.where(balding, uniform(0.58, 0.66), front)
        temple = torch.maximum(front + uniform(-0.02, 0.08), torch.full((count,), 0.36))
        sideburn_cap = torch.where(long_, 0.2, 0.32)
        above_ear = torch.minimum(uniform(0.24, 0.34), sideburn_cap)
        sideburn = torch.minimum(uniform(0.02, 0.28), above_ear)
        behind_ear = torch.minimum(uniform(-0.05, 0.25), sideburn_cap)
        nape = torch.where(long_, uniform(-0.35, -0.15), uniform(-0.3, 0.05))
        hairline = torch.stack([front, temple, above_ear, sideburn, behind_ear, nape + uniform(0.0, 0.06), nape], dim=1)
        hairline = torch.where(bald[:, None], torch.full_like(hairline, 9.0), hairline)
        bald_top = torch.where(balding, uniform(0.42, 0.56), torch.full((count,), 9.0))

        thickness_cm = torch.exp(uniform(math.log(_THICKNESS_CM[0]), math.log(_THICKNESS_CM[1])))
        thickness = torch.where(balding, thickness_cm.clamp(max=0.8), thickness_cm) / 25.0  # short at the sides
        lumps = torch.randn(count, _LUMP_FEATURES, generator=g) * uniform(0.05, 0.25)[:, None]
        length = torch.where(long_, uniform(-1.1, -0.15), torch.full((count,), _CURTAIN_TOP))
        wave = torch.stack([uniform(0.0, 0.03), uniform(0.0, 2 * math.pi)], dim=1)
        jitter = torch.rand(count, _CURTAIN_COLUMNS + 4, generator=g)
        jitter = sum(jitter[:, k : k + _CURTAIN_COLUMNS] for k in range(5)) / 5 * 0.7 + 0.3 * jitter[:, 2:-2]
        sides = (1 + torch.cos(self._column_azimuth.cpu())) / 2  # 1 beside the face, 0 at the back
        ragged = jitter * uniform(0.0, 0.12)[:, None] + sides * uniform(-0.2, 0.1)[:, None]

        palette = torch.as_tensor(srgb_to_linear(np.array(HAIR_SRGB) / 255.0), dtype=torch.float32)
        odds = torch.tensor([0.24, 0.26, 0.16, 0.1, 0.1, 0.06, 0.08])
        drawn = palette[torch.multinomial(odds, count, replacement=True, generator=g)] if count else palette[:0]
        if colours is not None:
            colours = torch.as_tensor(colours, dtype=torch.float32).cpu()
            if colours.shape != (count, 3):
                raise ValueError(f"colours must have shape ({count}, 3), got {tuple(colours.shape)}")
            drawn = torch.where((torch.rand(count, generator=g) < 0.85)[:, None], colours, drawn)
        dyed = torch.as_tensor(srgb_to_linear(np.array(_DYED_SRGB) / 255.0), dtype=torch.float32)
        dyed = dyed[torch.randint(0, len(_DYED_SRGB), (count,), generator=g)]
        colour = torch.where((torch.rand(count, generator=g) < 0.03)[:, None], dyed, drawn)
        colour = (colour * torch.exp(0.15 * torch.randn(count, 1, generator=g))).clamp(0.0, 1.0)
        streaks = torch.randn(count, _STREAK_FEATURES, generator=g) * uniform(0.08, 0.3)[:, None]
        return HairStyles(hairline, bald_top, thickness, lumps, length, wave, ragged, colour, streaks)

    def mesh(self, head_vertices: Tensor, styles: HairStyles) -> tuple[Tensor, Tensor, Tensor]:
        """Hair of B heads: vertices (B, Vh, 3), faces (Fh, 3) long (shared), colours (B, Vh, 3) sRGB.

        `head_vertices` (B, V, 3) in the canonical frame (before pose); `styles` of B rows.
        Faces index the hair's own vertices; the renderer offsets them when concatenating.
        """
        head_vertices = _check_heads(head_vertices, self._num_head_vertices)
        count = head_vertices.shape[0]
        if len(styles) != count:
            raise ValueError(f"{len(styles)} hair styles for {count} heads")
        styles = styles.to(head_vertices.device)
        normals = vertex_normals(head_vertices, self._normal_faces)[:, self.shell_rows]
        skin = head_vertices[:, self.shell_rows]

        presence, above = self._presence(styles)
        lumps = 1.0 + (styles.lumps @ self._lump_features.T)  # (B, Vs)
        thickness = styles.thickness[:, None] * lumps.clamp(0.6, 1.4) * (0.25 + 0.75 * above)
        offset = -_HIDDEN_DEPTH + (thickness + _HIDDEN_DEPTH) * presence
        shell = skin + normals * offset[..., None]

        curtain = self._curtain(shell, styles)
        vertices = torch.cat([shell, curtain], dim=1)
        return vertices, self.faces, self._colours(styles)

    def _presence(self, styles: HairStyles) -> tuple[Tensor, Tensor]:
        """(B, Vs) where each style has hair on the shell (0..1, 0 on the rim) and how far above
        its hairline (0..1 over 6 cm), for thinning hair towards the hairline."""
        knots = torch.tensor(_HAIRLINE_AZIMUTHS, device=styles.hairline.device).deg2rad()
        segment = (torch.searchsorted(knots, self._shell_azimuth.contiguous()) - 1).clamp(0, len(knots) - 2)
        fraction = ((self._shell_azimuth - knots[segment]) / (knots[segment + 1] - knots[segment])).clamp(0, 1)
        height = (
            styles.hairline[:, segment] + (styles.hairline[:, segment + 1] - styles.hairline[:, segment]) * fraction
        )
        rise = self._shell_y - height  # (B, Vs)
        presence = _smoothstep(-0.035, 0.035, rise) * _smoothstep(0.03, -0.03, self._shell_y - styles.bald_top[:, None])
        presence = presence * (~self._rim).float()
        return presence, _smoothstep(0.0, 0.25, rise)

    def _curtain(self, shell: Tensor, styles: HairStyles) -> Tensor:
        """(B, rows * columns, 3) long-hair strip hanging from the skull shell, or folded inside the head."""
        count, _device = shell.shape[0], shell.device
        band = shell[:, self._band_rows]  # (B, N, 3)
        centre = band.mean(dim=1)  # (B, 3): the skull's axis, horizontally
        radius = torch.linalg.vector_norm((band - centre[:, None])[..., [0, 2]], dim=-1)
        widest = self._column_maximum(radius)
        top = self._column_maximum(torch.where(self._band_top, radius, torch.zeros_like(radius)))
        top = torch.where(top > 0, top, widest)

        t = self._curtain_t.view(_CURTAIN_ROWS, _CURTAIN_COLUMNS)[None]  # (1, R, C)
        used = (styles.length < _CURTAIN_TOP - 0.1).float()[:, None, None]
        end = (styles.length[:, None] - styles.ragged)[:, None, :]  # (B, 1, C)
        y = _CURTAIN_TOP + (end - _CURTAIN_TOP) * t
        wave = styles.wave[:, 0, None, None] * torch.sin(12.0 * (_CURTAIN_TOP - y) + styles.wave[:, 1, None, None])
        # Tucked under the shell at the top, out over its widest part lower down, loosening below.
        spread = _smoothstep(_CURTAIN_TOP, _CURTAIN_FULL, y)
        r = top[:, None] - 0.015 + (widest[:, None] + 0.005 - top[:, None] + 0.015) * spread
        r = r + 0.03 * (_CURTAIN_FULL - y).clamp_min(0.0) + wave * spread
        r = r * used + (1 - used) * 0.5 * widest[:, None, :]  # unused: folded well inside the skull
        y = y * used + (1 - used) * _CURTAIN_TOP
        azimuth = self._column_azimuth[None, None, :]
        x = centre[:, 0, None, None] + r * torch.sin(azimuth)
        z = centre[:, 2, None, None] + r * torch.cos(azimuth)
        return torch.stack([x.expand_as(y), y, z.expand_as(y)], dim=-1).reshape(count, -1, 3)

    def _column_maximum(self, values: Tensor) -> Tensor:
        """(B, C) the largest of per-band-vertex `values` (B, N) in each curtain column, smoothed
        over neighbouring columns; empty columns take the overall largest."""
        count = values.shape[0]
        largest = torch.zeros(count, _CURTAIN_COLUMNS, device=values.device)
        largest = largest.scatter_reduce(1, self._band_column.expand(count, -1), values, reduce="amax")
        largest = torch.where(largest > 0, largest, largest.amax(dim=1, keepdim=True))
        padded = torch.cat([largest[:, :1], largest, largest[:, -1:]], dim=1)
        return (padded[:, :-2] + 2 * largest + padded[:, 2:]) / 4

    def _colours(self, styles: HairStyles) -> Tensor:
        """(B, Vh, 3) sRGB: the style's colour with streaks, tips of long hair a little lighter."""
        log_brightness = styles.streaks @ self._streak_features.T  # (B, Vh)
        tips = torch.cat(
            [
                torch.zeros(len(styles), len(self.shell_rows), device=log_brightness.device),
                0.25 * self._curtain_t.expand(len(styles), -1) ** 2,
            ],
            dim=1,
        )
        linear = styles.colour[:, None, :] * torch.exp(log_brightness + tips)[..., None]
        return linear_to_srgb(linear)


class TorsoModel:
    """Neck extension, shoulders and clothes below an ICT model's neck cut (module docstring)."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        loop = np.array(model.neck_boundary_loop, dtype=np.int64)
        if len(loop) < 3:
            raise ValueError("the ICT model's neck_boundary_loop has fewer than 3 vertices")
        slots, neighbours = _inward_neighbours(model, loop)
        self._arriving_slot = torch.as_tensor(slots, device=self.device)
        self._arriving_from = torch.as_tensor(neighbours, device=self.device)
        columns = len(loop) * _TORSO_COLUMNS_PER_EDGE
        self._columns = columns
        self.num_torso_vertices = (_TORSO_ROWS + 1) * columns
        # Row parameter along each column's curve: denser near the neck.
        self._t = torch.linspace(0.0, 1.0, _TORSO_ROWS + 1, device=self.device) ** 1.6

        # The clothes shell over the ICT neck and chest below _COLLAR_TOP; the cut is part of its outline.
        positions = model.neutral.astype(np.float64)
        skin_faces = _skin_faces(model)
        chosen = np.zeros(model.num_vertices, dtype=bool)
        skin_rows = np.unique(skin_faces)
        chosen[skin_rows] = positions[skin_rows, 1] < _COLLAR_TOP
        rows, shell_faces, normal_faces, rim = _skin_shell(skin_faces, chosen)
        on_loop = np.isin(rows, loop)
        if not on_loop.sum() == len(loop):
            raise ValueError("the ICT model's neck cut does not lie below the collar region")
        self._shell_rows = torch.as_tensor(rows, device=self.device)
        self._normal_faces = torch.as_tensor(normal_faces, device=self.device)
        self._hidden_rim = torch.as_tensor(rim & ~on_loop, device=self.device)
        self._free = torch.as_tensor(~on_loop, device=self.device).float()  # the cut stays on the skin
        local = np.full(model.num_vertices, -1, dtype=np.int64)
        local[rows] = np.arange(len(rows))
        self._loop_in_shell = torch.as_tensor(local[loop], device=self.device)
        neck_centre = positions[loop].mean(axis=0)
        self._neck_centre = torch.as_tensor(neck_centre, dtype=torch.float32, device=self.device)
        self._shell_azimuth = torch.as_tensor(
            np.arctan2(positions[rows, 0] - neck_centre[0], positions[rows, 2] - neck_centre[2]),
            dtype=torch.float32,
            device=self.device,
        )

        grid = np.arange(self.num_torso_vertices).reshape(_TORSO_ROWS + 1, columns)
        self._torso_faces = torch.as_tensor(_grid_faces(grid, closed=True), device=self.device)
        shell_faces = torch.as_tensor(shell_faces + self.num_torso_vertices, device=self.device)
        self.faces = torch.cat([self._torso_faces, shell_faces])
        self.num_vertices = self.num_torso_vertices + len(rows)
        self._num_head_vertices = model.num_vertices

    def sample_styles(self, count: int, generator: torch.Generator) -> TorsoStyles:
        """`count` random torsos and clothes (on CPU)."""
        if count < 0:
            raise ValueError(f"count must be non-negative, got {count}")
        g = generator

        def uniform(low: float, high: float, *shape: int) -> Tensor:
            return low + (high - low) * torch.rand((count, *shape), generator=g)

        turn = (torch.randn(count, generator=g) * math.radians(4)).clamp(-math.radians(8), math.radians(8))
        shape = torch.stack(
            [
                uniform(0.62, 0.85),
                uniform(0.36, 0.5),
                uniform(0.25, 0.55),
                uniform(2.5, 4.0),
                uniform(-0.06, 0.06),
                turn,
            ],
            dim=1,
        )
        kind = (
            torch.multinomial(torch.tensor(_NECKLINE_ODDS), count, replacement=True, generator=g)
            if count
            else torch.zeros(0, dtype=torch.long)
        )
        # Per neckline kind: front, side and back heights, front sharpness.
        low = torch.tensor(
            [
                [-0.62, -0.5, -0.45, 1.5],
                [-0.9, -0.5, -0.45, 3.0],
                [-0.95, -0.75, -0.6, 1.0],
                [-0.47, -0.42, -0.4, 1.0],
                [-0.95, -0.85, -0.8, 1.0],
            ]
        )
        high = torch.tensor(
            [
                [-0.55, -0.45, -0.4, 1.5],
                [-0.75, -0.45, -0.4, 4.0],
                [-0.75, -0.55, -0.45, 1.0],
                [-0.42, -0.4, -0.39, 1.0],
                [-0.85, -0.78, -0.7, 1.0],
            ]
        )
        heights = low[kind] + (high[kind] - low[kind]) * torch.rand(count, 4, generator=g)
        lift = torch.where(kind == _NECKLINES.index("turtleneck"), uniform(0.02, 0.04), uniform(0.003, 0.012))
        neckline = torch.cat([heights, lift[:, None]], dim=1)
        palette = torch.as_tensor(srgb_to_linear(np.array(_CLOTHES_SRGB) / 255.0), dtype=torch.float32)
        clothes = palette[torch.randint(0, len(_CLOTHES_SRGB), (count, 2), generator=g)]
        clothes = (clothes * torch.exp(0.2 * torch.randn(count, 2, 1, generator=g))).clamp(0.0, 1.0)
        no_jacket = torch.full((count,), _NO_JACKET)
        jacket = torch.where(torch.rand(count, generator=g) < 0.25, uniform(0.25, 0.7), no_jacket)
        return TorsoStyles(shape, neckline, clothes, jacket)

    def mesh(self, head_vertices: Tensor, styles: TorsoStyles, skin_colours: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Torsos of B heads: vertices (B, Vt, 3), faces (Ft, 3) long (shared), colours (B, Vt, 3) sRGB.

        The torso rows come first (`num_torso_vertices`), then the clothes shell over the ICT
        neck. `head_vertices` (B, V, 3) in the canonical frame (before pose); `skin_colours`
        (B, 3) sRGB in [0, 1], the neck's colour (e.g. the head's skin colour).
        """
        head_vertices = _check_heads(head_vertices, self._num_head_vertices)
        count, device = head_vertices.shape[0], head_vertices.device
        if len(styles) != count:
            raise ValueError(f"{len(styles)} torso styles for {count} heads")
        skin_colours = torch.as_tensor(skin_colours, dtype=torch.float32, device=device)
        if skin_colours.shape != (count, 3):
            raise ValueError(f"skin_colours must have shape ({count}, 3), got {tuple(skin_colours.shape)}")
        styles = styles.to(device)

        # The clothes shell: offset out by the clothes' thickness below the neckline, hidden above.
        skin = head_vertices[:, self._shell_rows]
        normals = vertex_normals(head_vertices, self._normal_faces)[:, self._shell_rows]
        clothed = self._clothed(skin[..., 1], self._shell_azimuth.expand(count, -1), styles)
        clothed = clothed * (~self._hidden_rim).float()
        lift = styles.neckline[:, 4, None]
        shell = skin + normals * ((-_HIDDEN_DEPTH + (lift + _HIDDEN_DEPTH) * clothed) * self._free)[..., None]

        # Ring 0: the neck cut (shared by skin and shell), with points added along each edge.
        loop = shell[:, self._loop_in_shell]  # (B, L, 3)
        following = torch.roll(loop, -1, dims=1)
        steps = torch.arange(_TORSO_COLUMNS_PER_EDGE, device=device, dtype=loop.dtype) / _TORSO_COLUMNS_PER_EDGE
        ring = self._along_edges(loop, steps)

        centre = ring.mean(dim=1)  # (B, 3)
        offset = ring - centre[:, None]
        turn = styles.shape[:, 5, None]
        azimuth = torch.atan2(offset[..., 0], offset[..., 2]) + turn
        half_width, half_depth, drop, exponent, lean = (styles.shape[:, k, None] for k in range(5))
        sin, cos = torch.sin(azimuth), torch.cos(azimuth)
        # Superellipse radius at this azimuth: |sin/a|^n + |cos/b|^n = r^-n.
        reach = ((sin.abs() / half_width) ** exponent + (cos.abs() / half_depth) ** exponent) ** (-1.0 / exponent)
        neck_reach = torch.linalg.vector_norm(offset[..., [0, 2]], dim=-1)
        edge_y = ring[..., 1] - 0.08 - drop * (reach - neck_reach).clamp_min(0.0)
        corner = torch.stack(
            [centre[:, None, 0] + reach * sin, edge_y, centre[:, None, 2] + reach * cos + lean], dim=-1
        )
        # Leaving the cut in the direction the skin arrives at it, out over the shoulder, then down.
        head_loop = head_vertices[:, self._shell_rows[self._loop_in_shell]]
        arriving = torch.nn.functional.normalize(
            head_loop[:, self._arriving_slot] - head_vertices[:, self._arriving_from], dim=-1
        )
        heading = torch.zeros_like(loop).index_add_(1, self._arriving_slot, arriving)
        along = torch.nn.functional.normalize(following - torch.roll(loop, 1, dims=1), dim=-1)
        heading = heading - along * (heading * along).sum(dim=-1, keepdim=True)  # across the cut only
        heading = torch.nn.functional.normalize(self._along_edges(heading, steps), dim=-1)
        span = torch.linalg.vector_norm(corner - ring, dim=-1, keepdim=True)
        leaving = ring + heading * 0.4 * span
        arriving_above = corner + torch.tensor([0.0, 1.0, 0.0], device=device) * 0.4 * span  # arrive going down
        bottom = torch.stack(
            [
                corner[..., 0] * 0.97 + centre[:, None, 0] * 0.03,
                torch.full_like(corner[..., 1], _TORSO_BOTTOM_Y),
                corner[..., 2],
            ],
            dim=-1,
        )
        t = self._t[None, :, None, None]  # (1, R+1, 1, 1)
        upper = _bezier(
            ring[:, None], leaving[:, None], arriving_above[:, None], corner[:, None], (t / 0.5).clamp(max=1.0)
        )
        lower = corner[:, None] + (bottom - corner)[:, None] * ((t - 0.5) / 0.5).clamp(min=0.0) ** 2
        surface = torch.where(t <= 0.5, upper, lower)  # (B, R+1, C, 3)

        # Clothes below the neckline, lifted off the body (not at ring 0, which is the shell's).
        torso_clothed = self._clothed(
            surface[..., 1], (azimuth - turn)[:, None].expand(-1, surface.shape[1], -1), styles
        )
        normals = vertex_normals(surface.reshape(count, -1, 3), self._torso_faces).view_as(surface)
        outward = torch.cat([offset[..., :1], torch.zeros_like(offset[..., 1:2]), offset[..., 2:]], dim=-1)
        normals = normals * torch.sign((normals * outward[:, None]).sum(dim=-1, keepdim=True) + 1e-9)
        lifted = torso_clothed * (self._t > 0).float()[None, :, None]
        surface = surface + normals * (lift[:, :, None] * lifted)[..., None]

        # Colours: skin above the neckline; the shirt, or an open jacket beside its front opening.
        from_front = torch.remainder(azimuth - turn + math.pi, 2 * math.pi) - math.pi  # (B, C)
        jacket = _smoothstep(-0.05, 0.05, from_front.abs() - styles.jacket[:, None])[:, None, :, None]
        shirt, over = styles.clothes[:, None, None, 0], styles.clothes[:, None, None, 1]
        cloth = linear_to_srgb(shirt + (over - shirt) * jacket)
        skin_srgb = skin_colours.clamp(0.0, 1.0)[:, None, None]
        torso_colours = skin_srgb + (cloth - skin_srgb) * torso_clothed[..., None]
        shell_jacket = _smoothstep(-0.05, 0.05, self._shell_azimuth.abs()[None] - styles.jacket[:, None])[..., None]
        shell_colours = linear_to_srgb(shirt[:, 0] + (over[:, 0] - shirt[:, 0]) * shell_jacket)
        vertices = torch.cat([surface.reshape(count, -1, 3), shell], dim=1)
        colours = torch.cat([torso_colours.reshape(count, -1, 3), shell_colours], dim=1)
        return vertices, self.faces, colours

    def _clothed(self, y: Tensor, azimuth: Tensor, styles: TorsoStyles) -> Tensor:
        """How clothed (0..1) points at heights `y` (B, ...) and azimuths round the neck (B, ...) are:
        1 below the style's neckline, 0 above it."""

        def per_style(k: int) -> Tensor:
            return styles.neckline[:, k].view(-1, *([1] * (y.ndim - 1)))

        front, side, back, sharpness = (per_style(k) for k in range(4))
        cos = torch.cos(azimuth)
        height = side + (front - side) * cos.clamp_min(0.0) ** sharpness + (back - side) * (-cos).clamp_min(0.0) ** 2
        return _smoothstep(0.03, -0.03, y - height)

    @staticmethod
    def _along_edges(loop: Tensor, steps: Tensor) -> Tensor:
        """(B, L * k, ...) values on a closed loop (B, L, ...) with k evenly spaced points per edge."""
        following = torch.roll(loop, -1, dims=1)
        shape = (1, 1, -1) + (1,) * (loop.ndim - 2)
        mixed = loop[:, :, None] + (following - loop)[:, :, None] * steps.view(shape)
        return mixed.reshape(loop.shape[0], -1, *loop.shape[2:])


def _skin_faces(model: ICTFaceModel) -> np.ndarray:
    """The triangles of the outer skin (parts face and head_and_neck)."""
    return np.concatenate([model.faces[model.part_faces("face")], model.faces[model.part_faces("head_and_neck")]])


def _skin_shell(skin_faces: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A shell over the skin triangles whose corners are all `chosen` (V,) bool: its head vertex
    rows (S,), its faces (re-indexed into the rows), the skin triangles touching it (for whole
    normals at its outline) and which of its vertices lie on its outline (S,) bool."""
    shell_faces = skin_faces[chosen[skin_faces].all(axis=1)]
    rows = np.unique(shell_faces)
    local = np.full(len(chosen), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    shell_faces = local[shell_faces]
    edges = np.sort(np.concatenate([shell_faces[:, [0, 1]], shell_faces[:, [1, 2]], shell_faces[:, [2, 0]]]), axis=1)
    unique_edges, counts = np.unique(edges, axis=0, return_counts=True)
    rim = np.zeros(len(rows), dtype=bool)
    rim[unique_edges[counts == 1].reshape(-1)] = True
    return rows, shell_faces, skin_faces[chosen[skin_faces].any(axis=1)], rim


def _inward_neighbours(model: ICTFaceModel, loop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The skin's edges arriving at the neck cut: (E,) loop positions and (E,) neighbour vertices
    off the cut, for every edge from a cut vertex to a vertex not on it."""
    faces = model.faces
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.unique(np.sort(edges, axis=1), axis=0)
    edges = np.concatenate([edges, edges[:, ::-1]])
    position = np.full(model.num_vertices, -1, dtype=np.int64)
    position[loop] = np.arange(len(loop))
    arriving = edges[(position[edges[:, 0]] >= 0) & (position[edges[:, 1]] < 0)]
    if len(np.unique(position[arriving[:, 0]])) != len(loop):
        raise ValueError("a vertex of the ICT neck cut has no skin edge arriving at it")
    return position[arriving[:, 0]], arriving[:, 1]


def _may_carry_hair(positions: np.ndarray, azimuth: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Which skin vertices (mean head) the hair shell covers: scalp, temples, sideburns, nape; not
    the face below the brows, nor the ears."""
    y, side = positions[:, 1], np.abs(azimuth)
    brow_top = landmarks[17:27, 1].max()
    front = side < math.radians(45)
    temple = (side >= math.radians(45)) & (side < _FACE_AZIMUTH)
    beside = (side >= _FACE_AZIMUTH) & (side < math.radians(100))
    back = side >= math.radians(100)
    carries = (front & (y > brow_top + _BROW_CLEARANCE)) | (temple & (y > brow_top - 0.03))
    carries |= (beside & (y > -0.02)) | (back & (y > -0.45))
    ear = _ear_box(positions, landmarks)
    return carries & ~ear


def _ear_box(positions: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Vertices of the ears plus a margin on the mean head: the box around the skin that sticks
    out sideways beyond the jaw, between the mouth's and the brows' height."""
    x, y, z = np.abs(positions[:, 0]), positions[:, 1], positions[:, 2]
    jaw_width = np.abs(landmarks[0:17, 0]).max()
    ear = (x > jaw_width + 0.025) & (y > landmarks[57, 1]) & (y < landmarks[19, 1])
    low, high = positions[ear].min(axis=0) - _EAR_MARGIN, positions[ear].max(axis=0) + _EAR_MARGIN
    return (x > jaw_width - 0.035) & (y > low[1]) & (y < high[1]) & (z > low[2]) & (z < high[2])


def _cosine_features(points: np.ndarray, count: int, shortest: float, longest: float, seed: int) -> np.ndarray:
    """(N, count) fixed smooth fields cos(k . p + phase) with wavelengths in [shortest, longest] units."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = np.exp(rng.uniform(np.log(shortest), np.log(longest), count))
    phases = rng.uniform(0, 2 * math.pi, count)
    return np.cos(points @ (directions * (2 * math.pi / wavelengths)[:, None]).T + phases)


def _streak_features(azimuth: np.ndarray, height: np.ndarray) -> np.ndarray:
    """(N, 12) fixed streak fields: fast round the head (6-30 cycles per radian), slow downwards."""
    rng = np.random.default_rng(23)
    around = rng.uniform(6.0, 30.0, _STREAK_FEATURES)  # cycles per radian of azimuth
    down = rng.uniform(0.5, 2.5, _STREAK_FEATURES)  # cycles per unit of height
    phases = rng.uniform(0, 2 * math.pi, _STREAK_FEATURES)
    return np.cos(2 * math.pi * (azimuth[:, None] * around + height[:, None] * down) + phases) / math.sqrt(
        _STREAK_FEATURES / 2
    )


def _grid_faces(grid: np.ndarray, closed: bool = False) -> np.ndarray:
    """Two triangles per cell of a (rows, columns) grid of vertex ids; `closed` joins the last column to the first."""
    right = np.roll(grid, -1, axis=1) if closed else grid[:, 1:]
    left = grid if closed else grid[:, :-1]
    a, b, c, d = left[:-1], right[:-1], left[1:], right[1:]
    return np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def _bezier(a: Tensor, b: Tensor, c: Tensor, d: Tensor, t: Tensor) -> Tensor:
    """The cubic Bezier curve a -> d with control points b, c at parameter t."""
    return (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d


def _smoothstep(edge0: float, edge1: float, x: Tensor) -> Tensor:
    t = ((x - edge0) / (edge1 - edge0)).clamp(0.0, 1.0)
    return t * t * (3 - 2 * t)


def _check_heads(head_vertices: Tensor, vertex_count: int) -> Tensor:
    head_vertices = torch.as_tensor(head_vertices)
    if head_vertices.ndim != 3 or head_vertices.shape[1:] != (vertex_count, 3) or not head_vertices.is_floating_point():
        raise ValueError(
            f"head_vertices must be a float tensor of shape (B, {vertex_count}, 3), "
            f"got {tuple(head_vertices.shape)} {head_vertices.dtype}"
        )
    return head_vertices.float()
