"""ICT-FaceKit (Light) archive, loaded into MonoNPHM's canonical frame.

The archive (`ict_facekit.npz`, described in `../shared/ict_facekit/README.md`) holds the
generic neutral head, 100 identity PCA modes and 53 ARKit-style expression blendshapes as
vertex deltas in centimetres, with +y up, +z forward (nose) and +x the subject's left.

MonoNPHM's canonical frame has the same axes with 1 unit = 0.25 m, so a point in ICT
centimetres maps to canonical units as

    x_canonical = x_cm / CM_PER_UNIT + ICT_TO_CANONICAL_OFFSET,  CM_PER_UNIT = 25,
    ICT_TO_CANONICAL_OFFSET = (0, 0.08, -0.35)   (= (0, +2, -8.75) cm).

Why that translation: MonoNPHM extracts meshes in the box `frame.BOX_MIN`..`BOX_MAX` =
[-0.55,-0.5,-0.95]..[0.55,0.75,0.4]. ICT's skin (head, neck and the start of the shoulders)
is 1.35 units tall, more than the box's 1.25, so it cannot fit whole. The head is put in the
box with the same kind of margins as MonoNPHM's heads, and the box floor cuts the neck:

* x: the model is symmetric about x = 0, kept there; the head proper spans +-0.37 (ears).
* y: the mean crown sits at 0.66 (0.09 below the box top; 0.72 for the 99th-percentile
  N(0,1) identity), the chin at -0.22, the box floor at -0.5 is 7 cm below the chin.
  The ICT neck cut (y -19.3..-13.4 cm) maps to -0.69..-0.46: the neck below the box floor
  is data the decoder sees but marching cubes in that box does not extract (MonoNPHM's
  meshes end at the box floor in the same way).
* z: the mean head's front (nose tip, 0.17) and back of the skull (-0.72) are centred in
  the box's z range, 0.23 from either face (the origin lies 4.3 cm behind the nose tip).

Identity and expression deltas are only scaled (1/25), never translated.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from diffnphr.frame import CM_PER_UNIT, ICT_TO_CANONICAL_OFFSET

ICT_ENV_VAR = "DIFFNPHR_ICT"
ARCHIVE_FORMAT_VERSION = 1
SKIN_PARTS = ("face", "head_and_neck", "mouth_socket", "eye_socket_left", "eye_socket_right")
"""Parts whose faces form one connected surface with one boundary loop, the neck cut."""

_REQUIRED_FIELDS = (
    "format_version",
    "source_repo",
    "source_commit",
    "neutral_vertices",
    "faces",
    "face_material",
    "material_names",
    "uv_coords",
    "faces_uv",
    "uv_vertex",
    "identity_deltas",
    "expression_deltas",
    "expression_names",
    "part_names",
    "part_vertex_range",
    "part_face_range",
    "subpart_names",
    "subpart_vertex_range",
    "subpart_face_range",
    "landmarks_68",
    "jawline_right",
    "jawline_left",
    "rigid_vertices",
    "neck_boundary_loop",
)


@dataclass(frozen=True)
class ICTFaceModel:
    """The ICT face model in canonical units (see the module docstring); arrays are read-only.

    Vertex arrays have V rows (26719 for ICT Light); `faces` are the OBJ polygons split into
    triangles (T), counter-clockwise seen from outside. Ranges are half-open `[start, stop)`.
    """

    neutral: np.ndarray  # (V, 3) float32, canonical units
    identity_modes: np.ndarray  # (I, V, 3) float32, already scaled by each mode's std
    expression_modes: np.ndarray  # (E, V, 3) float32, for weights in [0, 1]
    expression_names: tuple[str, ...]
    faces: np.ndarray  # (T, 3) int64
    face_material: np.ndarray  # (T,) int64 index into material_names
    material_names: tuple[str, ...]
    uv_coords: np.ndarray  # (U, 2) float32
    faces_uv: np.ndarray  # (T, 3) int64 index into uv_coords
    uv_vertex: np.ndarray  # (V, 2) float32, one UV per vertex (first corner using it)
    part_names: tuple[str, ...]
    part_vertex_range: np.ndarray  # (P, 2) int64
    part_face_range: np.ndarray  # (P, 2) int64
    subpart_names: tuple[str, ...]
    subpart_vertex_range: np.ndarray  # (S, 2) int64
    subpart_face_range: np.ndarray  # (S, 2) int64
    landmarks_68: np.ndarray  # (68,) int64 Multi-PIE landmark vertices
    jawline_right: np.ndarray  # (8,) int64
    jawline_left: np.ndarray  # (8,) int64
    rigid_vertices: np.ndarray  # (R,) int64
    neck_boundary_loop: np.ndarray  # (L,) int64, cap triangles (loop[i], loop[i+1], centre) face outward
    source_commit: str

    @property
    def num_vertices(self) -> int:
        """V, the number of vertices every head has."""
        return int(self.neutral.shape[0])

    def part_vertices(self, name: str) -> slice:
        """The vertex rows owned by a part (`part_names`) or a subpart (`subpart_names`)."""
        start, stop = self._range(name, self.part_vertex_range, self.subpart_vertex_range)
        return slice(start, stop)

    @property
    def skin_parts(self) -> tuple[str, ...]:
        """The parts whose faces form the one connected skin surface (`SKIN_PARTS`), ending at the neck cut."""
        return SKIN_PARTS

    def part_faces(self, name: str) -> slice:
        """The rows of `faces` of a part (`part_names`) or a subpart (`subpart_names`)."""
        start, stop = self._range(name, self.part_face_range, self.subpart_face_range)
        return slice(start, stop)

    def expression_index(self, name: str) -> int:
        """Position of a named blendshape (e.g. "jawOpen") in `expression_modes`."""
        if name not in self.expression_names:
            raise ValueError(f"unknown ICT expression {name!r}; known: {', '.join(self.expression_names)}")
        return self.expression_names.index(name)

    def _range(self, name: str, parts: np.ndarray, subparts: np.ndarray) -> tuple[int, int]:
        if name in self.part_names:
            row = parts[self.part_names.index(name)]
        elif name in self.subpart_names:
            row = subparts[self.subpart_names.index(name)]
        else:
            raise ValueError(f"unknown ICT part {name!r}; parts: {', '.join(self.part_names + self.subpart_names)}")
        return int(row[0]), int(row[1])


def default_ict_path() -> Path:
    """`<repo>/../shared/ict_facekit/ict_facekit.npz`, where the project keeps the archive."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "ict_facekit" / "ict_facekit.npz"


def resolve_ict_path(path: str | os.PathLike | None = None) -> Path:
    """The archive to read: `path`, else `$DIFFNPHR_ICT`, else `default_ict_path()` when present."""
    if path is not None:
        chosen, origin = Path(path), "the given path"
    elif os.environ.get(ICT_ENV_VAR):
        chosen, origin = Path(os.environ[ICT_ENV_VAR]), f"${ICT_ENV_VAR}"
    else:
        chosen, origin = default_ict_path(), "the default location"
    if not chosen.is_file():
        raise FileNotFoundError(
            f"ICT-FaceKit archive not found at {chosen} ({origin}). Pass its path, set ${ICT_ENV_VAR}, "
            f"or place it at {default_ict_path()}; build it from a checkout of ICT-VGL/ICT-FaceKit with "
            "`python -m diffnphr convert-ict ICT_REPO_DIR OUT.npz`."
        )
    return chosen


def load_ict(path: str | os.PathLike | None = None) -> ICTFaceModel:
    """Read the ICT-FaceKit archive (see `resolve_ict_path`) into canonical units.

    The heads, anchors, appearance and training samples of `diffnphr.data` all start here.
    """
    archive = resolve_ict_path(path)
    try:
        data = np.load(archive)
    except (OSError, ValueError) as error:
        raise ValueError(f"{archive} is not a readable .npz archive ({error})") from error
    with data:
        missing = [name for name in _REQUIRED_FIELDS if name not in data.files]
        if missing:
            raise ValueError(f"{archive} is not an ICT-FaceKit archive: it lacks {', '.join(missing)}")
        version = int(data["format_version"])
        if version != ARCHIVE_FORMAT_VERSION:
            raise ValueError(
                f"{archive} has format_version {version}; this code reads version {ARCHIVE_FORMAT_VERSION}"
            )
        model = ICTFaceModel(
            neutral=data["neutral_vertices"].astype(np.float32) / CM_PER_UNIT + ICT_TO_CANONICAL_OFFSET,
            identity_modes=data["identity_deltas"].astype(np.float32) / CM_PER_UNIT,
            expression_modes=data["expression_deltas"].astype(np.float32) / CM_PER_UNIT,
            expression_names=tuple(str(n) for n in data["expression_names"]),
            faces=data["faces"].astype(np.int64),
            face_material=data["face_material"].astype(np.int64),
            material_names=tuple(str(n) for n in data["material_names"]),
            uv_coords=data["uv_coords"].astype(np.float32),
            faces_uv=data["faces_uv"].astype(np.int64),
            uv_vertex=data["uv_vertex"].astype(np.float32),
            part_names=tuple(str(n) for n in data["part_names"]),
            part_vertex_range=data["part_vertex_range"].astype(np.int64),
            part_face_range=data["part_face_range"].astype(np.int64),
            subpart_names=tuple(str(n) for n in data["subpart_names"]),
            subpart_vertex_range=data["subpart_vertex_range"].astype(np.int64),
            subpart_face_range=data["subpart_face_range"].astype(np.int64),
            landmarks_68=data["landmarks_68"].astype(np.int64),
            jawline_right=data["jawline_right"].astype(np.int64),
            jawline_left=data["jawline_left"].astype(np.int64),
            rigid_vertices=data["rigid_vertices"].astype(np.int64),
            neck_boundary_loop=data["neck_boundary_loop"].astype(np.int64),
            source_commit=str(data["source_commit"]),
        )
    _check_consistent(model, archive)
    for value in vars(model).values():
        if isinstance(value, np.ndarray):
            value.setflags(write=False)
    return model


def _check_consistent(model: ICTFaceModel, archive: Path) -> None:
    vertex_count = model.num_vertices
    problems = []
    if model.identity_modes.shape[1:] != model.neutral.shape or model.expression_modes.shape[1:] != model.neutral.shape:
        problems.append("identity/expression deltas do not match the neutral vertices")
    if len(model.expression_names) != model.expression_modes.shape[0]:
        problems.append("expression_names and expression_deltas differ in length")
    if model.faces.size and (model.faces.min() < 0 or model.faces.max() >= vertex_count):
        problems.append("faces index outside the vertex array")
    if len(model.part_names) != len(model.part_vertex_range) or len(model.subpart_names) != len(
        model.subpart_vertex_range
    ):
        problems.append("part names and ranges differ in length")
    if not set(SKIN_PARTS) <= set(model.part_names):
        problems.append(f"parts {', '.join(SKIN_PARTS)} are required")
    if problems:
        raise ValueError(f"{archive} is inconsistent: {'; '.join(problems)}")
