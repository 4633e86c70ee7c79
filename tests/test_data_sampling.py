"""Training samples: shapes and devices, points on the surface, outward normals, correspondences."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.appearance import appearance_basis, appearance_params, vertex_colours
from diffnphr.data.expressions import sample_expressions
from diffnphr.data.heads import exposed_faces, head_vertices, sample_identities
from diffnphr.data.ict import load_ict
from diffnphr.data.sampling import HeadSampler, SamplingConfig
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
    rng = np.random.default_rng(11)
    identity = sample_identities(rng, 2, 100)
    expression = sample_expressions(rng, 2, model.expression_names)
    expression[1] = 0.0
    expression[1, [model.expression_index("jawOpen"), model.expression_index("eyeBlink_L")]] = 0.8
    return identity, expression, [7, 8]


@pytest.fixture(scope="module")
def batch(sampler, heads):
    identity, expression, seeds = heads
    return sampler.sample(torch.as_tensor(identity), torch.as_tensor(expression), appearance_params(seeds), seed=0)


@pytest.fixture(scope="module")
def meshes(model, sampler, heads):
    """Per head: (surface vertices posed, surface vertices neutral), built with numpy."""
    identity, expression, _ = heads
    return [
        (sampler.surface.vertices(head_vertices(model, a, b)), sampler.surface.vertices(head_vertices(model, a)))
        for a, b in zip(identity, expression)
    ]


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
    identity, expression, seeds = heads
    assert batch.surface_points.shape == (2, 1500, 3) and batch.surface_colours.shape == (2, 1500, 3)
    assert batch.space_points.shape == (2, 800, 3) and batch.anchors.shape == (2, 65, 3)
    assert batch.posed_points.shape == batch.neutral_points.shape == (2, 400, 3)
    assert batch.surface_faces.dtype == torch.long and batch.surface_on_face.dtype == torch.bool
    assert all(t.device.type == "cpu" for t in vars(batch).values())
    again = sampler.sample(torch.as_tensor(identity), torch.as_tensor(expression), appearance_params(seeds), seed=0)
    other = sampler.sample(torch.as_tensor(identity), torch.as_tensor(expression), appearance_params(seeds), seed=1)
    torch.testing.assert_close(again.space_points, batch.space_points, rtol=0, atol=0)
    assert not torch.equal(other.surface_points, batch.surface_points)


def test_surface_points_lie_on_the_mesh(batch, sampler, meshes):
    faces = sampler.surface.faces
    cap = np.flatnonzero(np.any(faces == len(sampler.surface.vertex_ids), axis=1))  # large fan triangles
    for head, (posed, _) in enumerate(meshes):
        triangles = posed[faces].astype(np.float64)
        points = batch.surface_points[head].numpy().astype(np.float64)
        _, nearest = cKDTree(triangles.mean(axis=1)).query(points, k=8)
        candidates = np.concatenate([nearest, np.broadcast_to(cap, (len(points), len(cap)))], axis=1)
        repeated = np.repeat(points, candidates.shape[1], axis=0)
        closest = trimesh.triangles.closest_point(triangles[candidates.ravel()], repeated)
        distance = np.linalg.norm(closest - repeated, axis=1).reshape(len(points), -1).min(axis=1)
        assert distance.max() < 1e-5
        assert batch.surface_on_face[head].float().mean() >= CONFIG.face_fraction


def test_normals_are_unit_and_outward(batch, sampler, meshes):
    faces, component = sampler.surface.faces, sampler.surface.component
    torch.testing.assert_close(batch.surface_normals.norm(dim=-1), torch.ones(2, 1500))
    for head, (posed, _) in enumerate(meshes):
        skin = posed[faces[component == 0]].astype(np.float64)
        on_skin = np.flatnonzero(component[batch.surface_faces[head].numpy()] == 0)[:40]
        points = batch.surface_points[head, on_skin].numpy().astype(np.float64)
        normals = batch.surface_normals[head, on_skin].numpy().astype(np.float64)
        assert np.all(_winding_numbers(points + 2e-4 * normals, skin) < 0.5)
        assert np.mean(_winding_numbers(points - 2e-4 * normals, skin) > 0.5) >= 0.95


def test_eyeball_samples_are_exposed(batch, sampler, meshes):
    faces, component = sampler.surface.faces, sampler.surface.component
    for head, (posed, _) in enumerate(meshes):
        skin = posed[faces[component == 0]].astype(np.float64)
        on_eyes = np.flatnonzero(component[batch.surface_faces[head].numpy()] > 0)
        assert len(on_eyes) > 0
        points = batch.surface_points[head, on_eyes[:30]].numpy().astype(np.float64)
        assert np.mean(_winding_numbers(points, skin) < 0.5) >= 0.9


def test_correspondences_share_triangle_and_barycentrics(batch, sampler, meshes):
    faces = sampler.surface.faces
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
    identity, _, seeds = heads
    still = sampler.sample(torch.as_tensor(identity), torch.zeros(2, 53), appearance_params(seeds), seed=3)
    torch.testing.assert_close(still.posed_points, still.neutral_points)


def test_anchors_are_the_neutral_heads_anchor_vertices(model, batch, heads):
    identity, _, _ = heads
    expected = np.stack([head_vertices(model, a)[anchor_vertices(model)] for a in identity])
    np.testing.assert_allclose(batch.anchors.numpy(), expected, atol=1e-5)


def test_space_points_are_near_the_surface_then_uniform(batch, meshes):
    for head, (posed, _) in enumerate(meshes):
        distance, _ = cKDTree(posed).query(batch.space_points[head].numpy())
        fine, coarse = np.median(distance[:300]), np.median(distance[300:600])
        assert fine < 0.012 and coarse > 2 * fine
    uniform = batch.space_points[:, 600:]
    assert torch.all(uniform >= torch.as_tensor(BOX_MIN))
    assert torch.all(uniform <= torch.as_tensor(BOX_MAX))


def test_colours_are_the_heads_vertex_colours(model, batch, sampler, heads):
    _, _, seeds = heads
    full = vertex_colours(appearance_basis(model), appearance_params(seeds)).numpy()
    surface = sampler.surface
    for head in range(2):
        triangles = batch.surface_faces[head].numpy()
        rows = surface.faces[triangles]
        away_from_cap = np.all(rows < len(surface.vertex_ids), axis=1)
        corner_colours = full[head][surface.vertex_ids[rows[away_from_cap]]]
        expected = np.einsum("sk,skc->sc", batch.surface_barycentric[head].numpy()[away_from_cap], corner_colours)
        np.testing.assert_allclose(batch.surface_colours[head].numpy()[away_from_cap], expected, atol=1e-5)
    assert batch.surface_colours.min() >= 0 and batch.surface_colours.max() <= 1


def test_bad_inputs_are_explained(sampler, heads):
    identity, expression, seeds = heads
    with pytest.raises(ValueError, match=r"identity must have shape \(B, 100\)"):
        sampler.sample(torch.zeros(2, 99), torch.as_tensor(expression), appearance_params(seeds), seed=0)
    with pytest.raises(ValueError, match="2 identities but 1 expressions"):
        sampler.sample(torch.as_tensor(identity), torch.zeros(1, 53), appearance_params(seeds), seed=0)
    with pytest.raises(ValueError, match="appearance parameters for 1"):
        sampler.sample(torch.as_tensor(identity), torch.as_tensor(expression), appearance_params([1]), seed=0)
    with pytest.raises(ValueError, match="face_fraction"):
        SamplingConfig(face_fraction=1.5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_sampling_runs_on_cuda_like_on_cpu(model, sampler, heads):
    identity, expression, seeds = heads
    cuda = HeadSampler(model, device="cuda", config=CONFIG)
    batch = cuda.sample(torch.as_tensor(identity), torch.as_tensor(expression), appearance_params(seeds), seed=0)
    assert all(t.device.type == "cuda" for t in vars(batch).values())
    assert torch.isfinite(batch.surface_points).all() and torch.isfinite(batch.surface_colours).all()
    surface = sampler.surface
    masks = []
    for device in ("cpu", "cuda"):
        vertices = torch.as_tensor(
            np.stack([surface.vertices(head_vertices(model, a, b)) for a, b in zip(identity, expression)])
        )
        tests = [
            (torch.as_tensor(q, device=device), torch.as_tensor(f, device=device)) for q, f in surface.exposure_tests
        ]
        masks.append(exposed_faces(vertices.to(device), torch.as_tensor(surface.faces, device=device), tests).cpu())
    assert (masks[0] != masks[1]).float().mean() < 1e-3
