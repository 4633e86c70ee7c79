"""Heads made from the ICT model, and the closed surfaces they all share.

A head is `neutral + identity_modes · a + expression_modes · b` (the model is linear and
additive): `a` holds one N(0, 1) coefficient per identity mode (the modes already carry their
standard deviation; `sample_identities` can scale them down or up), `b` holds blendshape
weights in [0, 1] (`diffnphr.data.expressions.sample_expressions`). All heads share one
topology, so everything below is computed once and indexes any head's vertices.

Surfaces (`HeadSurface`), in MonoNPHM's canonical frame:

* **skin**: parts face + head_and_neck + mouth_socket + eye_socket_left/right, one manifold
  whose only boundary is the neck cut; the cut is capped with a fan of triangles
  `(loop[i], loop[i+1], c)` around the loop's centroid `c`, an extra vertex. The result is
  watertight, consistently wound outward, genus 0, for every identity and expression (the
  topology never changes; strong shapes can make lips or lids overlap locally).
* **eyeballs**: the closed outer sclera/cornea shells (`sclera_left/right`); the iris shells
  nested inside them are left out. About 2/3 of a shell lies inside the skin solid.
* **teeth**: ICT's 32 closed tooth shells (the lower ones follow the jaw), so an open mouth
  shows them.

The head's solid is the union of these, so only triangles bounding that union are training
surface: `exposed_faces` decides it per head (batched torch), because identity changes where
an eyeball pokes through its socket and lids close over the cornea (with eyeBlink about 93 %
of an eyeball is covered, on the mean head 64 %). A vertex is hidden when its winding number
for another component's solid is positive (counted along a ray, which stays right where lids
overlap themselves); only vertices near an eyeball are tested (`ExposureTest`). The teeth sit
in the gums the same way on every head (the lower ones move with the gums), so which of
their vertices the skin covers, and which skin vertices they cover, is decided once, on the
mean head with the jaw half open (`HeadSurface.always_hidden`). Gums/tongue (an open surface)
are not training surface.
Hair (`diffnphr.data.hair`) joins this union in `diffnphr.data.head_geometry`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch
import trimesh

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

COMPONENTS = ("skin", "eyeball_left", "eyeball_right", "teeth")
SHELLS = ("sclera_left", "sclera_right", "teeth")
"""The closed ICT parts beside the skin, in the order of `COMPONENTS[1:]`."""
# Rays of the inside tests: near +z, tilted so they do not run along the mesh's axis-aligned features.
_RAY = np.array([0.0013, 0.0021, 1.0]) / np.linalg.norm([0.0013, 0.0021, 1.0])
_TILE = 64  # query vertices tested together against the triangles their rays can reach


class ExposureTest(NamedTuple):
    """Query vertex rows whose exposure can change from head to head, and the triangles of the
    closed solid that may cover them."""

    queries: np.ndarray
    solid: np.ndarray

    def to(self, device: torch.device | str) -> ExposureTest:
        """The same test with its rows as long tensors on `device`."""
        return ExposureTest(
            torch.as_tensor(self.queries, dtype=torch.long, device=device),
            torch.as_tensor(self.solid, dtype=torch.long, device=device),
        )


def head_vertices(model: ICTFaceModel, identity: np.ndarray, expression: np.ndarray | None = None) -> np.ndarray:
    """(V, 3) vertices of one head from identity coefficients (I,) and expression weights (E,)."""
    identity = np.asarray(identity, dtype=np.float32)
    if identity.shape != (model.identity_modes.shape[0],):
        raise ValueError(
            f"identity coefficients must have shape ({model.identity_modes.shape[0]},), got {identity.shape}"
        )
    vertices = model.neutral + np.tensordot(identity, model.identity_modes, axes=1)
    if expression is not None:
        expression = np.asarray(expression, dtype=np.float32)
        if expression.shape != (len(model.expression_names),):
            raise ValueError(
                f"expression weights must have shape ({len(model.expression_names)},), got {expression.shape}"
            )
        vertices = vertices + np.tensordot(expression, model.expression_modes, axes=1)
    return vertices.astype(np.float32)


def sample_identities(rng: np.random.Generator, count: int, num_modes: int, scale: float = 1.0) -> np.ndarray:
    """(count, num_modes) identity coefficients, independent N(0, scale²) per mode.

    scale 1 is upstream's own sampler; beyond about 2 the lips start to pass through each other.
    """
    if count < 0 or scale < 0:
        raise ValueError(f"count and scale must be non-negative, got {count} and {scale}")
    return (rng.standard_normal((count, num_modes)) * scale).astype(np.float32)


@dataclass(frozen=True)
class HeadSurface:
    """The closed surfaces of every head, over a compact vertex array (see the module docstring).

    Rows `0..N-1` of that array are ICT vertices `vertex_ids`; row N is the neck-cap centre,
    the mean of rows `cap_loop_rows`. `faces` index rows and are wound outward.
    `exposure_tests` pairs the vertex rows whose exposure can change from head to head with
    the triangles of the closed solid that may cover them (an eyeball, or the skin around it);
    `always_hidden` marks the rows hidden on every head.
    """

    vertex_ids: np.ndarray  # (N,) int64
    cap_loop_rows: np.ndarray  # (L,) int64
    faces: np.ndarray  # (F, 3) int64
    component: np.ndarray  # (F,) int64 index into COMPONENTS
    face_region: np.ndarray  # (F,) bool: triangles of the ICT `face` part
    exposure_tests: tuple[ExposureTest, ...]
    always_hidden: np.ndarray  # (N+1,) bool: rows hidden on every head (teeth roots, skin inside teeth)

    def vertices(self, ict_vertices: np.ndarray) -> np.ndarray:
        """(N+1, 3) surface vertices of a head from its (V, 3) ICT vertices."""
        rows = ict_vertices[self.vertex_ids]
        return np.concatenate([rows, rows[self.cap_loop_rows].mean(axis=0, keepdims=True)]).astype(np.float32)

    def component_mesh(self, ict_vertices: np.ndarray, name: str) -> trimesh.Trimesh:
        """One closed component (one of `COMPONENTS`) of a head as a mesh."""
        if name not in COMPONENTS:
            raise ValueError(f"unknown surface component {name!r}; choose one of {', '.join(COMPONENTS)}")
        faces = self.faces[self.component == COMPONENTS.index(name)]
        used, local = np.unique(faces, return_inverse=True)
        return trimesh.Trimesh(self.vertices(ict_vertices)[used], local.reshape(-1, 3), process=False)


def head_surface(model: ICTFaceModel, motion_margin: float = 0.04) -> HeadSurface:
    """The skin (capped), eyeball and teeth surfaces of the model and the exposure tests they need.

    Exposure candidates are chosen on the mean head with `motion_margin` (canonical units;
    0.04 = 1 cm, about the largest lid motion relative to the eyeball) of slack: skin vertices
    near an eyeball may be inside it; its vertices may be covered by the skin in front of them
    (those rays run toward +z, so only skin in their column matters). The teeth's tests run
    once, on the mean head with the jaw half open (`always_hidden`).
    """
    skin = np.concatenate([model.faces[model.part_faces(name)] for name in model.skin_parts])
    shells = [model.faces[model.part_faces(name)] for name in SHELLS]
    in_face = np.zeros(len(model.faces), dtype=bool)
    in_face[model.part_faces("face")] = True

    vertex_ids, rows = np.unique(np.concatenate([skin.ravel()] + [s.ravel() for s in shells]), return_inverse=True)
    loop_rows = np.searchsorted(vertex_ids, model.neck_boundary_loop)
    cap = np.stack([loop_rows, np.roll(loop_rows, -1), np.full_like(loop_rows, len(vertex_ids))], axis=1)
    sizes = [len(skin)] + [len(s) for s in shells]
    faces_rows = np.split(rows.reshape(-1, 3), np.cumsum(sizes)[:-1])
    faces = np.concatenate([faces_rows[0], cap] + faces_rows[1:])
    component = np.repeat(np.arange(len(COMPONENTS)), [sizes[0] + len(cap)] + sizes[1:])
    face_region = np.concatenate([in_face[model.part_faces(name)] for name in model.skin_parts])
    face_region = np.concatenate([face_region, np.zeros(len(faces) - len(face_region), dtype=bool)])

    surface = HeadSurface(vertex_ids, loop_rows, faces, component, face_region, (), np.zeros(0, dtype=bool))
    positions = surface.vertices(model.neutral)
    triangles = positions[faces]
    skin_faces = np.flatnonzero(component == 0)
    skin_rows = np.unique(faces[skin_faces])
    tests = []
    for shell in range(1, len(COMPONENTS)):
        shell_faces = np.flatnonzero(component == shell)
        low = triangles[shell_faces].reshape(-1, 3).min(axis=0) - motion_margin
        high = triangles[shell_faces].reshape(-1, 3).max(axis=0) + motion_margin
        skin_triangles = triangles[skin_faces]
        in_column = np.all(
            (skin_triangles[..., :2].max(axis=1) >= low[:2]) & (skin_triangles[..., :2].min(axis=1) <= high[:2]), axis=1
        )
        in_column &= skin_triangles[..., 2].max(axis=1) >= low[2]
        near = np.all((positions[skin_rows] >= low) & (positions[skin_rows] <= high), axis=1)
        tests.append(ExposureTest(_in_tile_order(np.unique(faces[shell_faces]), positions), skin_faces[in_column]))
        tests.append(ExposureTest(_in_tile_order(skin_rows[near], positions), shell_faces))
    teeth = len(tests) - 2
    jaw = model.expression_modes[model.expression_index("jawOpen")]
    half_open = torch.as_tensor(surface.vertices(model.neutral + 0.5 * jaw))[None]
    hidden = torch.zeros(len(positions), dtype=torch.bool)
    for test in tests[teeth:]:
        winding = _winding_by_ray_crossings(half_open[:, test.queries], half_open[:, faces[test.solid]])[0]
        hidden[test.queries] |= winding > 0
    return HeadSurface(vertex_ids, loop_rows, faces, component, face_region, tuple(tests[:teeth]), hidden.numpy())


def exposed_faces(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    exposure_tests: Sequence[ExposureTest],
    hidden: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, F) bool: triangles on the boundary of the union of the head's solids.

    `vertices` (B, N, 3) are surface vertices of B heads, `faces` and `exposure_tests` the
    surface's arrays as tensors on the same device (`ExposureTest.to`), `hidden` (N,) or
    (B, N) bool the rows known to be hidden already (`HeadSurface.always_hidden`, say). A query
    vertex is hidden when its winding number with respect to the covering solid is positive;
    a triangle is exposed unless at least two of its corners are hidden.
    """
    known = torch.zeros(vertices.shape[:2], dtype=torch.bool, device=vertices.device)
    hidden = (known | hidden.to(vertices.device) if hidden is not None else known).long()
    for queries, solid in exposure_tests:
        winding = _winding_by_ray_crossings(vertices[:, queries], vertices[:, faces[solid]])
        hidden[:, queries] |= (winding > 0).long()
    return hidden[:, faces].sum(dim=-1) <= 1


def _in_tile_order(rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """`rows` sorted along a Z-order curve of their front-view (x, y), so that consecutive
    tiles of `_TILE` query vertices are compact patches whose rays meet few triangles."""
    xy = positions[rows, :2]
    cells = ((xy - xy.min(axis=0)) / 0.004).astype(np.int64)  # 1 mm cells
    code = np.zeros(len(rows), dtype=np.int64)
    for bit in range(16):
        code |= ((cells[:, 0] >> bit) & 1) << (2 * bit) | ((cells[:, 1] >> bit) & 1) << (2 * bit + 1)
    return rows[np.argsort(code, kind="stable")]


def _winding_by_ray_crossings(points: torch.Tensor, triangles: torch.Tensor) -> torch.Tensor:
    """(B, Q) winding numbers of points (B, Q, 3) for closed meshes (B, T, 3, 3).

    Counts the triangles that a fixed ray from each point crosses, +1 leaving the solid and
    -1 entering it; unlike parity this stays right where a self-overlapping surface is
    crossed twice. Sheared so that the ray runs along +z, the crossing test is three 2D edge
    functions and one depth comparison, evaluated with one batched matmul per tile of points.
    """
    ray = torch.as_tensor(_RAY, dtype=points.dtype, device=points.device)
    shear = torch.stack([ray[0] / ray[2], ray[1] / ray[2]])
    flat_points = points[..., :2] - points[..., 2:] * shear
    corners = triangles[..., :2] - triangles[..., 2:] * shear  # (B, T, 3, 2)
    ahead, behind = corners.roll(-1, dims=2), corners.roll(1, dims=2)
    # Edge function of the edge opposite corner k, as coefficients of (x, y, 1).
    coefficients = torch.stack(
        [
            behind[..., 1] - ahead[..., 1],
            ahead[..., 0] - behind[..., 0],
            behind[..., 0] * ahead[..., 1] - ahead[..., 0] * behind[..., 1],
        ],
        dim=-1,
    )
    orientation = torch.sign((coefficients[..., 0, :2] * corners[..., 0, :]).sum(-1) + coefficients[..., 0, 2])
    coefficients = coefficients * orientation[..., None, None]  # (B, T, 3, 3): inside when all >= 0
    # Per triangle, five linear functions of (x, y, 1): the three edge functions (barycentric
    # weights times the doubled area), their z-weighted sum and their sum (the doubled area).
    linear = torch.cat(
        [coefficients, (coefficients * triangles[..., 2:]).sum(2, keepdim=True), coefficients.sum(2, keepdim=True)],
        dim=2,
    )  # (B, T, 5, 3)
    leaving = -orientation  # (B, T): +1 where the ray leaves the solid
    low, high, top = corners.amin(dim=2), corners.amax(dim=2), triangles[..., 2].amax(dim=2)
    homogeneous = torch.cat([flat_points, torch.ones_like(flat_points[..., :1])], dim=-1)
    winding = torch.zeros(points.shape[:2], dtype=points.dtype, device=points.device)
    # On the CPU each tile first drops the triangles its rays cannot meet in any head; on an
    # accelerator one dense pass per memory-sized chunk is faster than a host sync per tile.
    cull = points.device.type == "cpu"
    size = _TILE if cull else max(_TILE, (1 << 25) // max(1, 5 * points.shape[0] * triangles.shape[1]))
    for start in range(0, points.shape[1], size):
        tile = slice(start, start + size)
        keep = slice(None)
        if cull:
            reachable = (
                (high >= flat_points[:, tile].amin(dim=1, keepdim=True))
                & (low <= flat_points[:, tile].amax(dim=1, keepdim=True))
            ).all(dim=-1)
            reachable &= top >= points[:, tile, 2].amin(dim=1, keepdim=True)
            keep = reachable.any(dim=0).nonzero().squeeze(1)
            if len(keep) == 0:
                continue
        functions = linear[:, keep]
        count = functions.shape[1]
        functions = functions.permute(0, 3, 2, 1).reshape(points.shape[0], 3, 5 * count)
        w0, w1, w2, weighted_depth, area = (homogeneous[:, tile] @ functions).split(count, dim=-1)
        hit = (torch.minimum(torch.minimum(w0, w1), w2) >= 0) & (area > 0)
        hit &= weighted_depth > points[:, tile, 2:] * area
        winding[:, tile] = (hit.to(points.dtype) @ leaving[:, keep, None])[..., 0]
    return winding.round().long()
