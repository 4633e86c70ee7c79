"""The weld shared by both marching cubes: one vertex per grid edge the surface crosses, no empty or repeated faces.

A marching-cubes vertex lies on a grid edge, or on a node where the SDF is 0 there: the edge's
lower node and its axis (3 for a node) name it exactly, whichever cell or block made it, with no
tolerance on coordinates (`edge_keys`). `weld` keeps one vertex per name, in the names' order.
"""

from __future__ import annotations

import torch
from torch import Tensor


def edge_keys(node: Tensor, axis: Tensor, shape: tuple[int, ...]) -> Tensor:
    """The name of each vertex: its lower grid node [..., 3] (in a grid of `shape`) and axis [...] (0-2, or 3 on a node)."""
    return ((node[..., 0] * shape[1] + node[..., 1]) * shape[2] + node[..., 2]) * 4 + axis


def weld(keys: Tensor, positions: Tensor, faces: Tensor) -> tuple[Tensor, Tensor]:
    """One vertex per key (ascending), the faces on them; faces that collapse dropped, repeated ones kept once.

    `keys` [K] and `positions` [K, 3] describe the vertices the faces [F, 3] index (entries with
    one key share their position). A face left with a repeated vertex (nodes on the surface) has
    no area; of faces on the same three vertices the first is kept; faces keep their order.
    """
    unique_keys, inverse = torch.unique(keys, return_inverse=True)
    vertices = positions.new_empty(len(unique_keys), 3)
    vertices[inverse] = positions
    faces = inverse[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    if len(faces) == 0:
        return vertices, faces
    # A face's vertices are neighbours on the grid, so their indices (in grid order) lie within
    # `span` of its lowest one: (lowest, offsets) is a short exact key.
    ordered = faces.sort(dim=1).values
    offsets = ordered[:, 1:] - ordered[:, :1]
    span = int(offsets.max()) + 1
    _, repeats = torch.unique((ordered[:, 0] * span + offsets[:, 0]) * span + offsets[:, 1], return_inverse=True)
    order = torch.arange(len(faces), device=faces.device)
    first = torch.full((int(repeats.max()) + 1,), len(faces), device=faces.device)
    first = first.scatter_reduce(0, repeats, order, reduce="amin")
    return vertices, faces[first.sort().values]
