"""The ICT-FaceKit archive: loading, the canonical frame, and rebuilding it from OBJ files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh

from diffnphr.data.ict import SKIN_PARTS, load_ict
from diffnphr.data.ict_convert import ICTLayout, convert_ict_repo
from diffnphr.frame import BOX_MAX, BOX_MIN, CM_PER_UNIT, ICT_TO_CANONICAL_OFFSET


@pytest.fixture(scope="module")
def model():
    return load_ict()


def test_archive_has_the_documented_contents(model):
    assert model.neutral.shape == (26719, 3)
    assert model.faces.shape == (52220, 3)
    assert model.identity_modes.shape == (100, 26719, 3)
    assert model.expression_modes.shape == (53, 26719, 3)
    assert model.expression_names[0] == "browDown_L" and "jawOpen" in model.expression_names
    assert len(model.neck_boundary_loop) == 54
    assert not model.neutral.flags.writeable


def test_frame_is_monononphm_canonical(model):
    skin = np.concatenate([model.neutral[model.part_vertices(p)] for p in ("face", "head_and_neck")])
    landmarks = model.neutral[model.landmarks_68]
    # Scale: outer eye corners are 8.9 cm apart, 1 unit = 25 cm.
    assert np.linalg.norm(landmarks[36] - landmarks[45]) * CM_PER_UNIT == pytest.approx(8.9, abs=0.1)
    # Axes: +y up (crown above chin), +z forward (nose tip is the frontmost point), +x subject's left.
    assert skin[:, 1].max() > landmarks[8, 1] + 0.5
    assert landmarks[30, 2] == pytest.approx(skin[:, 2].max(), abs=1e-3)
    assert model.neutral[model.part_vertices("eye_socket_left"), 0].min() > 0
    assert model.neutral[model.part_vertices("eye_socket_right"), 0].max() < 0
    assert landmarks[45, 0] > 0 > landmarks[36, 0]  # Multi-PIE 45 is the subject's left eye corner
    # The head (everything above the box floor) sits inside the extraction box with margins.
    head = skin[skin[:, 1] >= np.array(BOX_MIN)[1]]
    assert np.all(head.min(axis=0) - np.array(BOX_MIN) >= [0.05, 0.0, 0.2])
    assert np.all(np.array(BOX_MAX) - head.max(axis=0) >= [0.05, 0.05, 0.2])
    assert skin[:, 0].min() == pytest.approx(-skin[:, 0].max(), abs=1e-6)


def test_missing_archive_names_the_three_options(tmp_path, monkeypatch):
    monkeypatch.setenv("DIFFNPHR_ICT", str(tmp_path / "absent.npz"))
    with pytest.raises(FileNotFoundError, match=r"DIFFNPHR_ICT.*convert-ict") as error:
        load_ict()
    assert "absent.npz" in str(error.value) and "shared/ict_facekit" in str(error.value)
    with pytest.raises(FileNotFoundError, match="given path"):
        load_ict(tmp_path / "other.npz")


def test_archive_without_the_fields_is_rejected(tmp_path):
    np.savez(tmp_path / "wrong.npz", neutral_vertices=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="not an ICT-FaceKit archive"):
        load_ict(tmp_path / "wrong.npz")


# A tiny stand-in for the ICT repository: an open box (5 quads, 'face') whose rim is the
# neck loop, plus a tetrahedron ('teeth'), two identities and two expressions.
BOX = np.array(
    [[-1, -1, -1], [1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 1], [1, -1, 1], [1, 1, 1], [-1, 1, 1]], float
)
TETRA = np.array([[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5]], float)
BOX_QUADS = [(4, 5, 6, 7), (0, 4, 7, 3), (0, 1, 5, 4), (1, 2, 6, 5), (3, 7, 6, 2)]  # outward, no z = -1 side
TETRA_TRIS = [(8, 10, 9), (8, 9, 11), (8, 11, 10), (9, 10, 11)]
TINY_LAYOUT = ICTLayout(
    part_names=SKIN_PARTS + ("teeth",),
    part_vertex_range=((0, 8), (8, 8), (8, 8), (8, 8), (8, 8), (8, 12)),
    part_polygon_range=((0, 5), (5, 5), (5, 5), (5, 5), (5, 5), (5, 9)),
    subpart_names=("tooth_a",),
    subpart_vertex_range=((8, 12),),
    subpart_polygon_range=((5, 9),),
    jawline_right=(0, 3),
    jawline_left=(1, 2),
)


def _write_tiny_repo(root: Path) -> dict[str, np.ndarray]:
    folder = root / "FaceXModel"
    folder.mkdir(parents=True)
    neutral = np.concatenate([BOX, TETRA])
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    lines = [f"v {x:.9f} {y:.9f} {z:.9f}" for x, y, z in neutral] + [f"vt {u} {v}" for u, v in uvs]
    lines.append("usemtl M_Face")
    lines += ["f " + " ".join(f"{v + 1}/{k + 1}" for k, v in enumerate(quad)) for quad in BOX_QUADS]
    lines.append("usemtl M_Teeth")
    lines += ["f " + " ".join(f"{v + 1}/{k + 1}/1" for k, v in enumerate(tri)) for tri in TETRA_TRIS]
    (folder / "generic_neutral_mesh.obj").write_text("mtllib x.mtl\n" + "\n".join(lines) + "\n")
    rng = np.random.default_rng(0)
    shapes = {
        name: neutral + rng.normal(0, 0.1, neutral.shape)
        for name in ("identity000", "identity001", "jawOpen", "mouthSmile_L")
    }
    for name, vertices in shapes.items():
        (folder / f"{name}.obj").write_text("".join(f"v {x:.9f} {y:.9f} {z:.9f}\n" for x, y, z in vertices))
    (folder / "vertex_indices.json").write_text(
        json.dumps(
            {
                "expressions": ["jawOpen", "mouthSmile_L"],
                "idx_to_landmark_verts": [4, 5, 6],
                "idx_to_rigid_verts": [0, 1],
            }
        )
    )
    return {"neutral": neutral, **shapes}


def test_convert_tiny_repository_gives_what_load_expects(tmp_path):
    shapes = _write_tiny_repo(tmp_path / "ict")
    out = convert_ict_repo(tmp_path / "ict", tmp_path / "out" / "tiny.npz", layout=TINY_LAYOUT)
    assert out == tmp_path / "out" / "tiny.npz"
    model = load_ict(out)

    np.testing.assert_allclose(model.neutral, shapes["neutral"] / 25 + ICT_TO_CANONICAL_OFFSET, atol=1e-6)
    np.testing.assert_allclose(model.identity_modes[1], (shapes["identity001"] - shapes["neutral"]) / 25, atol=1e-5)
    np.testing.assert_allclose(model.expression_modes[0], (shapes["jawOpen"] - shapes["neutral"]) / 25, atol=1e-5)
    assert model.expression_names == ("jawOpen", "mouthSmile_L")
    # Quads (a, b, c, d) become (a, b, c), (a, c, d); triangles stay.
    np.testing.assert_array_equal(model.faces[:2], [[4, 5, 6], [4, 6, 7]])
    np.testing.assert_array_equal(model.faces[10:], TETRA_TRIS)
    assert model.material_names == ("M_Face", "M_Teeth")
    np.testing.assert_array_equal(model.face_material, [0] * 10 + [1] * 4)
    np.testing.assert_array_equal(model.part_face_range[-1], [10, 14])
    np.testing.assert_array_equal(model.subpart_face_range, [[10, 14]])
    np.testing.assert_array_equal(model.landmarks_68, [4, 5, 6])
    np.testing.assert_array_equal(model.uv_vertex[[4, 5, 6, 7]], [[0, 0], [1, 0], [1, 1], [0, 1]])
    # The neck loop is the box's open rim; capping it as documented closes the box outward.
    assert sorted(model.neck_boundary_loop.tolist()) == [0, 1, 2, 3]
    loop = model.neck_boundary_loop
    cap = np.stack([loop, np.roll(loop, -1), np.full(4, 12)], axis=1)
    vertices = np.concatenate([model.neutral, model.neutral[loop].mean(axis=0, keepdims=True)])
    closed = trimesh.Trimesh(vertices, np.concatenate([model.faces[:10], cap]), process=False)
    assert closed.is_watertight and closed.is_winding_consistent
    assert closed.volume == pytest.approx(8 / 25**3, rel=1e-4)


def test_convert_rejects_a_foreign_model(tmp_path):
    _write_tiny_repo(tmp_path / "ict")
    with pytest.raises(ValueError, match="26719"):
        convert_ict_repo(tmp_path / "ict", tmp_path / "out.npz")
    with pytest.raises(FileNotFoundError, match="checkout of ICT-VGL/ICT-FaceKit"):
        convert_ict_repo(tmp_path / "nowhere", tmp_path / "out.npz")
