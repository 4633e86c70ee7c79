"""Heads: identity/expression sampling, the closed surfaces and which triangles are exposed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffnphr.data.expressions import ACTIONS, CONFLICTS, action_shapes, sample_expressions
from diffnphr.data.heads import COMPONENTS, exposed_faces, head_surface, head_vertices, sample_identities
from diffnphr.data.ict import load_ict


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def surface(model):
    return head_surface(model)


def _heads(model, count, seed):
    rng = np.random.default_rng(seed)
    identities = sample_identities(rng, count, model.identity_modes.shape[0])
    expressions = sample_expressions(rng, count, model.expression_names)
    return [head_vertices(model, a, b) for a, b in zip(identities, expressions)]


def test_every_component_is_closed_for_neutral_and_random_heads(model, surface):
    for vertices in [model.neutral] + _heads(model, 3, seed=1):
        for name in COMPONENTS:
            mesh = surface.component_mesh(vertices, name)
            assert mesh.is_watertight and mesh.is_winding_consistent, name
            shells = 32 if name == "teeth" else 1  # each a genus-0 surface
            assert mesh.euler_number == 2 * shells, name
            assert mesh.volume > 0, name  # wound outward
    skin = surface.component_mesh(model.neutral, "skin")
    assert skin.volume * 0.25**3 * 1000 == pytest.approx(5.12, abs=0.05)  # litres, as the README measured


def test_surface_rows_and_cap(model, surface):
    vertices = surface.vertices(model.neutral)
    assert vertices.shape == (len(surface.vertex_ids) + 1, 3)
    np.testing.assert_allclose(vertices[-1], model.neutral[model.neck_boundary_loop].mean(axis=0), atol=1e-6)
    assert surface.face_region.sum() == len(model.faces[model.part_faces("face")])


def test_lids_cover_the_eyeballs_when_blinking(model, surface):
    blink = np.zeros(len(model.expression_names), dtype=np.float32)
    blink[[model.expression_index("eyeBlink_L"), model.expression_index("eyeBlink_R")]] = 1.0
    neutral_head = surface.vertices(model.neutral)
    blinking = surface.vertices(head_vertices(model, np.zeros(100), blink))
    faces = torch.as_tensor(surface.faces)
    tests = [test.to("cpu") for test in surface.exposure_tests]
    hidden = torch.as_tensor(surface.always_hidden)
    exposed = exposed_faces(torch.as_tensor(np.stack([neutral_head, blinking])), faces, tests, hidden).numpy()
    eyeball = surface.component == COMPONENTS.index("eyeball_left")
    skin = surface.component == COMPONENTS.index("skin")
    assert 0.25 < exposed[0, eyeball].mean() < 0.5  # the rest is inside the socket
    assert exposed[1, eyeball].mean() < 0.5 * exposed[0, eyeball].mean()
    assert exposed[0, skin].mean() > 0.9  # only the socket pockets, inside the eyeballs, are hidden
    right = surface.component == COMPONENTS.index("eyeball_right")
    assert exposed[0, right].mean() == pytest.approx(exposed[0, eyeball].mean(), abs=0.02)  # symmetric


def test_identity_sampler_is_standard_normal_and_seeded():
    a = sample_identities(np.random.default_rng(3), 2000, 100)
    assert a.shape == (2000, 100) and a.dtype == np.float32
    assert abs(a.mean()) < 0.02 and a.std() == pytest.approx(1.0, abs=0.02)
    np.testing.assert_array_equal(a, sample_identities(np.random.default_rng(3), 2000, 100))
    assert sample_identities(np.random.default_rng(3), 10, 100, scale=0.5).std() < 0.7


def test_expression_sampler_is_sparse_and_realistic(model):
    names = model.expression_names
    weights = sample_expressions(np.random.default_rng(0), 3000, names)
    np.testing.assert_array_equal(weights, sample_expressions(np.random.default_rng(0), 3000, names))
    assert weights.shape == (3000, 53) and weights.min() >= 0 and weights.max() <= 1
    active = (weights > 0).sum(axis=1)
    assert 0.02 < (active == 0).mean() < 0.1  # neutral is allowed, but rare
    assert 2 < active.mean() < 5 and active.max() <= 12
    assert np.all((weights > 0).any(axis=0))  # every blendshape is reachable

    def used(name):
        return weights[:, names.index(name)] > 0

    assert np.mean(used("mouthSmile_R")[used("mouthSmile_L")]) > 0.5  # pairs mostly move together
    assert used("jawOpen").mean() > 2 * used("browDown_L").mean()  # jaw and mouth are common
    assert np.all(weights[:, names.index("mouthClose")] <= weights[:, names.index("jawOpen")])
    assert not np.any(used("jawLeft") & used("jawRight"))
    for first, second in CONFLICTS:
        assert not np.any(
            np.any([used(s) for s in action_shapes(first)], axis=0)
            & np.any([used(s) for s in action_shapes(second)], axis=0)
        )
    assert set(ACTIONS) and len({s for a in ACTIONS for s in action_shapes(a)}) == 53


def test_expression_sampler_rejects_a_model_without_its_shapes():
    with pytest.raises(ValueError, match="jawOpen"):
        sample_expressions(np.random.default_rng(0), 1, ["browDown_L"])


def test_head_vertices_checks_shapes(model):
    with pytest.raises(ValueError, match=r"\(100,\)"):
        head_vertices(model, np.zeros(99))
    with pytest.raises(ValueError, match=r"\(53,\)"):
        head_vertices(model, np.zeros(100), np.zeros(5))
