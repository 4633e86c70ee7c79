"""Training samples of whole heads with hair: shapes and devices, points on the surface, outward normals,
correspondences, colours."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.appearance import appearance_basis, appearance_params, vertex_colours
from diffnphr.data.colour import linear_to_srgb
from diffnphr.data.factors import HeadFactors
from diffnphr.data.hair_styles import CURTAIN_TOP, HAIR_KINDS, NO_HAIR, sample_hair_styles
from diffnphr.data.head_geometry import COMPONENTS
from diffnphr.data.heads import head_vertices
from diffnphr.data.ict import load_ict
from diffnphr.data.samples import SamplingConfig
from diffnphr.data.sampling import HeadSampler
from diffnphr.frame import BOX_MAX, BOX_MIN

CONFIG = SamplingConfig(surface_points=1500, near_points=600, uniform_points=200, correspondences=400)


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def sampler(model):
    return HeadSampler(model, config=CONFIG)


@pytest.fixture(scope="module")
def heads(model):
    """Two heads: the first bald without a beard (its surface is ICT's own), the second with long hair and a beard."""
    rng = np.random.default_rng(11)
    identity = torch.as_tensor(rng.standard_normal((2, 100)), dtype=torch.float32)
    expression = torch.zeros(2, 53)
    expression[1, [model.expression_index("jawOpen"), model.expression_index("eyeBlink_L")]] = 0.8
    expression[0, model.expression_index("mouthSmile_L")] = 0.6
    hair = sample_hair_styles(2, torch.Generator().manual_seed(3))
    hair = replace(
        hair,
        kind=torch.tensor([HAIR_KINDS.index("bald"), HAIR_KINDS.index("long")]),
        hairline=torch.stack([torch.full((7,), NO_HAIR), hair.hairline[1].clamp(max=0.6)]),
        thickness=torch.tensor([0.0, 0.06]),
        length=torch.tensor([CURTAIN_TOP, -0.8]),
        bun=torch.zeros(2, 2),
        beard=torch.tensor([[0.0, 0.0], [0.02, 0.9]]),
    )
    return HeadFactors(identity, expression, appearance_params([7, 8]), hair)


@pytest.fixture(scope="module")
def batch(sampler, heads):
    return sampler.sample(heads, seed=0)


@pytest.fixture(scope="module")
def meshes(sampler, heads):
    """Per head: (surface vertices posed, surface vertices neutral) as numpy arrays."""
    posed = sampler.geometry.vertices(heads).numpy()
    neutral = sampler.geometry.vertices(heads.neutral()).numpy()
    return list(zip(posed, neutral))


def _winding_numbers(points: np.ndarray, triangles: np.ndarray) -> np.ndarray:
    """Generalised winding numbers (solid angles / 4 pi), independent of the library's ray test."""
    result = []
    for point in points:
        a, b, c = (triangles[:, k] - point for k in range(3))
        la, lb, lc = (np.linalg.norm(v, axis=1) for v in (a, b, c))
        det = np.einsum("ij,ij->i", a, np.cross(b, c))
        den = (
            la * lb * lc
            + np.einsum("ij,ij->i", a, b) * lc
            + np.einsum("ij,ij->i", b, c) * la
            + np.einsum("ij,ij->i", c, a) * lb
        )
        result.append(np.arctan2(det, den).sum() / (2 * np.pi))
    return np.array(result)


def test_batch_shapes_dtypes_and_seed(batch, sampler, heads):
    assert batch.surface_points.shape == (2, 1500, 3) and batch.surface_colours.shape == (2, 1500, 3)
    assert batch.space_points.shape == (2, 800, 3) and batch.anchors.shape == (2, 65, 3)
    assert batch.posed_points.shape == batch.neutral_points.shape == (2, 400, 3)
    assert batch.surface_faces.dtype == torch.long and batch.surface_on_face.dtype == torch.bool
    assert all(t.device.type == "cpu" for t in vars(batch).values())
    again = sampler.sample(heads, seed=0)
    other = sampler.sample(heads, seed=1)
    torch.testing.assert_close(again.space_points, batch.space_points, rtol=0, atol=0)
    assert not torch.equal(other.surface_points, batch.surface_points)


def test_surface_points_lie_on_exposed_triangles(batch, sampler, heads, meshes):
    faces = sampler.geometry.faces.numpy()
    exposed = sampler.geometry.build(heads).exposed.numpy()
    for head, (posed, _) in enumerate(meshes):
        drawn = batch.surface_faces[head].numpy()
        assert exposed[head, drawn].all()
        corners = posed[faces[drawn]].astype(np.float64)
        points = batch.surface_points[head].numpy().astype(np.float64)
        closest = trimesh.triangles.closest_point(corners, points)
        assert np.linalg.norm(closest - points, axis=1).max() < 1e-4  # 0.025 mm: float32 on slivers
        expected = np.einsum("sk,skc->sc", batch.surface_barycentric[head].numpy(), corners)
        np.testing.assert_allclose(points, expected, atol=1e-5)
        assert batch.surface_on_face[head].float().mean() >= CONFIG.face_fraction


def test_normals_are_unit_and_outward(batch, sampler, meshes):
    faces, component = sampler.geometry.faces.numpy(), sampler.geometry.component.numpy()
    torch.testing.assert_close(batch.surface_normals.norm(dim=-1), torch.ones(2, 1500))
    for head, (posed, _) in enumerate(meshes):
        skin = posed[faces[component == 0]].astype(np.float64)
        on_skin = np.flatnonzero(component[batch.surface_faces[head].numpy()] == 0)[:40]
        points = batch.surface_points[head, on_skin].numpy().astype(np.float64)
        normals = batch.surface_normals[head, on_skin].numpy().astype(np.float64)
        assert np.all(_winding_numbers(points + 2e-4 * normals, skin) < 0.5)
        assert np.mean(_winding_numbers(points - 2e-4 * normals, skin) > 0.5) >= 0.95


def test_eyes_teeth_and_hair_pieces_are_sampled_where_exposed(batch, sampler, meshes):
    faces, component = sampler.geometry.faces.numpy(), sampler.geometry.component.numpy()
    for head, (posed, _) in enumerate(meshes):
        skin = posed[faces[component == 0]].astype(np.float64)
        drawn = component[batch.surface_faces[head].numpy()]
        for name in ("eyeball_right", "teeth", "curtain"):  # the left eye blinks on the second head
            on_part = np.flatnonzero(drawn == COMPONENTS.index(name))
            if name == "curtain" and head == 0:
                assert len(on_part) == 0  # a bald head's curtain is folded inside it
                continue
            if name == "teeth" and head == 0:
                continue  # a closed mouth may show no teeth
            assert len(on_part) > 0, name
            points = batch.surface_points[head, on_part[:30]].numpy().astype(np.float64)
            assert np.mean(_winding_numbers(points, skin) < 0.5) >= 0.75, name  # edge triangles may dip in


def test_correspondences_share_triangle_and_barycentrics(batch, sampler, meshes):
    faces = sampler.geometry.faces.numpy()
    for head, (posed, neutral) in enumerate(meshes):
        rows = faces[batch.correspondence_faces[head].numpy()]
        weights = batch.correspondence_barycentric[head].numpy()
        offsets = batch.correspondence_offsets[head].numpy()
        for points, vertices in ((batch.posed_points[head], posed), (batch.neutral_points[head], neutral)):
            on_surface = np.einsum("sk,skc->sc", weights, vertices[rows])
            moved = points.numpy() - on_surface
            np.testing.assert_allclose(np.linalg.norm(moved, axis=1), np.abs(offsets), atol=2e-5)
            corners = vertices[rows]
            face_normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
            along = np.einsum("sc,sc->s", moved, face_normals) / np.linalg.norm(face_normals, axis=1)
            assert np.mean(along * np.sign(offsets) > 0.5 * np.abs(offsets)) > 0.95
    assert batch.correspondence_offsets.abs().max() < 0.06


def test_neutral_expression_corresponds_to_itself(sampler, heads):
    still = sampler.sample(heads.neutral(), seed=3)
    torch.testing.assert_close(still.posed_points, still.neutral_points)


def test_anchors_are_the_neutral_heads_anchor_vertices(model, batch, heads):
    bald = head_vertices(model, heads.identity[0].numpy())[anchor_vertices(model)]
    np.testing.assert_allclose(batch.anchors[0].numpy(), bald, atol=1e-5)  # no hair: ICT's own vertices
    assert batch.anchors[1, :, 1].max() > head_vertices(model, heads.identity[1].numpy())[:, 1].max() - 0.2


def test_space_points_are_near_the_surface_then_uniform(batch, meshes):
    for head, (posed, _) in enumerate(meshes):
        distance, _ = cKDTree(posed).query(batch.space_points[head].numpy())
        fine, coarse = np.median(distance[:300]), np.median(distance[300:600])
        assert fine < 0.012 and coarse > 2 * fine
    uniform = batch.space_points[:, 600:]
    assert torch.all(uniform >= torch.as_tensor(BOX_MIN))
    assert torch.all(uniform <= torch.as_tensor(BOX_MAX))


def test_colours_are_the_heads_vertex_colours_with_the_hair_over_them(model, batch, sampler, heads):
    full = vertex_colours(appearance_basis(model), heads.appearance).numpy()
    surface = sampler.surface
    for head in range(1):  # the bald head: the appearance's colours exactly
        triangles = batch.surface_faces[head].numpy()
        rows = surface.faces[triangles]
        away_from_cap = np.all(rows < len(surface.vertex_ids), axis=1)
        corner_colours = full[head][surface.vertex_ids[rows[away_from_cap]]]
        expected = np.einsum("sk,skc->sc", batch.surface_barycentric[head].numpy()[away_from_cap], corner_colours)
        np.testing.assert_allclose(batch.surface_colours[head].numpy()[away_from_cap], expected, atol=1e-5)
    assert batch.surface_colours.min() >= 0 and batch.surface_colours.max() <= 1
    on_curtain = sampler.geometry.component[batch.surface_faces[1]] == COMPONENTS.index("curtain")
    hair = linear_to_srgb(heads.hair.colour[1])
    assert (batch.surface_colours[1, on_curtain] - hair).abs().mean() < 0.15


def test_bad_inputs_are_explained(sampler, heads):
    with pytest.raises(ValueError, match=r"identity must have shape \(B, 100\)"):
        sampler.sample(replace(heads, identity=torch.zeros(2, 99)), seed=0)
    with pytest.raises(ValueError, match=r"expression must have shape \(B, 53\)"):
        sampler.sample(replace(heads, expression=torch.zeros(2, 50)), seed=0)
    with pytest.raises(ValueError, match="disagree on the number of heads"):
        HeadFactors(heads.identity, heads.expression[:1], heads.appearance, heads.hair)
    with pytest.raises(ValueError, match="face_fraction"):
        SamplingConfig(face_fraction=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_runs_on_cuda_like_on_cpu(model, sampler, heads):
    cuda = HeadSampler(model, device="cuda", config=CONFIG)
    batch = cuda.sample(heads, seed=0)
    assert all(t.device.type == "cuda" for t in vars(batch).values())
    assert torch.isfinite(batch.surface_points).all() and torch.isfinite(batch.surface_colours).all()
    masks = [sampler.geometry.build(heads).exposed, cuda.geometry.build(heads).exposed.cpu()]
    assert (masks[0] != masks[1]).float().mean() < 1e-3
