"""The SDF on the extraction grid: every node (dense), or a coarse grid refined only near the surface (narrow band).

The narrow band evaluates a coarse grid, then halves the grid step level by level, evaluating
only the nodes that the level before, interpolated, puts near the surface, and following the
surface where it leaves them (`extract.extract_mesh_with_stats` gives the rule and why it equals the dense grid's mesh).
Nodes it never evaluates hold `FILL_MAGNITUDE` with the right sign.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

METHODS: tuple[str, ...] = ("dense", "narrow_band")
DEFAULT_CHUNK_SIZE = 65_536
Box = tuple[Sequence[float], Sequence[float]]
SdfFn = Callable[[Tensor], Tensor]  # points [N, 3] -> [N]
BatchSdfFn = Callable[[Tensor], Tensor]  # points [H, N, 3] of H heads -> [H, N]
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


def checked_box(bbox: Box) -> tuple[np.ndarray, np.ndarray]:
    """Return the box corners as float64 arrays, refusing a box that is not min < max in 3D."""
    try:
        box_min, box_max = (np.asarray(corner, dtype=np.float64) for corner in bbox)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bbox must be (min_xyz, max_xyz), two triples of numbers; got {bbox!r}.") from error
    if box_min.shape != (3,) or box_max.shape != (3,) or not np.all(box_min < box_max):
        raise ValueError(f"bbox must be (min_xyz, max_xyz) with min < max on every axis; got {bbox!r}.")
    return box_min, box_max


def check_settings(resolution: int, method: str, chunk_size: int, coarse_resolution: int | None) -> None:
    """Refuse extraction settings that cannot give a mesh, with a sentence saying why."""
    if method not in METHODS:
        raise ValueError(f"Unknown extraction method '{method}': choose 'narrow_band' or 'dense'.")
    if not isinstance(resolution, numbers.Integral) or resolution < 3:
        raise ValueError(f"resolution must be an integer of at least 3 samples per axis; got {resolution!r}.")
    if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    if coarse_resolution is not None and (not isinstance(coarse_resolution, numbers.Integral) or coarse_resolution < 2):
        raise ValueError(f"coarse_resolution must be an integer of at least 2; got {coarse_resolution!r}.")


def expected_queries(resolution: int, method: str) -> int:
    """About how many SDF queries an extraction makes: every node of the dense grid; for the narrow band, about
    7.5 × resolution² for a head (28.5k at 64³, 120k at 128³, 278k at 192³, 505k at 256³ were measured)."""
    return resolution**3 if method == "dense" else round(7.5 * resolution**2)


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
    values, queries = dense_grids(_one_head(sdf_fn), 1, box_min, spacing, resolution, chunk_size, device)
    return values[0], queries[0]


def dense_grids(
    sdf_fn: BatchSdfFn,
    heads: int,
    box_min: np.ndarray,
    spacing: np.ndarray,
    resolution: int,
    chunk_size: int,
    device: torch.device,
) -> tuple[Tensor, list[int]]:
    """`dense_grid` of `heads` fields at once (`sdf_fn(points [H, N, 3]) -> [H, N]`): grids [H, R, R, R]."""
    axes = grid_axes(box_min, spacing, resolution, device)
    total = resolution**3
    values = torch.empty((heads, total), dtype=torch.float32, device=device)
    step = _per_head_chunk(chunk_size, heads)
    for begin in range(0, total, step):
        flat = torch.arange(begin, min(begin + step, total), device=device)
        values[:, begin : begin + len(flat)] = _query(
            sdf_fn, _node_points(axes, flat).expand(heads, -1, -1).contiguous()
        )
    _check_finite(values)
    return values.view(heads, resolution, resolution, resolution), [total] * heads


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
    args = (box_min, spacing, resolution, coarse_resolution, chunk_size, device)
    values, queries = narrow_band_grids(_one_head(sdf_fn), 1, *args)
    return values[0], queries[0]


def narrow_band_grids(
    sdf_fn: BatchSdfFn,
    heads: int,
    box_min: np.ndarray,
    spacing: np.ndarray,
    resolution: int,
    coarse_resolution: int,
    chunk_size: int,
    device: torch.device,
) -> tuple[Tensor, list[int]]:
    """`narrow_band_grid` of `heads` fields in step (`sdf_fn(points [H, N, 3]) -> [H, N]`): grids [H, S, S, S].

    Each level queries every head's own nodes in one call per chunk, the shorter lists padded
    with a node of their own grid (its answer unused), so each grid is the one its field gets
    alone; the queries are counted per head, padding left out.
    """
    ratio = (resolution - 1) / max(1, coarse_resolution - 1)
    step = 2 ** max(0, math.floor(math.log2(ratio)))
    size = step * math.ceil((resolution - 1) / step) + 1
    axes = grid_axes(box_min, spacing, size, device)
    values = torch.empty((heads, *(size,) * 3), dtype=torch.float32, device=device)
    known = torch.zeros((heads, *(size,) * 3), dtype=torch.bool, device=device)

    everywhere = torch.ones((heads, *((size - 1) // step + 1,) * 3), dtype=torch.bool, device=device)
    queries = _evaluate_level(sdf_fn, axes, values, known, step, everywhere, chunk_size)
    finest_diagonal = float(np.linalg.norm(spacing))
    while step > 1:
        predicted = _interpolate_to_half_step(values[:, ::step, ::step, ::step])
        step //= 2
        band = (_LAST_BAND_DIAGONALS if step == 1 else _BAND_DIAGONALS) * step * finest_diagonal
        queries += _evaluate_level(sdf_fn, axes, values, known, step, predicted.abs() <= band, chunk_size)
        level = values[:, ::step, ::step, ::step]
        stand_in = torch.where(predicted > 0, _FILL_MAGNITUDE, -_FILL_MAGNITUDE)
        level.copy_(torch.where(known[:, ::step, ::step, ::step], level, stand_in))
        queries += _follow_surface(sdf_fn, axes, values, known, step, chunk_size)
    return values, queries.tolist()


def _interpolate_to_half_step(level: Tensor) -> Tensor:
    """Trilinear interpolation of node grids [..., n, n, n] at the nodes of the grid at half the step
    ([..., 2n - 1, 2n - 1, 2n - 1])."""
    for _ in range(3):  # one axis at a time; moving it last brings the next one first
        n = level.shape[-3]
        finer = level.new_empty((*level.shape[:-3], 2 * n - 1, *level.shape[-2:]))
        finer[..., ::2, :, :] = level
        torch.add(level[..., :-1, :, :], level[..., 1:, :, :], out=finer[..., 1::2, :, :]).mul_(0.5)
        level = finer.movedim(-3, -1)
    return level


def sign_change_cells(level: Tensor) -> Tensor:
    """Cells with a corner inside (< 0) and one not: the cells marching cubes puts faces in (of grids [..., n, n, n]).

    PyMCubes, run on ``-sdf``, counts a node exactly at level 0 as outside. (Reducing booleans
    is several times faster than reducing the float grid on the CPU.)
    """
    inside = level < 0
    return _over_cell_corners(inside, torch.logical_or) & ~_over_cell_corners(inside, torch.logical_and)


def _follow_surface(
    sdf_fn: BatchSdfFn,
    axes: list[Tensor],
    values: Tensor,
    known: Tensor,
    step: int,
    chunk_size: int,
) -> Tensor:
    """Evaluate the missing corners of cells that change sign until no such cell is left, in every head.

    A surface that leaves the evaluated nodes (a field steeper than a distance) changes sign
    across a face shared with a cell whose other corners hold stand-ins; evaluating that cell
    follows the surface one cell further, so every connected part of it the band touched is
    meshed from exact values. Returns the number of queries per head.
    """
    queries = torch.zeros(values.shape[0], dtype=torch.long)
    while True:
        level = values[:, ::step, ::step, ::step]
        unknown = ~known[:, ::step, ::step, ::step]
        open_cells = sign_change_cells(level) & _over_cell_corners(unknown, torch.logical_or)
        if not bool(open_cells.any()):
            return queries
        queries += _evaluate_level(sdf_fn, axes, values, known, step, _corners_of_cells(open_cells), chunk_size)


def _over_cell_corners(level: Tensor, reduce: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Reduce the 8 corner values of every cell of node grids [..., n, n, n] (e.g. booleans with logical_or)."""
    for _ in range(3):  # one axis at a time; moving it last brings the next one first
        level = reduce(level[..., :-1, :, :], level[..., 1:, :, :]).movedim(-3, -1)
    return level


def _corners_of_cells(cells: Tensor) -> Tensor:
    """Nodes of the same grids [..., n, n, n] that are a corner of any marked cell."""
    for _ in range(3):
        nodes = cells.new_zeros((*cells.shape[:-3], cells.shape[-3] + 1, *cells.shape[-2:]))
        nodes[..., :-1, :, :] |= cells
        nodes[..., 1:, :, :] |= cells
        cells = nodes.movedim(-3, -1)
    return cells


def _evaluate_level(
    sdf_fn: BatchSdfFn,
    axes: list[Tensor],
    values: Tensor,
    known: Tensor,
    step: int,
    wanted: Tensor,
    chunk_size: int,
) -> Tensor:
    """Evaluate the wanted, not yet known nodes of one level of every head into ``values``; return how many per head."""
    heads, size = values.shape[0], len(axes[0])
    head, ix, iy, iz = (wanted & ~known[:, ::step, ::step, ::step]).nonzero(as_tuple=True)
    counts = torch.bincount(head, minlength=heads).cpu()
    if len(head) == 0:
        return counts
    flat = ((ix * step) * size + iy * step) * size + iz * step
    # each head's nodes in a row of its own, the shorter rows padded with node 0 (their answers unused)
    columns = torch.arange(int(counts.max()), device=flat.device)
    valid = columns < counts.to(flat.device)[:, None]
    padded = torch.zeros(valid.shape, dtype=flat.dtype, device=flat.device)
    padded[valid] = flat
    answers = torch.empty(valid.shape, dtype=torch.float32, device=flat.device)
    step_size = _per_head_chunk(chunk_size, heads)
    for begin in range(0, padded.shape[1], step_size):
        nodes = padded[:, begin : begin + step_size]
        answers[:, begin : begin + nodes.shape[1]] = _query(sdf_fn, _node_points(axes, nodes))
    found = answers[valid]
    _check_finite(found)
    values.view(heads, -1)[head, flat] = found
    known.view(heads, -1)[head, flat] = True
    return counts


def _per_head_chunk(chunk_size: int, heads: int) -> int:
    """Points per head in one query, so that a query holds at most about `chunk_size` points in all."""
    return max(1, -(-chunk_size // heads))


def _node_points(axes: list[Tensor], flat: Tensor) -> Tensor:
    """The coordinates [..., 3] of nodes given by flat (x-slowest) indices [...]."""
    size = len(axes[0])
    ix, rest = flat.div(size * size, rounding_mode="floor"), flat % (size * size)
    iy, iz = rest.div(size, rounding_mode="floor"), rest % size
    return torch.stack([axes[0][ix], axes[1][iy], axes[2][iz]], dim=-1)


def _query(sdf_fn: BatchSdfFn, points: Tensor) -> Tensor:
    """``sdf_fn`` at points [H, N, 3], checked to answer [H, N] (or [H, N, 1]), as float32."""
    sdf = sdf_fn(points)
    heads, count = points.shape[:2]
    if tuple(sdf.shape) not in ((heads, count), (heads, count, 1)):
        raise ValueError(
            f"sdf_fn returned shape {tuple(sdf.shape)} for {heads} heads of {count} points; expected ({heads}, {count})."
        )
    return sdf.reshape(heads, count).float()


def _one_head(sdf_fn: SdfFn) -> BatchSdfFn:
    """A single field's ``sdf_fn(points [N, 3]) -> [N]`` as a batch of one head."""

    def batched(points: Tensor) -> Tensor:
        sdf = sdf_fn(points[0])
        count = points.shape[1]
        if tuple(sdf.shape) not in ((count,), (count, 1)):
            raise ValueError(f"sdf_fn returned shape {tuple(sdf.shape)} for {count} points; expected ({count},).")
        return sdf.reshape(1, count)

    return batched


def _check_finite(values: Tensor) -> None:
    if not torch.isfinite(values).all():
        raise ValueError("sdf_fn returned NaN or infinite values: the decoder or latent is broken.")
