"""Procedural torso meshes (neck, shoulders, clothes), rasterised together with an ICT head in training renders.

ICT heads are busts cut at the neck; photos show a neck and shoulders. Like the hair, the torso
is B meshes of one fixed topology built from the B heads' vertices in the canonical frame.

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
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.colour import linear_to_srgb, srgb_to_linear
from diffnphr.data.fields import smoothstep
from diffnphr.data.skin_shell import HIDDEN_DEPTH, check_heads, grid_faces, outer_skin_faces, skin_shell
from diffnphr.render import vertex_normals

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

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
        skin_faces = outer_skin_faces(model)
        chosen = np.zeros(model.num_vertices, dtype=bool)
        skin_rows = np.unique(skin_faces)
        chosen[skin_rows] = positions[skin_rows, 1] < _COLLAR_TOP
        rows, shell_faces, normal_faces, rim = skin_shell(skin_faces, chosen)
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
        self._torso_faces = torch.as_tensor(grid_faces(grid, closed=True), device=self.device)
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
        head_vertices = check_heads(head_vertices, self._num_head_vertices)
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
        shell = skin + normals * ((-HIDDEN_DEPTH + (lift + HIDDEN_DEPTH) * clothed) * self._free)[..., None]

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
        jacket = smoothstep(-0.05, 0.05, from_front.abs() - styles.jacket[:, None])[:, None, :, None]
        shirt, over = styles.clothes[:, None, None, 0], styles.clothes[:, None, None, 1]
        cloth = linear_to_srgb(shirt + (over - shirt) * jacket)
        skin_srgb = skin_colours.clamp(0.0, 1.0)[:, None, None]
        torso_colours = skin_srgb + (cloth - skin_srgb) * torso_clothed[..., None]
        shell_jacket = smoothstep(-0.05, 0.05, self._shell_azimuth.abs()[None] - styles.jacket[:, None])[..., None]
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
        return smoothstep(0.03, -0.03, y - height)

    @staticmethod
    def _along_edges(loop: Tensor, steps: Tensor) -> Tensor:
        """(B, L * k, ...) values on a closed loop (B, L, ...) with k evenly spaced points per edge."""
        following = torch.roll(loop, -1, dims=1)
        shape = (1, 1, -1) + (1,) * (loop.ndim - 2)
        mixed = loop[:, :, None] + (following - loop)[:, :, None] * steps.view(shape)
        return mixed.reshape(loop.shape[0], -1, *loop.shape[2:])


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


def _bezier(a: Tensor, b: Tensor, c: Tensor, d: Tensor, t: Tensor) -> Tensor:
    """The cubic Bezier curve a -> d with control points b, c at parameter t."""
    return (1 - t) ** 3 * a + 3 * (1 - t) ** 2 * t * b + 3 * (1 - t) * t**2 * c + t**3 * d
