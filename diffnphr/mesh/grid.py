"""The SDF on the extraction grid: every node (dense), or a coarse grid refined only near the surface (narrow band).

The narrow band evaluates a coarse grid, then halves the grid step level by level, evaluating
only the nodes that the level before, interpolated, puts near the surface, and following the
surface where it leaves them (`extract.extract_mesh_with_stats` gives the rule and why it equals the dense grid's mesh).
Nodes it never evaluates hold `FILL_MAGNITUDE` with the right sign.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import Tensor

SdfFn = Callable[[Tensor], Tensor]
# Stand-in magnitude for grid nodes the narrow band never evaluates: only its sign is ever
# read, since marching cubes interpolates along sign-changing edges alone.
_FILL_MAGNITUDE = 1.0e3
# A node of the next level is evaluated when the current level's values, interpolated there,
# put it within this many of that level's cell diagonals of zero; the last level, interpolated
# from the closest values, gets the narrower band. Following the surface completes the rest.
# (At 128³ on a trained head: 120k queries for the dense mesh, where a band of the cells that
# change sign at the level before took 186k.)
_BAND_DIAGONALS = 1.0
_LAST_BAND_DIAGONALS = 0.7


def grid_axes(box_min: np.ndarray, spacing: np.ndarray, size: int, device: torch.device) -> list[Tensor]:
    """Node coordinates along x, y, z: ``box_min + i * spacing`` for i < size, for every method."""
    index = np.arange(size, dtype=np.float64)
    return [
        torch.as_tensor(lo + index * step, dtype=torch.float32, device=device) for lo, step in zip(box_min, spacing)
    ]


def dense_grid(
    sdf_fn: SdfFn,
    box_min: np.ndarray,
    spacing: np.ndarray,
    resolution: int,
    chunk_size: int,
    device: torch.device,
) -> tuple[Tensor, int]:
    """Evaluate the SDF at every node: the reference grid, shaped (R, R, R) with x slowest."""
    axes = grid_axes(box_min, spacing, resolution, device)
    total = resolution**3
    chunks = (
        torch.arange(begin, min(begin + chunk_size, total), device=device) for begin in range(0, total, chunk_size)
    )
    values = _sdf_at_nodes(sdf_fn, axes, chunks, total)
    return values.view(resolution, resolution, resolution), total


def narrow_band_grid(
    sdf_fn: SdfFn,
    box_min: np.ndarray,
    spacing: np.ndarray,
    resolution: int,
    coarse_resolution: int,
    chunk_size: int,
    device: torch.device,
) -> tuple[Tensor, int]:
    """Evaluate the SDF coarse to fine near its zero level only; other nodes hold a signed stand-in.

    The grid is padded past the box's max faces to ``step * k + 1`` nodes per axis, so that
    every level is a strided view of it; the caller crops it back to ``resolution``.
    """
    ratio = (resolution - 1) / max(1, coarse_resolution - 1)
    step = 2 ** max(0, math.floor(math.log2(ratio)))
    size = step * math.ceil((resolution - 1) / step) + 1
    axes = grid_axes(box_min, spacing, size, device)
    values = torch.empty((size,) * 3, dtype=torch.float32, device=device)
    known = torch.zeros((size,) * 3, dtype=torch.bool, device=device)

    everywhere = torch.ones(((size - 1) // step + 1,) * 3, dtype=torch.bool, device=device)
    num_queries = _evaluate_level(sdf_fn, axes, values, known, step, everywhere, chunk_size)
    finest_diagonal = float(np.linalg.norm(spacing))
    while step > 1:
        predicted = _interpolate_to_half_step(values[::step, ::step, ::step])
        step //= 2
        band = (_LAST_BAND_DIAGONALS if step == 1 else _BAND_DIAGONALS) * step * finest_diagonal
        num_queries += _evaluate_level(sdf_fn, axes, values, known, step, predicted.abs() <= band, chunk_size)
        level = values[::step, ::step, ::step]
        stand_in = torch.where(predicted > 0, _FILL_MAGNITUDE, -_FILL_MAGNITUDE)
        level.copy_(torch.where(known[::step, ::step, ::step], level, stand_in))
        num_queries += _follow_surface(sdf_fn, axes, values, known, step, chunk_size)
    return values, num_queries


def _interpolate_to_half_step(level: Tensor) -> Tensor:
    """Trilinear interpolation of a node grid at the nodes of the grid at half the step ([n]³ -> [2n - 1]³)."""
    for _ in range(3):  # one axis at a time; moving it last brings the next one first
        finer = level.new_empty((2 * level.shape[0] - 1, *level.shape[1:]))
        finer[::2] = level
        torch.add(level[:-1], level[1:], out=finer[1::2]).mul_(0.5)
        level = finer.movedim(0, -1)
    return level


def sign_change_cells(level: Tensor) -> Tensor:
    """Cells with a corner inside (< 0) and one not: the cells marching cubes puts faces in.

    PyMCubes, run on ``-sdf``, counts a node exactly at level 0 as outside. (Reducing booleans
    is several times faster than reducing the float grid on the CPU.)
    """
    inside = level < 0
    return _over_cell_corners(inside, torch.logical_or) & ~_over_cell_corners(inside, torch.logical_and)


def _follow_surface(
    sdf_fn: SdfFn,
    axes: list[Tensor],
    values: Tensor,
    known: Tensor,
    step: int,
    chunk_size: int,
) -> int:
    """Evaluate the missing corners of cells that change sign until no such cell is left.

    A surface that leaves the evaluated nodes (a field steeper than a distance) changes sign
    across a face shared with a cell whose other corners hold stand-ins; evaluating that cell
    follows the surface one cell further, so every connected part of it the band touched is
    meshed from exact values. Returns the number of queries.
    """
    num_queries = 0
    while True:
        level = values[::step, ::step, ::step]
        unknown = ~known[::step, ::step, ::step]
        open_cells = sign_change_cells(level) & _over_cell_corners(unknown, torch.logical_or)
        if not bool(open_cells.any()):
            return num_queries
        num_queries += _evaluate_level(sdf_fn, axes, values, known, step, _corners_of_cells(open_cells), chunk_size)


def _over_cell_corners(level: Tensor, reduce: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Reduce the 8 corner values of every cell of a node grid (e.g. booleans with logical_or) to one per cell."""
    for _ in range(3):  # one axis at a time; moving it last brings the next one first
        level = reduce(level[:-1], level[1:]).movedim(0, -1)
    return level


def _corners_of_cells(cells: Tensor) -> Tensor:
    """Nodes of the same grid that are a corner of any marked cell."""
    for _ in range(3):
        nodes = cells.new_zeros((cells.shape[0] + 1, *cells.shape[1:]))
        nodes[:-1] |= cells
        nodes[1:] |= cells
        cells = nodes.movedim(0, -1)
    return cells


def _evaluate_level(
    sdf_fn: SdfFn,
    axes: list[Tensor],
    values: Tensor,
    known: Tensor,
    step: int,
    wanted: Tensor,
    chunk_size: int,
) -> int:
    """Evaluate the wanted, not yet known nodes of one level into ``values``; return how many."""
    size = len(axes[0])
    ix, iy, iz = (wanted & ~known[::step, ::step, ::step]).nonzero(as_tuple=True)
    flat = ((ix * step) * size + iy * step) * size + iz * step
    if len(flat) == 0:
        return 0
    values.view(-1)[flat] = _sdf_at_nodes(sdf_fn, axes, flat.split(chunk_size), len(flat))
    known.view(-1)[flat] = True
    return len(flat)


def _sdf_at_nodes(sdf_fn: SdfFn, axes: list[Tensor], chunks: Iterable[Tensor], total: int) -> Tensor:
    """Query ``sdf_fn`` at nodes given by flat (x-slowest) indices, chunk by chunk, as float32."""
    size = len(axes[0])
    out = torch.empty(total, dtype=torch.float32, device=axes[0].device)
    begin = 0
    for flat in chunks:
        ix, rest = flat.div(size * size, rounding_mode="floor"), flat % (size * size)
        iy, iz = rest.div(size, rounding_mode="floor"), rest % size
        sdf = sdf_fn(torch.stack([axes[0][ix], axes[1][iy], axes[2][iz]], dim=1))
        if tuple(sdf.shape) not in ((len(flat),), (len(flat), 1)):
            raise ValueError(
                f"sdf_fn returned shape {tuple(sdf.shape)} for {len(flat)} points; expected ({len(flat)},)."
            )
        out[begin : begin + len(flat)] = sdf.reshape(-1)
        begin += len(flat)
    if not torch.isfinite(out).all():
        raise ValueError("sdf_fn returned NaN or infinite values: the decoder or latent is broken.")
    return out
