"""Marching cubes on the grid's SDF (PyMCubes, block by block where the surface is) and the weld into one mesh.

PyMCubes orients triangles outwards when the inside is the larger value, so it runs on `-sdf`
at level 0, exactly as MonoNPHM's `mesh_from_logits` does (the SDF is negative inside).
Where the head leaves the box (the neck, at the floor) the surface is closed on the box's faces
(`close_at_box_faces`), so the mesh is watertight.
"""

from __future__ import annotations

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor

from diffnphr.mesh.grid import sign_change_cells
from diffnphr.mesh.weld import edge_keys, weld

# Marching cubes runs on blocks of this many cells per axis, and only where they hold a face.
_MC_BLOCK = 16
# The value an inside node on the box's faces takes when the surface is closed there: just
# outside, so the cap's vertices sit on the face plane (1e-6 units = 0.25 µm from it at most).
_CAP_VALUE = 1.0e-6


def close_at_box_faces(grid: Tensor) -> Tensor:
    """Make the nodes on the grid's six faces that are inside (< 0) barely outside, in place; return the grid.

    A head that leaves the box (the neck through the floor) is then closed by a flat cap on the
    box face: without it, marching cubes leaves the cut open (396 boundary edges at 128³ on the
    shipped weights). Nodes already outside keep their values, so surfaces the box does not cut
    are untouched.
    """
    for axis in range(3):
        for index in (0, grid.shape[axis] - 1):
            face = grid.select(axis, index)
            face.masked_fill_(face < 0, _CAP_VALUE)
    return grid


class NoSurfaceError(ValueError):
    """The box holds no surface of the field (its sign is the same at every grid node)."""


def close_grid(grid: Tensor, close_at_box: bool) -> bool:
    """Close the surface where the box cuts it (`close_at_box_faces`, in place) unless the grid is inside everywhere;
    return whether it is."""
    inside_everywhere = bool((grid < 0).all())
    if close_at_box and not inside_everywhere:
        close_at_box_faces(grid)
    return inside_everywhere


def grid_mesh(
    grid: Tensor, inside_everywhere: bool, box: tuple[np.ndarray, np.ndarray], spacing: np.ndarray, largest: bool
) -> trimesh.Trimesh:
    """Marching cubes on one head's grid; `NoSurfaceError`, in a sentence, when it holds no face."""
    box_min, box_max = box
    mesh = marching_cubes(grid, box_min, spacing, largest)
    if len(mesh.faces) == 0:
        sign = "negative (inside)" if inside_everywhere else "positive (outside)"
        raise NoSurfaceError(
            f"No surface found in the box {box_min.tolist()}..{box_max.tolist()} at resolution "
            f"{grid.shape[0]}: the SDF is {sign} at every grid node, so the shape misses the box "
            "or the latent code does not describe a head."
        )
    return mesh


def marching_cubes(
    grid: Tensor, box_min: np.ndarray, spacing: np.ndarray, keep_largest_component: bool
) -> trimesh.Trimesh:
    """Mesh level 0 of an SDF grid in world coordinates, without degenerate parts.

    On a GPU the grid is meshed where it is (`torch_marching_cubes`, the same mesh). On the CPU,
    PyMCubes runs on ``-sdf`` block by block, only in the blocks of ``_MC_BLOCK``³ cells that
    hold a face: the triangles of the whole grid in a fraction of the time, since a head's
    surface crosses few blocks. Neighbouring blocks both make the vertices on their shared
    face; ``_weld_grid_vertices`` joins them by the grid edge they lie on.
    """
    if grid.device.type == "cuda":  # mesh where the grid is; only the triangles travel
        # imported here: its case table is built at import (11 ms), which a CPU process never needs
        from diffnphr.mesh.torch_marching import torch_marching_cubes

        vertices, faces = (part.cpu().numpy() for part in torch_marching_cubes(-grid))
    else:
        vertices, faces = pymcubes_by_blocks(grid)
    if len(faces) == 0:
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    mesh = trimesh.Trimesh(box_min + vertices * spacing, faces, process=False)
    if keep_largest_component and len(mesh.faces) > 0:
        mesh = max(mesh.split(only_watertight=False), key=lambda part: len(part.faces))
    return mesh


def pymcubes_by_blocks(grid: Tensor) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes on ``-grid``, only in the blocks that hold a face, welded: vertices in grid units and faces."""
    occupied = _blocks_holding(sign_change_cells(grid), _MC_BLOCK).nonzero().tolist()
    field = (-grid).cpu().numpy()
    vertices, faces, offset = [], [], 0
    for block in occupied:
        corner = np.array(block) * _MC_BLOCK
        lo, hi = corner, corner + _MC_BLOCK + 1
        block_vertices, block_faces = mcubes.marching_cubes(field[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]], 0.0)
        vertices.append(block_vertices + corner)
        faces.append(block_faces.astype(np.int64) + offset)
        offset += len(block_vertices)
    if not faces:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    return _weld_grid_vertices(np.concatenate(vertices), np.concatenate(faces), field.shape)


# A marching-cubes vertex this close to a grid node (in voxels) is that node.
_NODE_SNAP = 1.0e-9


def _weld_grid_vertices(
    vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """PyMCubes' vertices (grid units) named by the grid edge or node they lie on, and welded (`weld.weld`).

    Two coordinates of a vertex on an edge are whole numbers and the third is not; all three are
    on a node (an SDF value of 0 there).
    """
    points = torch.from_numpy(vertices)
    rounded = points.round()
    whole = (points - rounded).abs() <= _NODE_SNAP
    points = torch.where(whole, rounded, points)
    axis = torch.where(whole.all(dim=1), 3, whole.to(torch.uint8).argmin(dim=1))
    keys = edge_keys(points.floor().long(), axis, shape)
    welded, welded_faces = weld(keys, points, torch.from_numpy(faces))
    return welded.numpy(), welded_faces.numpy()


def _blocks_holding(cells: Tensor, block: int) -> Tensor:
    """Which blocks of ``block``³ cells (a partition from cell 0, the last ones cut short) hold a marked cell."""
    counts = [-(-n // block) for n in cells.shape]
    padded = cells.new_zeros([n * block for n in counts])
    padded[: cells.shape[0], : cells.shape[1], : cells.shape[2]] = cells
    blocks = padded.view(counts[0], block, counts[1], block, counts[2], block)
    return blocks.any(dim=5).any(dim=3).any(dim=1)
