"""The 65 anchors: MonoNPHM's layout (30 mirrored pairs, then 5 midline points), well spread."""

from __future__ import annotations

import numpy as np
import pytest

from diffnphr.data.anchors import ANCHOR_COUNT, anchor_vertices
from diffnphr.data.heads import head_vertices, sample_identities
from diffnphr.data.ict import load_ict
from diffnphr.frame import BOX_MAX, BOX_MIN


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def anchors(model):
    return anchor_vertices(model)


def test_layout_and_symmetry(model, anchors):
    assert anchors.shape == (ANCHOR_COUNT,) and len(set(anchors.tolist())) == ANCHOR_COUNT
    points = model.neutral[anchors]
    right, left = points[0:60:2], points[1:60:2]
    assert np.all(right[:, 0] < -0.01) and np.all(left[:, 0] > 0.01)  # even = subject's right
    np.testing.assert_allclose(right * [-1, 1, 1], left, atol=1e-4)  # pair k = (2k, 2k+1) mirror in x
    assert np.all(np.abs(points[60:, 0]) < 1e-4)
    assert anchors[60] == model.landmarks_68[8] and anchors[62] == model.landmarks_68[30]  # chin, nose tip


def test_anchors_are_spread_over_the_head_in_the_box(model, anchors):
    points = model.neutral[anchors]
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(ANCHOR_COUNT)
    assert distances.min() > 0.04  # 1 cm
    assert np.all(points >= BOX_MIN) and np.all(points <= BOX_MAX)
    extent = points.max(axis=0) - points.min(axis=0)
    assert np.all(extent > [0.8, 1.0, 0.8])  # face, scalp, back of the head and neck all covered


def test_anchors_follow_the_identity_and_are_deterministic(model, anchors):
    identity = sample_identities(np.random.default_rng(5), 1, 100)[0]
    moved = head_vertices(model, identity)[anchors]
    assert np.abs(moved - model.neutral[anchors]).max() > 0.005
    np.testing.assert_array_equal(anchor_vertices(model), anchors)
