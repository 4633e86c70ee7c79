"""Signed distance field -> coloured triangle mesh, and export to GLB / OBJ / PLY.

Conventions (MonoNPHM's, see DESIGN.md):

* the SDF is **negative inside, positive outside**; PyMCubes orients triangles outwards when
  the inside is the larger value, so marching cubes runs on ``-sdf`` at level 0, exactly as
  MonoNPHM's ``mesh_from_logits`` does, and the faces of the result point outwards;
* ``resolution`` is the number of samples per axis with both box faces included (``linspace``),
  so voxels are ``(BOX_MAX - BOX_MIN) / (resolution - 1)`` and need not be cubes;
* the canonical frame has +y up and +z forward (the nose), which is glTF's own frame (+Y up,
  the front of an asset faces +Z): meshes are exported without any rotation.

The default ``narrow_band`` method evaluates a coarse grid, then halves the grid step level by
level, evaluating only the nodes of cells that may hold the surface and following the surface
where it leaves them; see
:func:`extract_mesh_with_stats` for the rule and why it gives the dense mesh.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import mcubes
import numpy as np
import torch
import trimesh
from torch import Tensor

BOX_MIN: tuple[float, float, float] = (-0.55, -0.5, -0.95)
BOX_MAX: tuple[float, float, float] = (0.55, 0.75, 0.4)
EXPORT_FORMATS: tuple[str, ...] = ("glb", "obj", "ply")
METHODS: tuple[str, ...] = ("dense", "narrow_band")
DEFAULT_CHUNK_SIZE = 65_536
# Marching cubes runs on blocks of this many cells per axis, and only where they hold a face.
_MC_BLOCK = 16

SdfFn = Callable[[Tensor], Tensor]
ColorFn = Callable[[Tensor], Tensor]
Box = tuple[Sequence[float], Sequence[float]]

# Stand-in magnitude for grid nodes the narrow band never evaluates: only its sign is ever
# read, since marching cubes interpolates along sign-changing edges alone.
_FILL_MAGNITUDE = 1.0e3


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
    keeps the cells whose corners change sign or come within half a cell diagonal of zero and
    evaluates the next level's nodes in those cells only; the last level refines only the cells
    where the half-resolution grid changes sign. Other nodes take the sign of their cell. After
    each level, any cell that changes sign while some of its corners are not evaluated gets
    them evaluated, until none is left: the band follows the surface wherever it leaves it.
    For a 1-Lipschitz SDF (a true distance) every point of a cell lies within half a diagonal of
    a corner, so a cell whose corners all exceed that holds no surface; with the surface
    following, the mesh equals the dense one except for separate parts thin enough to fit
    between the nodes of the half-resolution grid, and fields steeper than a distance (a
    network) lose nothing connected to what the band found. It costs about twice the nodes of
    the cells that hold the surface. The grid may reach a few nodes past the box's max faces.

    Marching cubes is PyMCubes at level 0, run only on the blocks of 16³ cells that hold a
    face; duplicate vertices are merged and degenerate faces dropped.
    ``keep_largest_component`` (default off, as in MonoNPHM) keeps only the connected part with
    the most faces, e.g. to drop floating blobs. Raises ``ValueError`` when the box holds no
    surface.
    """
    box_min, box_max = _checked_box(bbox)
    _check_settings(resolution, method, chunk_size, coarse_resolution)
    resolution, chunk_size = int(resolution), int(chunk_size)
    device = torch.device(device) if device is not None else torch.get_default_device()
    spacing = (box_max - box_min) / (resolution - 1)

    start = time.perf_counter()
    with torch.inference_mode():
        if method == "dense":
            grid, num_queries = _dense_grid(sdf_fn, box_min, spacing, resolution, chunk_size, device)
        else:
            coarse = resolution // 8 if coarse_resolution is None else int(coarse_resolution)
            grid, num_queries = _narrow_band_grid(
                sdf_fn, box_min, spacing, resolution, max(2, coarse), chunk_size, device
            )
        grid = grid[:resolution, :resolution, :resolution]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    seconds_sdf = time.perf_counter() - start

    start = time.perf_counter()
    mesh = _marching_cubes(grid, box_min, spacing, keep_largest_component)
    seconds_mcubes = time.perf_counter() - start
    if len(mesh.faces) == 0:
        sign = "negative (inside)" if bool((grid < 0).all()) else "positive (outside)"
        raise ValueError(
            f"No surface found in the box {box_min.tolist()}..{box_max.tolist()} at resolution "
            f"{resolution}: the SDF is {sign} at every grid node, so the shape misses the box "
            "or the latent code does not describe a head."
        )

    start = time.perf_counter()
    if color_fn is not None:
        with torch.inference_mode():
            colors = _vertex_colors(color_fn, mesh.vertices, chunk_size, device)
        mesh.visual.vertex_colors = colors
    seconds_color = time.perf_counter() - start
    return MeshExtraction(mesh, num_queries, seconds_sdf, seconds_mcubes, seconds_color)


def export_mesh(mesh: trimesh.Trimesh, path: str | Path, file_format: str | None = None) -> Path:
    """Write ``mesh`` with its vertex colours as GLB, OBJ or PLY and return the path written.

    The format is ``file_format`` or else the file's suffix; missing folders are created.
    Coordinates are written as they are: the canonical frame (+y up, +z forward) is already
    glTF's. GLB and PLY store uint8 RGBA colours; OBJ writes ``v x y z r g b`` with r, g, b in
    [0, 1].
    """
    path = Path(path)
    chosen = (file_format if file_format is not None else path.suffix).lower().lstrip(".")
    if chosen not in EXPORT_FORMATS:
        named = f"format '{file_format}'" if file_format is not None else f"file name '{path.name}'"
        raise ValueError(
            f"Cannot export a mesh with the {named}: use a .glb, .obj or .ply file name "
            "or pass file_format='glb', 'obj' or 'ply'."
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path, file_type=chosen)
    return path


def _checked_box(bbox: Box) -> tuple[np.ndarray, np.ndarray]:
    """Return the box corners as float64 arrays, refusing a box that is not min < max in 3D."""
    try:
        box_min, box_max = (np.asarray(corner, dtype=np.float64) for corner in bbox)
    except (TypeError, ValueError) as error:
        raise ValueError(f"bbox must be (min_xyz, max_xyz), two triples of numbers; got {bbox!r}.") from error
    if box_min.shape != (3,) or box_max.shape != (3,) or not np.all(box_min < box_max):
        raise ValueError(f"bbox must be (min_xyz, max_xyz) with min < max on every axis; got {bbox!r}.")
    return box_min, box_max


def _check_settings(resolution: int, method: str, chunk_size: int, coarse_resolution: int | None) -> None:
    """Refuse extraction settings that cannot give a mesh, with a sentence saying why."""
    if method not in METHODS:
        raise ValueError(f"Unknown extraction method '{method}': choose 'narrow_band' or 'dense'.")
    if not isinstance(resolution, numbers.Integral) or resolution < 3:
        raise ValueError(f"resolution must be an integer of at least 3 samples per axis; got {resolution!r}.")
    if not isinstance(chunk_size, numbers.Integral) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}.")
    if coarse_resolution is not None and (not isinstance(coarse_resolution, numbers.Integral) or coarse_resolution < 2):
        raise ValueError(f"coarse_resolution must be an integer of at least 2; got {coarse_resolution!r}.")


def _grid_axes(box_min: np.ndarray, spacing: np.ndarray, size: int, device: torch.device) -> list[Tensor]:
    """Node coordinates along x, y, z: ``box_min + i * spacing`` for i < size, for every method."""
    index = np.arange(size, dtype=np.float64)
    return [
        torch.as_tensor(lo + index * step, dtype=torch.float32, device=device) for lo, step in zip(box_min, spacing)
    ]


def _dense_grid(
    sdf_fn: SdfFn,
    box_min: np.ndarray,
    spacing: np.ndarray,
    resolution: int,
    chunk_size: int,
    device: torch.device,
) -> tuple[Tensor, int]:
    """Evaluate the SDF at every node: the reference grid, shaped (R, R, R) with x slowest."""
    axes = _grid_axes(box_min, spacing, resolution, device)
    total = resolution**3
    chunks = (
        torch.arange(begin, min(begin + chunk_size, total), device=device) for begin in range(0, total, chunk_size)
    )
    values = _sdf_at_nodes(sdf_fn, axes, chunks, total)
    return values.view(resolution, resolution, resolution), total


def _narrow_band_grid(
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
    axes = _grid_axes(box_min, spacing, size, device)
    values = torch.empty((size,) * 3, dtype=torch.float32, device=device)
    known = torch.zeros((size,) * 3, dtype=torch.bool, device=device)

    everywhere = torch.ones(((size - 1) // step + 1,) * 3, dtype=torch.bool, device=device)
    num_queries = _evaluate_level(sdf_fn, axes, values, known, step, everywhere, chunk_size)
    while step > 1:
        coarse = values[::step, ::step, ::step]
        if step == 2:  # the last level: where the half-resolution grid sees the surface
            cells = _sign_change_cells(coarse)
        else:
            cells = _band_cells(coarse, half_diagonal=0.5 * step * float(np.linalg.norm(spacing)))
        outside = _upsample(coarse > 0)
        step //= 2
        wanted = _nodes_of_cells(cells)
        num_queries += _evaluate_level(sdf_fn, axes, values, known, step, wanted, chunk_size)
        level = values[::step, ::step, ::step]
        stand_in = torch.where(outside, _FILL_MAGNITUDE, -_FILL_MAGNITUDE)
        level.copy_(torch.where(known[::step, ::step, ::step], level, stand_in))
        num_queries += _follow_surface(sdf_fn, axes, values, known, step, chunk_size)
    return values, num_queries


def _band_cells(level: Tensor, half_diagonal: float) -> Tensor:
    """Cells whose corners change sign or come within half a diagonal of 0."""
    return _over_cell_corners(level.abs() <= half_diagonal, torch.logical_or) | _sign_change_cells(level)


def _sign_change_cells(level: Tensor) -> Tensor:
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
        open_cells = _sign_change_cells(level) & _over_cell_corners(unknown, torch.logical_or)
        if not bool(open_cells.any()):
            return num_queries
        num_queries += _evaluate_level(sdf_fn, axes, values, known, step, _corners_of_cells(open_cells), chunk_size)


def _over_cell_corners(level: Tensor, reduce: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Reduce the 8 corner values of every cell of a node grid (e.g. booleans with logical_or) to one per cell."""
    for _ in range(3):  # one axis at a time; moving it last brings the next one first
        level = reduce(level[:-1], level[1:]).movedim(0, -1)
    return level


def _nodes_of_cells(cells: Tensor) -> Tensor:
    """Nodes of the grid at half the step that lie in (or on the border of) any marked cell."""
    for _ in range(3):
        nodes = cells.new_zeros((2 * cells.shape[0] + 1, *cells.shape[1:]))
        nodes[1::2] = cells
        nodes[:-1:2] |= cells
        nodes[2::2] |= cells
        cells = nodes.movedim(0, -1)
    return cells


def _corners_of_cells(cells: Tensor) -> Tensor:
    """Nodes of the same grid that are a corner of any marked cell."""
    for _ in range(3):
        nodes = cells.new_zeros((cells.shape[0] + 1, *cells.shape[1:]))
        nodes[:-1] |= cells
        nodes[1:] |= cells
        cells = nodes.movedim(0, -1)
    return cells


def _upsample(level: Tensor) -> Tensor:
    """Give each node of the grid at half the step the value of its cell's lower corner."""
    for _ in range(3):
        finer = level.new_empty((2 * level.shape[0] - 1, *level.shape[1:]))
        finer[::2] = level
        finer[1::2] = level[:-1]
        level = finer.movedim(0, -1)
    return level


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


def _marching_cubes(
    grid: Tensor, box_min: np.ndarray, spacing: np.ndarray, keep_largest_component: bool
) -> trimesh.Trimesh:
    """Mesh level 0 of an SDF grid in world coordinates, without degenerate parts.

    PyMCubes runs on ``-sdf`` block by block, only in the blocks of ``_MC_BLOCK``³ cells that
    hold a face: the triangles of the whole grid in a fraction of the time, since a head's
    surface crosses few blocks. Neighbouring blocks both make the vertices on their shared
    face; ``_weld_grid_vertices`` joins them by the grid edge they lie on.
    """
    occupied = _blocks_holding(_sign_change_cells(grid), _MC_BLOCK).nonzero().tolist()
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
        return trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64), process=False)
    vertices, faces = _weld_grid_vertices(np.concatenate(vertices), np.concatenate(faces), field.shape)
    mesh = trimesh.Trimesh(box_min + vertices * spacing, faces, process=False)
    if keep_largest_component and len(mesh.faces) > 0:
        mesh = max(mesh.split(only_watertight=False), key=lambda part: len(part.faces))
    return mesh


# A marching-cubes vertex this close to a grid node (in voxels) is that node.
_NODE_SNAP = 1.0e-9


def _weld_grid_vertices(
    vertices: np.ndarray, faces: np.ndarray, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """One vertex per grid edge (or node) the surface crosses; faces that collapse or repeat dropped.

    Marching-cubes vertices (in grid units) lie on grid edges: two coordinates are whole
    numbers and the third is not, unless the vertex sits on a node (an SDF value of 0 there).
    The lower node and the edge's axis name the vertex exactly, whichever block made it, with
    no tolerance on world coordinates and no sorting of coordinate rows. A face left with a
    repeated vertex (nodes on the surface) has no area; two faces on the same three vertices
    are kept once.
    """
    rounded = np.rint(vertices)
    whole = np.abs(vertices - rounded) <= _NODE_SNAP
    vertices = np.where(whole, rounded, vertices)
    axis = np.where(whole.all(axis=1), 3, np.argmin(whole, axis=1))
    node = np.floor(vertices).astype(np.int64)
    keys = ((node[:, 0] * shape[1] + node[:, 1]) * shape[2] + node[:, 2]) * 4 + axis
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    faces = inverse.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 2] != faces[:, 0])]
    # A face's vertices are neighbours on the grid, so their indices (in grid order) lie within
    # `span` of its lowest one: (lowest, offsets) is a short exact key.
    ordered = np.sort(faces, axis=1)
    offsets = ordered[:, 1:] - ordered[:, :1]
    span = int(offsets.max(initial=0)) + 1
    _, kept = np.unique((ordered[:, 0] * span + offsets[:, 0]) * span + offsets[:, 1], return_index=True)
    return vertices[first], faces[np.sort(kept)]


def _blocks_holding(cells: Tensor, block: int) -> Tensor:
    """Which blocks of ``block``³ cells (a partition from cell 0, the last ones cut short) hold a marked cell."""
    counts = [-(-n // block) for n in cells.shape]
    padded = cells.new_zeros([n * block for n in counts])
    padded[: cells.shape[0], : cells.shape[1], : cells.shape[2]] = cells
    blocks = padded.view(counts[0], block, counts[1], block, counts[2], block)
    return blocks.any(dim=5).any(dim=3).any(dim=1)


def _vertex_colors(color_fn: ColorFn, vertices: np.ndarray, chunk_size: int, device: torch.device) -> np.ndarray:
    """Query ``color_fn`` at the vertices in chunks; return uint8 RGBA (alpha 255)."""
    points = torch.as_tensor(vertices, dtype=torch.float32, device=device)
    chunks = []
    for chunk in points.split(chunk_size):
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
