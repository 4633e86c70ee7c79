"""What the hair and torso meshes share: shells over the ICT skin, grid triangulation, closed slabs, checks.

A shell is a copy of some skin triangles that a style moves along the vertex normals, outwards
where it shows (hair, clothes) and `HIDDEN_DEPTH` inside the skin where it does not, so one fixed
topology serves every style and a batch rasterises in one go.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import torch
import trimesh
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

HIDDEN_DEPTH = 0.008  # 2 mm: where a style has no hair the shell sits this far inside the skin


def outer_skin_faces(model: ICTFaceModel) -> np.ndarray:
    """The triangles of the outer skin (parts face and head_and_neck)."""
    return np.concatenate([model.faces[model.part_faces("face")], model.faces[model.part_faces("head_and_neck")]])


def skin_shell(faces: np.ndarray, chosen: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A shell over the skin triangles whose corners are all `chosen` (V,) bool: its head vertex
    rows (S,), its faces (re-indexed into the rows), the skin triangles touching it (for whole
    normals at its outline) and which of its vertices lie on its outline (S,) bool."""
    shell_faces = faces[chosen[faces].all(axis=1)]
    rows = np.unique(shell_faces)
    local = np.full(len(chosen), -1, dtype=np.int64)
    local[rows] = np.arange(len(rows))
    shell_faces = local[shell_faces]
    edges = np.sort(np.concatenate([shell_faces[:, [0, 1]], shell_faces[:, [1, 2]], shell_faces[:, [2, 0]]]), axis=1)
    unique_edges, counts = np.unique(edges, axis=0, return_counts=True)
    rim = np.zeros(len(rows), dtype=bool)
    rim[unique_edges[counts == 1].reshape(-1)] = True
    return rows, shell_faces, faces[chosen[faces].any(axis=1)], rim


def grid_faces(grid: np.ndarray, closed: bool = False) -> np.ndarray:
    """Two triangles per cell of a (rows, columns) grid of vertex ids; `closed` joins the last column to the first."""
    right = np.roll(grid, -1, axis=1) if closed else grid[:, 1:]
    left = grid if closed else grid[:, :-1]
    a, b, c, d = left[:-1], right[:-1], left[1:], right[1:]
    return np.concatenate([np.stack([a, c, b], -1).reshape(-1, 3), np.stack([b, c, d], -1).reshape(-1, 3)])


def check_heads(head_vertices: Tensor, vertex_count: int) -> Tensor:
    """`head_vertices` as a float tensor (B, vertex_count, 3), or a ValueError saying what it is instead."""
    head_vertices = torch.as_tensor(head_vertices)
    if head_vertices.ndim != 3 or head_vertices.shape[1:] != (vertex_count, 3) or not head_vertices.is_floating_point():
        raise ValueError(
            f"head_vertices must be a float tensor of shape (B, {vertex_count}, 3), "
            f"got {tuple(head_vertices.shape)} {head_vertices.dtype}"
        )
    return head_vertices.float()


def slab_faces(rows: int, columns: int) -> np.ndarray:
    """Faces of a closed slab: an outer (rows, columns) grid of vertices 0.., an inner one after it,
    joined along all four edges, wound outward (for an outer sheet whose rows run downwards and
    whose columns run round the back with increasing azimuth, as the curtain's do)."""
    outer = np.arange(rows * columns).reshape(rows, columns)
    inner = outer + rows * columns
    faces = [grid_faces(outer), grid_faces(inner)[:, ::-1]]
    for edge_outer, edge_inner in (
        (outer[0], inner[0]),
        (outer[-1], inner[-1]),
        (outer[:, 0], inner[:, 0]),
        (outer[:, -1], inner[:, -1]),
    ):
        faces.append(grid_faces(np.stack([edge_outer, edge_inner])))
    faces = np.concatenate(faces)
    # Orient every edge strip consistently with the sheets, on a slab of known shape.
    t = np.linspace(0.0, 1.0, rows)[:, None]
    azimuth = np.linspace(math.radians(80), 2 * math.pi - math.radians(80), columns)[None]
    sheets = [
        np.stack(np.broadcast_arrays(r * np.sin(azimuth), -t, r * np.cos(azimuth)), axis=-1).reshape(-1, 3)
        for r in (1.0, 0.8)
    ]
    mesh = trimesh.Trimesh(np.concatenate(sheets), faces, process=False)
    trimesh.repair.fix_winding(mesh)
    if mesh.volume < 0:
        mesh.invert()
    if not mesh.is_watertight or not mesh.is_winding_consistent:
        raise RuntimeError("the curtain slab is not a closed, consistently wound surface")
    return np.asarray(mesh.faces, dtype=np.int64)
