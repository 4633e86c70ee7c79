"""A small z-buffer rasteriser of vertex-coloured triangle meshes, for looking at heads.

Orthographic view from +z (the canonical frame's front) after turning the mesh by `yaw_deg`
about the vertical axis through `center`; Lambertian shading with one directional light from
the camera's upper left plus an ambient term; colours and normals are interpolated per pixel
(barycentric), lighting is two-sided so open surfaces (a mesh cut by the box floor) shade
alike from either side. Vectorised in torch: every (triangle, pixel of its bounding box) pair
is tested at once, in chunks of bounded size, and the nearest hit per pixel wins through
`scatter_reduce`. `rasterise` itself takes B meshes of one topology at once (any camera: it
sees pixel coordinates and a depth), which is what the training renders of
`diffnphr.data.renders` run on; `render_mesh` is its one-image, orthographic use for previews.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from diffnphr.frame import BOX_CENTRE

# The canonical extraction box fits a 1.4-unit square around its centre (`frame.BOX_CENTRE`).
HEAD_HALF_EXTENT = 0.7
LIGHT_DIRECTION = (-0.4, 0.5, 1.0)  # in view space: from the upper left, in front
AMBIENT = 0.25
_PAIRS_PER_CHUNK = 1 << 22


def render_mesh(
    vertices: Tensor | np.ndarray,
    faces: Tensor | np.ndarray,
    colours: Tensor | np.ndarray | None = None,
    *,
    yaw_deg: float = 0.0,
    size: int = 512,
    center: Sequence[float] = BOX_CENTRE,
    half_extent: float = HEAD_HALF_EXTENT,
    background: Sequence[int] = (255, 255, 255),
) -> np.ndarray:
    """Shaded image (size, size, 3) uint8 of a mesh seen from the front, turned by `yaw_deg`.

    `vertices` (V, 3) in the canonical frame (+y up, +z towards the viewer), `faces` (F, 3)
    vertex indices, `colours` (V, 3) or (V, 4) per-vertex colours in [0, 1] (floats) or
    0..255 (uint8; alpha ignored), grey when None. The square view spans `center` ±
    `half_extent` in x and y (default: the canonical head box), so two heads rendered with
    the same settings line up pixel for pixel. Positive yaw turns the nose towards the
    image's right (the subject's right cheek comes into view). Runs on the vertices' device.
    """
    vertices = torch.as_tensor(vertices)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or not vertices.is_floating_point():
        raise ValueError(
            f"vertices must be a float array of shape (V, 3), got {tuple(vertices.shape)} {vertices.dtype}"
        )
    device = vertices.device
    faces = torch.as_tensor(faces, device=device)
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.is_floating_point():
        raise ValueError(f"faces must be an integer array of shape (F, 3), got {tuple(faces.shape)} {faces.dtype}")
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(f"faces index vertices outside 0..{len(vertices) - 1}")
    if int(size) < 2 or not half_extent > 0:
        raise ValueError(f"size must be at least 2 pixels and half_extent positive; got {size}, {half_extent}")
    size = int(size)
    rgb = _vertex_rgb(colours, len(vertices), device)

    # View space: turn about the vertical axis through the centre, then map x, y to pixels.
    centre = torch.as_tensor(center, dtype=torch.float32, device=device)
    angle = math.radians(yaw_deg)
    cos, sin = math.cos(angle), math.sin(angle)
    rotation = torch.tensor([[cos, 0.0, sin], [0.0, 1.0, 0.0], [-sin, 0.0, cos]], device=device)
    view = (vertices.float() - centre) @ rotation.T
    pixel_per_unit = size / (2.0 * half_extent)
    screen = torch.stack([view[:, 0] * pixel_per_unit + size / 2, size / 2 - view[:, 1] * pixel_per_unit], dim=1)
    normals = vertex_normals(view, faces.long())

    image = torch.tensor(background, dtype=torch.float32, device=device).expand(size * size, 3).clone()
    if len(faces) == 0:
        return image.view(size, size, 3).round().to(torch.uint8).cpu().numpy()
    triangle, weights = rasterise(screen[None], view[None, :, 2], faces.long(), size)
    triangle, weights = triangle[0], weights[0]
    hit = triangle >= 0
    corners = faces.long()[triangle[hit]]  # (H, 3)
    w = weights[hit]  # (H, 3)
    normal = torch.nn.functional.normalize((normals[corners] * w[..., None]).sum(dim=1), dim=1)
    colour = (rgb[corners] * w[..., None]).sum(dim=1)
    light = torch.nn.functional.normalize(torch.tensor(LIGHT_DIRECTION, device=device), dim=0)
    lambert = (normal @ light).abs()  # two-sided
    image[hit] = (colour * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]).clamp(0, 1) * 255
    return image.view(size, size, 3).round().to(torch.uint8).cpu().numpy()


def _vertex_rgb(colours: Tensor | np.ndarray | None, count: int, device: torch.device) -> Tensor:
    if colours is None:
        return torch.full((count, 3), 0.8, device=device)
    colours = torch.as_tensor(colours, device=device)
    if colours.ndim != 2 or colours.shape[0] != count or colours.shape[1] not in (3, 4):
        raise ValueError(f"colours must have shape ({count}, 3) or ({count}, 4), got {tuple(colours.shape)}")
    rgb = colours[:, :3].float()
    return rgb / 255.0 if not colours.is_floating_point() else rgb.clamp(0, 1)


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """(..., V, 3) unit area-weighted vertex normals of meshes (..., V, 3) sharing `faces` (F, 3),
    for shading; the batch dimensions are optional."""
    corners = vertices[..., faces, :]  # (..., F, 3, 3)
    face_normals = torch.linalg.cross(corners[..., 1, :] - corners[..., 0, :], corners[..., 2, :] - corners[..., 0, :])
    normals = torch.zeros_like(vertices).index_add_(-2, faces.reshape(-1), face_normals.repeat_interleave(3, dim=-2))
    return torch.nn.functional.normalize(normals, dim=-1)


def rasterise(screen: Tensor, depth: Tensor, faces: Tensor, size: int) -> tuple[Tensor, Tensor]:
    """The nearest triangle at every pixel centre of B images, and its barycentric weights.

    `screen` (B, V, 2) pixel coordinates of B meshes that share `faces` (F, 3) (x to the right,
    y down; pixel (row, col) is sampled at its centre (col + ½, row + ½)), `depth` (B, V) a
    value that is larger nearer the viewer and interpolates linearly on screen (orthographic z,
    or inverse distance under perspective). Returns `triangle` (B, size²) long, the face row
    covering each pixel or -1, and `weights` (B, size², 3) (zeros where nothing is drawn).
    Both windings are drawn, so open or inconsistently wound surfaces show from either side.
    """
    if screen.ndim != 3 or screen.shape[-1] != 2 or depth.shape != screen.shape[:2]:
        raise ValueError(
            f"screen must be (B, V, 2) and depth (B, V); got {tuple(screen.shape)} and {tuple(depth.shape)}"
        )
    device = screen.device
    batch, face_count, pixels = screen.shape[0], len(faces), size * size
    corners = screen[:, faces].reshape(batch * face_count, 3, 2)
    low = (corners.amin(dim=1) - 0.5).ceil().clamp(0, size).long()
    high = (corners.amax(dim=1) - 0.5).floor().clamp(-1, size - 1).long()
    extent = (high - low + 1).clamp(min=0)  # (B·F, 2) pixel columns and rows of each bounding box
    area = extent[:, 0] * extent[:, 1]
    # One integer key per (triangle, pixel) hit: quantised depth above the face row, so a single
    # scatter max keeps the nearest triangle (ties go to the higher row, one triangle per pixel).
    face_bits = max(1, (face_count - 1).bit_length())
    depth = depth.float()
    lowest = depth.amin(dim=1, keepdim=True)
    scale = (2.0 ** (62 - face_bits) - 1) / (depth.amax(dim=1, keepdim=True) - lowest).clamp_min(1e-12)
    corner_keys = ((depth - lowest) * scale)[:, faces].reshape(batch * face_count, 3)
    best = torch.full((batch * pixels,), -1, dtype=torch.long, device=device)
    candidates = torch.nonzero(area > 0).squeeze(1)
    cumulative = area[candidates].cumsum(0)
    chunk_pairs = _PAIRS_PER_CHUNK * (4 if device.type == "cuda" else 1)
    start = 0
    while start < len(candidates):
        base = int(cumulative[start - 1]) if start else 0
        stop = max(int(torch.searchsorted(cumulative, base + chunk_pairs, right=True)), start + 1)
        chunk = candidates[start:stop]
        counts = area[chunk]
        pair_triangle = chunk.repeat_interleave(counts, output_size=int(cumulative[stop - 1]) - base)
        offset = torch.arange(len(pair_triangle), device=device) - (counts.cumsum(0) - counts).repeat_interleave(
            counts, output_size=len(pair_triangle)
        )
        width = extent[pair_triangle, 0]
        cols = low[pair_triangle, 0] + offset % width
        rows = low[pair_triangle, 1] + offset // width
        weights = _barycentric(corners[pair_triangle], cols, rows)
        inside = torch.nonzero((weights >= 0).all(dim=1)).squeeze(1)
        pair_triangle, weights = pair_triangle[inside], weights[inside]
        key = (weights * corner_keys[pair_triangle]).sum(dim=1).long() << face_bits | pair_triangle % face_count
        pixel = pair_triangle // face_count * pixels + rows[inside] * size + cols[inside]
        best.scatter_reduce_(0, pixel, key, reduce="amax")
        start = stop
    triangle = torch.where(best >= 0, best & ((1 << face_bits) - 1), -1)
    weights = torch.zeros(batch * pixels, 3, device=device)
    drawn = torch.nonzero(best >= 0).squeeze(1)
    image, pixel = drawn // pixels, drawn % pixels
    weights[drawn] = _barycentric(corners[image * face_count + triangle[drawn]], pixel % size, pixel // size).clamp_min(
        0
    )
    return triangle.view(batch, pixels), weights.view(batch, pixels, 3)


def _barycentric(corners: Tensor, cols: Tensor, rows: Tensor) -> Tensor:
    """(N, 3) barycentric weights of pixel centres (cols, rows) in triangles (N, 3, 2); any
    negative weight means outside, and so does a degenerate triangle (weights are NaN-free -1)."""
    point = torch.stack([cols + 0.5, rows + 0.5], dim=1)
    a, b, c = corners.unbind(dim=1)
    double_area = _edge(a, b, c)
    weights = torch.stack([_edge(b, c, point), _edge(c, a, point), _edge(a, b, point)], dim=1)
    degenerate = double_area.abs() <= 1e-12
    return torch.where(degenerate[:, None], -1.0, weights / torch.where(degenerate, 1.0, double_area)[:, None])


def _edge(a: Tensor, b: Tensor, p: Tensor) -> Tensor:
    """Twice the signed area of (a, b, p); weights from it are positive inside for either winding
    once divided by the triangle's own signed area."""
    return (b[:, 0] - a[:, 0]) * (p[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (p[:, 0] - a[:, 0])
