"""Rebuild `ict_facekit.npz` from a checkout of the official ICT-VGL/ICT-FaceKit repository.

Read from `<repo>/FaceXModel/`: `generic_neutral_mesh.obj` (vertices, texture coordinates,
polygons, `usemtl` groups), `identityNNN.obj` (sorted by name), one `<expression>.obj` per
name in `vertex_indices.json["expressions"]`, and from that JSON `idx_to_landmark_verts` and
`idx_to_rigid_verts`. The part, subpart and jawline tables are not in any data file: they are
the upstream README's tables, held here as `ICT_LIGHT_LAYOUT` (with half-open ranges).
Derived fields: triangles (quads (a,b,c,d) split into (a,b,c), (a,c,d)), per-part triangle
ranges, one UV per vertex, the neck boundary loop of the skin parts and `head_size`.
The fields, dtypes and units are those `diffnphr.data.ict.load_ict` reads (format version 1).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffnphr.data.ict import ARCHIVE_FORMAT_VERSION, SKIN_PARTS

SOURCE_REPO = "ICT-VGL/ICT-FaceKit"
MODEL_DIR = "FaceXModel"


@dataclass(frozen=True)
class ICTLayout:
    """Named vertex/polygon ranges of a mesh topology (half-open) and its jawline vertices."""

    part_names: tuple[str, ...]
    part_vertex_range: tuple[tuple[int, int], ...]
    part_polygon_range: tuple[tuple[int, int], ...]
    subpart_names: tuple[str, ...]
    subpart_vertex_range: tuple[tuple[int, int], ...]
    subpart_polygon_range: tuple[tuple[int, int], ...]
    jawline_right: tuple[int, ...]
    jawline_left: tuple[int, ...]

    @property
    def num_vertices(self) -> int:
        """Vertex count the layout describes (end of its last part)."""
        return max(stop for _, stop in self.part_vertex_range)

    @property
    def num_polygons(self) -> int:
        """Polygon count the layout describes (end of its last part)."""
        return max(stop for _, stop in self.part_polygon_range)


def _teeth() -> tuple[tuple[str, ...], tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
    """The 32 teeth of the upstream README's "Teeth Details" table, in its order."""
    kinds = ("molar3", "molar2", "molar1", "bicuspid2", "bicuspid1", "canine", "incisor_lat", "incisor_cen")
    names = []
    for jaw in ("upper", "lower"):
        names += [f"tooth_{kind}_{jaw}_left" for kind in kinds]
        names += [f"tooth_{kind}_{jaw}_right" for kind in reversed(kinds)]
    vertex_starts = (
        17039,
        17230,
        17416,
        17607,
        17730,
        17895,
        17991,
        18067,
        18143,
        18219,
        18295,
        18391,
        18556,
        18679,
        18870,
        19056,
        19247,
        19426,
        19602,
        19814,
        19952,
        20079,
        20169,
        20263,
        20349,
        20435,
        20529,
        20619,
        20746,
        20884,
        21096,
        21272,
        21451,
    )
    polygon_starts = (
        17006,
        17204,
        17398,
        17593,
        17718,
        17886,
        17980,
        18054,
        18128,
        18202,
        18276,
        18370,
        18538,
        18663,
        18858,
        19052,
        19250,
        19434,
        19616,
        19832,
        19973,
        20104,
        20194,
        20289,
        20373,
        20457,
        20552,
        20642,
        20773,
        20914,
        21130,
        21312,
        21496,
    )
    return tuple(names), _consecutive_ranges(vertex_starts), _consecutive_ranges(polygon_starts)


def _consecutive_ranges(starts: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """[starts[k], starts[k+1]) for each k: the table's rows, which follow each other."""
    return tuple(itertools.pairwise(starts))


_TOOTH_NAMES, _TOOTH_VERTICES, _TOOTH_POLYGONS = _teeth()

ICT_LIGHT_LAYOUT = ICTLayout(
    part_names=(
        "face",
        "head_and_neck",
        "mouth_socket",
        "eye_socket_left",
        "eye_socket_right",
        "gums_and_tongue",
        "teeth",
        "eyeball_left",
        "eyeball_right",
        "lacrimal_fluid_left",
        "lacrimal_fluid_right",
        "eye_blend_left",
        "eye_blend_right",
        "eye_occlusion_left",
        "eye_occlusion_right",
        "eyelashes_left",
        "eyelashes_right",
    ),
    part_vertex_range=(
        (0, 9409),
        (9409, 11248),
        (11248, 13294),
        (13294, 13678),
        (13678, 14062),
        (14062, 17039),
        (17039, 21451),
        (21451, 23021),
        (23021, 24591),
        (24591, 24795),
        (24795, 24999),
        (24999, 25023),
        (25023, 25047),
        (25047, 25199),
        (25199, 25351),
        (25351, 26035),
        (26035, 26719),
    ),
    part_polygon_range=(
        (0, 9230),
        (9230, 11144),
        (11144, 13226),
        (13226, 13630),
        (13630, 14034),
        (14034, 17006),
        (17006, 21496),
        (21496, 23094),
        (23094, 24692),
        (24692, 24855),
        (24855, 25018),
        (25018, 25033),
        (25033, 25048),
        (25048, 25176),
        (25176, 25304),
        (25304, 25844),
        (25844, 26384),
    ),
    subpart_names=("face_narrow_area", "sclera_left", "iris_left", "sclera_right", "iris_right") + _TOOTH_NAMES,
    subpart_vertex_range=((0, 6706), (21451, 22221), (22221, 23021), (23021, 23791), (23791, 24591)) + _TOOTH_VERTICES,
    subpart_polygon_range=((0, 6560), (21496, 22296), (22296, 23094), (23094, 23894), (23894, 24692)) + _TOOTH_POLYGONS,
    jawline_right=(1278, 1272, 12, 1834, 243, 781, 2199, 1447),
    jawline_left=(3661, 4390, 3022, 2484, 4036, 2253, 3490, 3496),
)


def convert_ict_repo(ict_repo_dir: Path, out_npz: Path, layout: ICTLayout = ICT_LIGHT_LAYOUT) -> Path:
    """Build the ICT-FaceKit archive from the official repository's OBJ files; returns `out_npz`.

    This is how a user without the project's copy reproduces `ict_facekit.npz`
    (`python -m diffnphr convert-ict ICT_REPO_DIR OUT.npz`). `layout` is the README's part
    table; only a different topology (such as a test's tiny mesh) needs another one.
    """
    model_dir = Path(ict_repo_dir) / MODEL_DIR
    neutral_path = model_dir / "generic_neutral_mesh.obj"
    indices_path = model_dir / "vertex_indices.json"
    for required in (neutral_path, indices_path):
        if not required.is_file():
            raise FileNotFoundError(
                f"{required} not found: give the root of a checkout of {SOURCE_REPO} (the folder holding {MODEL_DIR}/)"
            )
    mesh = _read_obj(neutral_path)
    if len(mesh.vertices) != layout.num_vertices or len(mesh.polygon_sides) != layout.num_polygons:
        raise ValueError(
            f"{neutral_path} has {len(mesh.vertices)} vertices and {len(mesh.polygon_sides)} polygons; the ICT Face "
            f"Model Light layout has {layout.num_vertices} and {layout.num_polygons} (a different model version?)"
        )
    indices = json.loads(indices_path.read_text())
    expression_names = [str(name) for name in indices["expressions"]]
    identity_paths = sorted(model_dir.glob("identity*.obj"))
    if not identity_paths:
        raise FileNotFoundError(f"no identity*.obj files in {model_dir}")

    first_triangle = np.concatenate([[0], np.cumsum(mesh.polygon_sides.astype(np.int64) - 2)])
    skin_faces = _faces_of_parts(mesh.faces, first_triangle, layout, SKIN_PARTS)
    skin_vertices = np.concatenate(
        [np.arange(*layout.part_vertex_range[layout.part_names.index(name)]) for name in ("face", "head_and_neck")]
    )
    extent = np.ptp(mesh.vertices[skin_vertices], axis=0) if len(skin_vertices) else np.zeros(3)

    archive = dict(
        format_version=np.int32(ARCHIVE_FORMAT_VERSION),
        source_repo=np.str_(SOURCE_REPO),
        source_commit=np.str_(_git_commit(Path(ict_repo_dir))),
        units=np.str_("cm (approximately; see README)"),
        neutral_vertices=mesh.vertices.astype(np.float32),
        faces=mesh.faces.astype(np.int32),
        face_polygon=np.repeat(np.arange(len(mesh.polygon_sides)), mesh.polygon_sides - 2).astype(np.int32),
        polygon_sides=mesh.polygon_sides.astype(np.int8),
        face_material=mesh.face_material.astype(np.int8),
        material_names=np.array(mesh.material_names, dtype=np.str_),
        uv_coords=mesh.uv_coords.astype(np.float32),
        faces_uv=mesh.faces_uv.astype(np.int32),
        uv_vertex=_uv_per_vertex(mesh).astype(np.float32),
        identity_deltas=_deltas(identity_paths, mesh.vertices),
        expression_deltas=_deltas([model_dir / f"{name}.obj" for name in expression_names], mesh.vertices),
        identity_names=np.array([p.stem for p in identity_paths], dtype=np.str_),
        expression_names=np.array(expression_names, dtype=np.str_),
        part_names=np.array(layout.part_names, dtype=np.str_),
        part_vertex_range=np.array(layout.part_vertex_range, dtype=np.int32).reshape(-1, 2),
        part_polygon_range=np.array(layout.part_polygon_range, dtype=np.int32).reshape(-1, 2),
        part_face_range=_triangle_ranges(first_triangle, layout.part_polygon_range),
        subpart_names=np.array(layout.subpart_names, dtype=np.str_),
        subpart_vertex_range=np.array(layout.subpart_vertex_range, dtype=np.int32).reshape(-1, 2),
        subpart_polygon_range=np.array(layout.subpart_polygon_range, dtype=np.int32).reshape(-1, 2),
        subpart_face_range=_triangle_ranges(first_triangle, layout.subpart_polygon_range),
        landmarks_68=np.array(indices["idx_to_landmark_verts"], dtype=np.int32),
        jawline_right=np.array(layout.jawline_right, dtype=np.int32),
        jawline_left=np.array(layout.jawline_left, dtype=np.int32),
        rigid_vertices=np.array(indices["idx_to_rigid_verts"], dtype=np.int32),
        neck_boundary_loop=_outward_boundary_loop(skin_faces).astype(np.int32),
        head_size=np.float32(np.linalg.norm(extent)),
    )
    out_npz = Path(out_npz)
    out_npz.parent.mkdir(parents=True, exist_ok=True)
    with out_npz.open("wb") as handle:
        np.savez_compressed(handle, **archive)
    return out_npz


@dataclass(frozen=True)
class _ObjMesh:
    vertices: np.ndarray  # (V, 3) float64
    uv_coords: np.ndarray  # (U, 2)
    faces: np.ndarray  # (T, 3) triangles
    faces_uv: np.ndarray  # (T, 3)
    polygon_sides: np.ndarray  # (P,)
    face_material: np.ndarray  # (T,)
    material_names: list[str]


def _read_obj(path: Path) -> _ObjMesh:
    """Vertices, UVs and fan-triangulated polygons of an OBJ whose faces are `v/vt[/vn]`."""
    vertices, uvs, faces, faces_uv, sides, materials, names = [], [], [], [], [], [], []
    current = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        fields = raw.split()
        if not fields:
            continue
        if fields[0] == "v":
            vertices.append(fields[1:4])
        elif fields[0] == "vt":
            uvs.append(fields[1:3])
        elif fields[0] == "usemtl":
            name = fields[1] if len(fields) > 1 else ""
            if name not in names:
                names.append(name)
            current = names.index(name)
        elif fields[0] == "f":
            corners = [corner.split("/") for corner in fields[1:]]
            if len(corners) < 3 or any(len(c) < 2 or not c[1] for c in corners):
                raise ValueError(f"{path}:{number}: faces must have at least 3 corners written as v/vt")
            v = [int(c[0]) - 1 for c in corners]
            t = [int(c[1]) - 1 for c in corners]
            for k in range(1, len(v) - 1):
                faces.append((v[0], v[k], v[k + 1]))
                faces_uv.append((t[0], t[k], t[k + 1]))
                materials.append(current)
            sides.append(len(v))
    return _ObjMesh(
        vertices=np.array(vertices, dtype=np.float64).reshape(-1, 3),
        uv_coords=np.array(uvs, dtype=np.float64).reshape(-1, 2),
        faces=np.array(faces, dtype=np.int64).reshape(-1, 3),
        faces_uv=np.array(faces_uv, dtype=np.int64).reshape(-1, 3),
        polygon_sides=np.array(sides, dtype=np.int64),
        face_material=np.array(materials, dtype=np.int64),
        material_names=names or [""],
    )


def _read_obj_vertices(path: Path) -> np.ndarray:
    """Only the `v` lines of an OBJ, as (V, 3) float64."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (listed by vertex_indices.json or expected beside the neutral mesh)")
    lines = [line[2:] for line in path.read_bytes().splitlines() if line.startswith(b"v ")]
    return np.array(b" ".join(lines).split(), dtype=np.float64).reshape(-1, 3)


def _deltas(paths: list[Path], neutral: np.ndarray) -> np.ndarray:
    """(len(paths), V, 3) float16 of each OBJ's vertices minus the neutral ones."""
    deltas = np.empty((len(paths),) + neutral.shape, dtype=np.float16)
    for row, path in enumerate(paths):
        shape = _read_obj_vertices(path)
        if shape.shape != neutral.shape:
            raise ValueError(f"{path} has {len(shape)} vertices, the neutral mesh {len(neutral)}")
        deltas[row] = shape - neutral
    return deltas


def _uv_per_vertex(mesh: _ObjMesh) -> np.ndarray:
    """The UV of the first triangle corner that uses each vertex (0 for unused vertices)."""
    uv = np.zeros((len(mesh.vertices), 2))
    vertex, first = np.unique(mesh.faces.ravel(), return_index=True)
    uv[vertex] = mesh.uv_coords[mesh.faces_uv.ravel()[first]]
    return uv


def _triangle_ranges(first_triangle: np.ndarray, polygon_ranges: tuple[tuple[int, int], ...]) -> np.ndarray:
    """(n, 2) int32 triangle ranges of polygon ranges, `first_triangle[p]` being polygon p's first triangle."""
    return first_triangle[np.array(polygon_ranges, dtype=np.int64).reshape(-1, 2)].astype(np.int32)


def _faces_of_parts(
    faces: np.ndarray, first_triangle: np.ndarray, layout: ICTLayout, names: tuple[str, ...]
) -> np.ndarray:
    rows = []
    for name in names:
        if name not in layout.part_names:
            raise ValueError(f"the layout has no part {name!r}; the skin parts are {', '.join(names)}")
        start, stop = layout.part_polygon_range[layout.part_names.index(name)]
        rows.append(faces[first_triangle[start] : first_triangle[stop]])
    return np.concatenate(rows)


def _outward_boundary_loop(faces: np.ndarray) -> np.ndarray:
    """The single boundary loop of `faces`, ordered so that fan triangles (l[i], l[i+1], c) face outward.

    The loop is walked along the boundary edges' direction in the mesh, starting at the first
    boundary edge in face order, then reversed: a cap triangle must traverse its shared edge
    opposite to the mesh triangle beside it.
    """
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    _, inverse, counts = np.unique(np.sort(directed, axis=1), axis=0, return_inverse=True, return_counts=True)
    boundary = directed[counts[inverse.ravel()] == 1]
    successor = dict(zip(boundary[:, 0].tolist(), boundary[:, 1].tolist()))
    if len(boundary) == 0 or len(successor) != len(boundary):
        raise ValueError(
            "the skin parts should have exactly one simple boundary loop (the neck cut); found none or a branching one"
        )
    loop = [int(boundary[0, 0])]
    while successor[loop[-1]] != loop[0]:
        loop.append(successor[loop[-1]])
        if len(loop) > len(boundary):
            raise ValueError("the boundary of the skin parts is not one closed loop")
    if len(loop) != len(boundary):
        raise ValueError(
            f"the skin parts have several boundary loops ({len(boundary)} boundary edges, "
            f"first loop {len(loop)}); expected only the neck cut"
        )
    return np.array(loop[::-1], dtype=np.int64)


def _git_commit(repo_dir: Path) -> str:
    """The checked-out commit of `repo_dir` read from `.git`, or "unknown"."""
    git = repo_dir / ".git"
    head_file = git / "HEAD"
    if not head_file.is_file():
        return "unknown"
    head = head_file.read_text().strip()
    if not head.startswith("ref:"):
        return head
    ref = head.split(None, 1)[1]
    if (git / ref).is_file():
        return (git / ref).read_text().strip()
    packed = git / "packed-refs"
    if packed.is_file():
        for line in packed.read_text().splitlines():
            if line.endswith(" " + ref):
                return line.split()[0]
    return "unknown"
