"""Signed distance field -> coloured triangle mesh: the extraction the pipeline runs.

Conventions (MonoNPHM's, see DESIGN.md):

* the SDF is **negative inside, positive outside**; PyMCubes orients triangles outwards when
  the inside is the larger value, so marching cubes runs on ``-sdf`` at level 0, exactly as
  MonoNPHM's ``mesh_from_logits`` does, and the faces of the result point outwards;
* ``resolution`` is the number of samples per axis with both box faces included (``linspace``),
  so voxels are ``(BOX_MAX - BOX_MIN) / (resolution - 1)`` and need not be cubes;
* the canonical frame has +y up and +z forward (the nose), which is glTF's own frame (+Y up,
  the front of an asset faces +Z): meshes are exported without any rotation.

The default ``narrow_band`` method evaluates a coarse grid, then halves the grid step level by
level, evaluating only the nodes the level before puts near the surface and following the
surface where it leaves them; see
:func:`extract_mesh_with_stats` for the rule and why it gives the dense mesh.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from diffnphr.frame import BOX_MAX, BOX_MIN
from diffnphr.mesh.grid import (
    DEFAULT_CHUNK_SIZE,
    METHODS,
    Box,
    check_settings,
    checked_box,
    dense_grid,
    expected_queries,
    narrow_band_grid,
)
from diffnphr.mesh.marching import NoSurfaceError, close_grid, grid_mesh

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "METHODS",
    "MeshExtraction",
    "NoSurfaceError",
    "expected_queries",
    "extract_mesh",
    "extract_mesh_with_stats",
    "vertex_colors",
]


SdfFn = Callable[[Tensor], Tensor]
ColorFn = Callable[[Tensor], Tensor]
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class MeshExtraction:
    """A mesh and what it cost: SDF queries and seconds spent per stage.

    ``seconds_sdf`` covers the grid stage (SDF queries and narrow-band bookkeeping),
    ``seconds_mcubes`` marching cubes and clean-up, ``seconds_color`` the colour queries.
    """

    mesh: trimesh.Trimesh
    num_sdf_queries: int
    seconds_sdf: float
    seconds_mcubes: float
    seconds_color: float


def extract_mesh(
    sdf_fn: SdfFn,
    *,
    resolution: int = 256,
    bbox: Box = (BOX_MIN, BOX_MAX),
    method: str = "narrow_band",
    color_fn: ColorFn | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
    coarse_resolution: int | None = None,
    keep_largest_component: bool = False,
    close_at_box: bool = True,
) -> trimesh.Trimesh:
    """Return the surface ``sdf_fn = 0`` inside ``bbox`` as a mesh (``extract_mesh_with_stats``)."""
    return extract_mesh_with_stats(
        sdf_fn,
        resolution=resolution,
        bbox=bbox,
        method=method,
        color_fn=color_fn,
        chunk_size=chunk_size,
        device=device,
        coarse_resolution=coarse_resolution,
        keep_largest_component=keep_largest_component,
        close_at_box=close_at_box,
    ).mesh


def extract_mesh_with_stats(
    sdf_fn: SdfFn,
    *,
    resolution: int = 256,
    bbox: Box = (BOX_MIN, BOX_MAX),
    method: str = "narrow_band",
    color_fn: ColorFn | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
    coarse_resolution: int | None = None,
    keep_largest_component: bool = False,
    close_at_box: bool = True,
    progress: ProgressFn | None = None,
) -> MeshExtraction:
    """Extract the surface ``sdf_fn = 0`` inside ``bbox`` with outward faces, and report the cost.

    ``sdf_fn(points[N, 3]) -> [N]`` is negative inside and positive outside; it is called under
    ``torch.inference_mode`` on chunks of at most ``chunk_size`` points created on ``device``
    (``None``: torch's default device). ``color_fn(points[N, 3]) -> [N, 3]`` in [0, 1] (a
    MonoNPHM colour in [-1, 1] is ``(c + 1) / 2``) is called at the final vertices only, and
    the result becomes uint8 RGBA vertex colours.

    ``method="dense"`` evaluates every grid node: the reference. ``"narrow_band"`` (default)
    evaluates a grid of at least ``coarse_resolution`` samples per axis (default
    ``resolution // 8``), then halves the step until it reaches the full grid; at each level it
    interpolates the values it has (trilinearly) at the next level's nodes and evaluates those
    the interpolation puts within one of that level's cell diagonals of zero (0.7 at the last
    level); other nodes take the interpolation's sign. After each level, any cell that changes
    sign while some of its corners are not evaluated gets them evaluated, until none is left:
    the band follows the surface wherever it leaves it, so every connected part of the surface
    the band touches is meshed from exact values, and the mesh equals the dense one except for
    separate parts thin enough to hide between the nodes of the level before. (For a
    1-Lipschitz SDF, a node's value differs from the interpolation by at most its distance to
    the corners interpolated, one cell diagonal.) It costs about 2.4 queries per vertex of a
    head (120k at 128³). The grid may reach a few nodes past the box's max faces.

    Marching cubes is PyMCubes at level 0, run only on the blocks of 16³ cells that hold a
    face; duplicate vertices are merged and degenerate faces dropped.
    ``keep_largest_component`` (default off, as in MonoNPHM) keeps only the connected part with
    the most faces, e.g. to drop floating blobs. ``close_at_box`` (default on) closes the surface
    where it leaves the box (the neck at the floor) with a flat cap on the box face, so a head's
    mesh is watertight; off, the cut stays open (the evaluation compares the open surfaces above
    the floor). Raises ``ValueError`` when the box holds no
    surface. ``progress(stage, fraction)`` follows the work: ``"extraction"`` as SDF queries are
    answered (against `expected_queries`) and marching cubes ends, then ``"colour"`` by chunk.
    """
    box_min, box_max = checked_box(bbox)
    check_settings(resolution, method, chunk_size, coarse_resolution)
    resolution, chunk_size = int(resolution), int(chunk_size)
    device = torch.device(device) if device is not None else torch.get_default_device()
    spacing = (box_max - box_min) / (resolution - 1)

    if progress is not None:
        sdf_fn = _counting(sdf_fn, expected_queries(resolution, method), progress)
    start = time.perf_counter()
    with torch.inference_mode():
        if method == "dense":
            grid, num_queries = dense_grid(sdf_fn, box_min, spacing, resolution, chunk_size, device)
        else:
            coarse = resolution // 8 if coarse_resolution is None else int(coarse_resolution)
            grid, num_queries = narrow_band_grid(
                sdf_fn, box_min, spacing, resolution, max(2, coarse), chunk_size, device
            )
        grid = grid[:resolution, :resolution, :resolution]
        inside_everywhere = close_grid(grid, close_at_box)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds_sdf = time.perf_counter() - start

    start = time.perf_counter()
    mesh = grid_mesh(grid, inside_everywhere, (box_min, box_max), spacing, keep_largest_component)
    seconds_mcubes = time.perf_counter() - start
    if progress is not None:
        progress("extraction", 1.0)

    start = time.perf_counter()
    if color_fn is not None:
        with torch.inference_mode():
            colors = vertex_colors(color_fn, mesh.vertices, chunk_size, device, progress)
        mesh.visual.vertex_colors = colors
    seconds_color = time.perf_counter() - start
    return MeshExtraction(mesh, num_queries, seconds_sdf, seconds_mcubes, seconds_color)


def _counting(sdf_fn: SdfFn, expected: int, progress: ProgressFn) -> SdfFn:
    """`sdf_fn`, reporting after each call the share of the expected queries answered (kept under 0.95)."""
    answered = 0

    def counted(points: Tensor) -> Tensor:
        nonlocal answered
        values = sdf_fn(points)
        answered += len(points)
        progress("extraction", min(0.95, 0.95 * answered / expected))
        return values

    return counted


def vertex_colors(
    color_fn: ColorFn, vertices: np.ndarray, chunk_size: int, device: torch.device, progress: ProgressFn | None
) -> np.ndarray:
    """Query ``color_fn`` at the vertices in chunks; return uint8 RGBA (alpha 255)."""
    points = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    chunks = []
    for chunk in points.split(chunk_size):
        if progress is not None:
            progress("colour", sum(len(done) for done in chunks) / len(points))
        rgb = color_fn(chunk)
        if tuple(rgb.shape) != (len(chunk), 3):
            raise ValueError(
                f"color_fn returned shape {tuple(rgb.shape)} for {len(chunk)} points; expected ({len(chunk)}, 3)."
            )
        chunks.append(rgb.float())
    rgb = torch.cat(chunks)
    if not torch.isfinite(rgb).all():
        raise ValueError("color_fn returned NaN or infinite values: the decoder is broken.")
    rgba = np.full((len(vertices), 4), 255, dtype=np.uint8)
    rgba[:, :3] = (rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
    return rgba
