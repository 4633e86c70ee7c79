"""Marching cubes in torch, on the grid's own device: the GPU's extraction, the same mesh as PyMCubes.

PyMCubes runs on the CPU, so on a GPU the grid would travel to the host and the triangles be
made there. Here every cell that changes sign is meshed at once with tensor ops: its case (which
of its 8 corners are inside) picks up to 5 triangles from a table, each triangle vertex is named
by the grid edge it lies on and placed by PyMCubes' linear interpolation, and the vertices are
welded as PyMCubes' are (`weld`). The table is read off PyMCubes itself (one 2×2×2
grid per case, at import: 11 ms), so the triangles, their orientation and their order in each cell are
PyMCubes', and the welded mesh is the same: the same vertices in the same order (within 1e-7
voxels on a trained head at 256³), the same faces (in another order: cell by cell here, block by
block there). Tested against PyMCubes on the CPU; this session had no GPU to time it on.
"""

from __future__ import annotations

import itertools

import mcubes
import numpy as np
import torch
from torch import Tensor

from diffnphr.mesh.weld import edge_keys, weld

# A cell's corners in the bit order of its case index: corner (i, j, k) is bit 4i + 2j + k.
_CORNERS = list(itertools.product((0, 1), repeat=3))
_MAX_TRIANGLES = 5  # per cell, in any marching-cubes case


def _edge_of(vertex: np.ndarray) -> tuple[int, int, int, int]:
    """The cell edge a PyMCubes vertex of a ±1 cube lies on: (lower corner i, j, k, axis)."""
    axis = int(np.argmax(np.abs(vertex - np.rint(vertex)) > 0.25))
    lower = np.floor(vertex).astype(int)
    return int(lower[0]), int(lower[1]), int(lower[2]), axis


def _case_table() -> Tensor:
    """Triangles of every case from PyMCubes: edges [256, 5, 3, 4] (lower corner, axis; -1 where unused)."""
    edges = np.full((256, _MAX_TRIANGLES, 3, 4), -1, dtype=np.int64)
    for case in range(256):
        cube = np.full((2, 2, 2), -1.0)
        for bit, corner in enumerate(_CORNERS):
            if case >> (7 - bit) & 1:
                cube[corner] = 1.0
        vertices, faces = mcubes.marching_cubes(cube, 0.0)
        for t, face in enumerate(faces):
            for c, index in enumerate(face):
                edges[case, t, c] = _edge_of(vertices[int(index)])
    return torch.from_numpy(edges)


_EDGES = _case_table()
_EDGES_ON: dict[torch.device, Tensor] = {}  # the table on each device it was used on, copied there once


def _edges_on(device: torch.device) -> Tensor:
    """The case table on `device` (copied on its first use there, not at every grid)."""
    table = _EDGES_ON.get(device)
    if table is None:
        table = _EDGES_ON[device] = _EDGES.to(device)
    return table


def torch_marching_cubes(field: Tensor) -> tuple[Tensor, Tensor]:
    """Level 0 of `field` (inside > 0, as PyMCubes reads `-sdf`): welded vertices [V, 3] in grid units (float64)
    and faces [F, 3] (int64), on the field's device, equal to PyMCubes' output after `_weld_grid_vertices`."""
    shape = field.shape
    inside = field > 0
    cells = [n - 1 for n in shape]
    case = torch.zeros(cells, dtype=torch.uint8, device=field.device)  # 1 byte a cell: 133 MB at 512³
    for bit, (i, j, k) in enumerate(_CORNERS):
        corner = inside[i : i + cells[0], j : j + cells[1], k : k + cells[2]]
        case |= corner.to(torch.uint8) << (7 - bit)
    active = ((case > 0) & (case < 255)).nonzero()
    edges = _edges_on(field.device)[case[active[:, 0], active[:, 1], active[:, 2]].long()]  # [M, 5, 3, 4]
    used = edges[:, :, 0, 0] >= 0
    edges = edges[used]  # [T, 3, 4]: every triangle of every cell, in cell order, then PyMCubes' order
    cell = active.unsqueeze(1).expand(-1, _MAX_TRIANGLES, -1)[used]  # [T, 3]
    lower = cell.unsqueeze(1) + edges[..., :3]  # [T, 3 corners, 3]
    unit = torch.nn.functional.one_hot(edges[..., 3], 3)
    upper = lower + unit
    # interpolated in the field's own precision, as PyMCubes does
    v0 = field[lower[..., 0], lower[..., 1], lower[..., 2]]
    v1 = field[upper[..., 0], upper[..., 1], upper[..., 2]]
    t = v0 / (v0 - v1)
    # A vertex on a node (an SDF value of 0 there) is that node, whichever edge made it.
    on_node = (t <= 0.0) | (t >= 1.0)
    keys = edge_keys(torch.where((t >= 1.0).unsqueeze(-1), upper, lower), torch.where(on_node, 3, edges[..., 3]), shape)
    positions = lower.double() + unit.double() * t.clamp(0, 1).unsqueeze(-1).double()
    faces = torch.arange(keys.numel(), device=field.device).view(-1, 3)
    return weld(keys.reshape(-1), positions.reshape(-1, 3), faces)
