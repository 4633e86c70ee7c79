"""Several heads' meshes in one extraction: each grid level and the vertex colours of all heads in one query.

`extract_meshes` is `extract.extract_mesh_with_stats` for H fields at once, given as one
``sdf_fn(points [H, N, 3]) -> [H, N]`` (a `nphm.HeadField` bound to H heads answers that way):
the narrow band's levels go in step (`grid.narrow_band_grids`), every head's nodes of a level in
one call per chunk (the shorter lists padded, their answers unused), then marching cubes head by
head, then the colours of every head's vertices in one call per chunk. Each head's mesh is the
one it gets alone: its grid holds the values its own field gives at its own nodes. What that buys
is fewer, larger decoder calls: worth it where a call costs more than its points (a GPU), not on
the CPU, where the decoder already splits points into passes (`docs/RESULTS.md` has both).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import trimesh
from torch import Tensor

from diffnphr.frame import BOX_MAX, BOX_MIN
from diffnphr.mesh.grid import (
    DEFAULT_CHUNK_SIZE,
    Box,
    check_settings,
    checked_box,
    dense_grids,
    expected_queries,
    narrow_band_grids,
)
from diffnphr.mesh.marching import NoSurfaceError, close_grid, grid_mesh

BatchSdfFn = Callable[[Tensor], Tensor]  # points [H, N, 3] -> [H, N]
BatchColorFn = Callable[[Tensor], Tensor]  # points [H, N, 3] -> [H, N, 3] in [0, 1]
ProgressFn = Callable[[str, float], None]


@dataclass(frozen=True)
class BatchExtraction:
    """H meshes and what they cost: SDF queries per head (padding left out), seconds of the whole batch per stage."""

    meshes: list[trimesh.Trimesh]
    num_sdf_queries: list[int]
    seconds_sdf: float
    seconds_mcubes: float
    seconds_color: float


class HeadSurfaceError(NoSurfaceError):
    """One head of a batch has no surface in the box: `head` is its index in the batch, `reason` the sentence why."""

    def __init__(self, head: int, heads: int, reason: str) -> None:
        super().__init__(f"Head {head + 1} of {heads}: {reason}")
        self.head, self.reason = head, reason


def extract_meshes(
    sdf_fn: BatchSdfFn,
    heads: int,
    *,
    resolution: int = 256,
    bbox: Box = (BOX_MIN, BOX_MAX),
    method: str = "narrow_band",
    color_fn: BatchColorFn | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    device: torch.device | str | None = None,
    coarse_resolution: int | None = None,
    keep_largest_component: bool = False,
    close_at_box: bool = True,
    progress: ProgressFn | None = None,
) -> BatchExtraction:
    """The meshes of `heads` fields, each the one `extract_mesh_with_stats` gives for that field alone.

    Options as for `extract_mesh_with_stats`; `chunk_size` bounds the points of one call over
    all heads (each head's share is `chunk_size / heads`). A head without a surface raises
    `HeadSurfaceError` naming it (its `head`). `progress` follows the batch as a whole.
    """
    box_min, box_max = checked_box(bbox)
    check_settings(resolution, method, chunk_size, coarse_resolution)
    if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"heads must be a whole number of at least 1; got {heads!r}.")
    resolution, chunk_size = int(resolution), int(chunk_size)
    device = torch.device(device) if device is not None else torch.get_default_device()
    spacing = (box_max - box_min) / (resolution - 1)
    if progress is not None:
        sdf_fn = _counting(sdf_fn, heads * expected_queries(resolution, method), progress)

    start = time.perf_counter()
    with torch.inference_mode():
        if method == "dense":
            grids, queries = dense_grids(sdf_fn, heads, box_min, spacing, resolution, chunk_size, device)
        else:
            coarse = max(2, resolution // 8 if coarse_resolution is None else int(coarse_resolution))
            grids, queries = narrow_band_grids(sdf_fn, heads, box_min, spacing, resolution, coarse, chunk_size, device)
        grids = grids[:, :resolution, :resolution, :resolution]
        inside = [close_grid(grid, close_at_box) for grid in grids]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds_sdf = time.perf_counter() - start

    start = time.perf_counter()
    meshes = []
    for head, (grid, inside_everywhere) in enumerate(zip(grids, inside)):
        try:
            meshes.append(grid_mesh(grid, inside_everywhere, (box_min, box_max), spacing, keep_largest_component))
        except NoSurfaceError as error:
            raise HeadSurfaceError(head, heads, str(error)) from error
    seconds_mcubes = time.perf_counter() - start
    if progress is not None:
        progress("extraction", 1.0)

    start = time.perf_counter()
    if color_fn is not None:
        with torch.inference_mode():
            colours = batch_vertex_colors(color_fn, [mesh.vertices for mesh in meshes], chunk_size, device, progress)
        for mesh, rgba in zip(meshes, colours):
            mesh.visual.vertex_colors = rgba
    seconds_color = time.perf_counter() - start
    return BatchExtraction(meshes, queries, seconds_sdf, seconds_mcubes, seconds_color)


def batch_vertex_colors(
    color_fn: BatchColorFn,
    vertices: Sequence[np.ndarray],
    chunk_size: int,
    device: torch.device,
    progress: ProgressFn | None = None,
) -> list[np.ndarray]:
    """Every head's vertex colours in calls of [H, n, 3] (shorter heads padded with their first vertex), as uint8
    RGBA (alpha 255) per head."""
    heads, longest = len(vertices), max(len(points) for points in vertices)
    points = torch.zeros((heads, longest, 3), dtype=torch.float32, device=device)
    for head, part in enumerate(vertices):
        points[head, : len(part)] = torch.as_tensor(part, dtype=torch.float32, device=device)
        points[head, len(part) :] = points[head, 0]
    step = max(1, -(-chunk_size // heads))
    rgb = torch.empty((heads, longest, 3), dtype=torch.float32, device=device)
    for begin in range(0, longest, step):
        if progress is not None:
            progress("colour", begin / longest)
        chunk = points[:, begin : begin + step]
        answer = color_fn(chunk)
        if tuple(answer.shape) != tuple(chunk.shape):
            raise ValueError(
                f"color_fn returned shape {tuple(answer.shape)} for {tuple(chunk.shape)} points; "
                f"expected {tuple(chunk.shape)}."
            )
        rgb[:, begin : begin + chunk.shape[1]] = answer.float()
    colours = []
    for head, part in enumerate(vertices):
        head_rgb = rgb[head, : len(part)]
        if not torch.isfinite(head_rgb).all():
            raise ValueError("color_fn returned NaN or infinite values: the decoder is broken.")
        rgba = np.full((len(part), 4), 255, dtype=np.uint8)
        rgba[:, :3] = (head_rgb.clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).cpu().numpy()
        colours.append(rgba)
    return colours


def _counting(sdf_fn: BatchSdfFn, expected: int, progress: ProgressFn) -> BatchSdfFn:
    """`sdf_fn`, reporting after each call the share of the expected queries answered (kept under 0.95)."""
    answered = 0

    def counted(points: Tensor) -> Tensor:
        nonlocal answered
        values = sdf_fn(points)
        answered += points.shape[0] * points.shape[1]
        progress("extraction", min(0.95, 0.95 * answered / expected))
        return values

    return counted
