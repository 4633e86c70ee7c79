"""Procedural hair meshes, rasterised together with an ICT head in training renders.

Procedural hair and torso meshes, rasterised together with an ICT head in training renders.

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
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.appearance import HAIR_SRGB, linear_to_srgb, srgb_to_linear
from diffnphr.data.skin_shell import HIDDEN_DEPTH, check_heads, grid_faces, outer_skin_faces, skin_shell, smoothstep
from diffnphr.frame import CM_PER_UNIT
from diffnphr.render import vertex_normals

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

# Fixed landmarks of the mean head (canonical units), where hair may grow and where it must not.
_AZIMUTH_CENTRE_Z = -0.3  # the ears' depth: azimuth 0 faces the nose, +-pi the back of the head
_BROW_CLEARANCE = 0.01  # the shell starts this far above the highest brow landmark at the front
_FACE_AZIMUTH = math.radians(62)  # the face (brows to chin) lies within this azimuth
_EAR_MARGIN = 0.03  # ears plus this margin carry no hair shell
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


class HairModel:
    """Hair shell and long-hair curtain of one fixed topology over an ICT model's heads (module docstring)."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        positions = model.neutral.astype(np.float64)
        landmarks = positions[model.landmarks_68]
        skin_faces = outer_skin_faces(model)
        skin_rows = np.unique(skin_faces)
        azimuth_all = np.arctan2(positions[:, 0], positions[:, 2] - _AZIMUTH_CENTRE_Z)
        carries = np.zeros(model.num_vertices, dtype=bool)
        carries[skin_rows] = _may_carry_hair(positions[skin_rows], azimuth_all[skin_rows], landmarks)

        rows, shell_faces, normal_faces, rim = skin_shell(skin_faces, carries)
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
        curtain_faces = grid_faces(grid) + len(rows)
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
        thickness = torch.where(balding, thickness_cm.clamp(max=0.8), thickness_cm) / CM_PER_UNIT  # short at the sides
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
        head_vertices = check_heads(head_vertices, self._num_head_vertices)
        count = head_vertices.shape[0]
        if len(styles) != count:
            raise ValueError(f"{len(styles)} hair styles for {count} heads")
        styles = styles.to(head_vertices.device)
        normals = vertex_normals(head_vertices, self._normal_faces)[:, self.shell_rows]
        skin = head_vertices[:, self.shell_rows]

        presence, above = self._presence(styles)
        lumps = 1.0 + (styles.lumps @ self._lump_features.T)  # (B, Vs)
        thickness = styles.thickness[:, None] * lumps.clamp(0.6, 1.4) * (0.25 + 0.75 * above)
        offset = -HIDDEN_DEPTH + (thickness + HIDDEN_DEPTH) * presence
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
        presence = smoothstep(-0.035, 0.035, rise) * smoothstep(0.03, -0.03, self._shell_y - styles.bald_top[:, None])
        presence = presence * (~self._rim).float()
        return presence, smoothstep(0.0, 0.25, rise)

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
        spread = smoothstep(_CURTAIN_TOP, _CURTAIN_FULL, y)
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
