"""Procedural appearance: deterministic per seed, in range, and plausibly coloured regions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffnphr.data.appearance import (
    MOUTH_DEPTH_DARKENING,
    REGIONS,
    appearance_basis,
    appearance_params,
    eye_geometry,
    vertex_colours,
)
from diffnphr.data.ict import load_ict


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def basis(model):
    return appearance_basis(model)


@pytest.fixture(scope="module")
def colours(basis):
    return vertex_colours(basis, appearance_params(range(40))).numpy()


def _luminance(rgb):
    return rgb @ np.array([0.2126, 0.7152, 0.0722])


def test_same_seed_same_head_other_seed_other_head(basis):
    first, again, other = appearance_params([7]), appearance_params([7]), appearance_params([8])
    torch.testing.assert_close(first.region_colours, again.region_colours, rtol=0, atol=0)
    torch.testing.assert_close(first.variation, again.variation, rtol=0, atol=0)
    assert not torch.allclose(first.region_colours, other.region_colours)
    batch = appearance_params([8, 7])
    torch.testing.assert_close(vertex_colours(basis, batch)[1], vertex_colours(basis, first)[0])


def test_colours_are_srgb_in_range(colours, model):
    assert colours.shape == (40, model.num_vertices, 3)
    assert colours.min() >= 0.0 and colours.max() <= 1.0


def test_regions_look_like_a_face(model, basis, colours):
    weights = basis.region_weights.numpy()
    mouth = np.zeros(model.num_vertices, dtype=bool)
    for part in ("mouth_socket", "gums_and_tongue"):
        mouth[model.part_vertices(part)] = True
    totals = weights.sum(axis=1)
    assert totals.max() <= 1 + 1e-6 and totals[~mouth].min() > 0.5  # below 1 only in the limbal ring ...
    assert totals[mouth].min() == pytest.approx(1 - MOUTH_DEPTH_DARKENING, abs=1e-3)  # ... and deep in the mouth
    assert totals[mouth].max() > 0.99  # the lips' inner edge keeps its colour

    def mean_colour(region, threshold=0.9):
        mask = weights[:, REGIONS.index(region)] > threshold
        assert mask.any(), region
        return colours[:, mask].mean(axis=1)  # (heads, 3)

    skin, lips, brows = mean_colour("skin"), mean_colour("lips"), mean_colour("brows", 0.5)
    iris, sclera = mean_colour("iris", 0.5), mean_colour("sclera")
    pupil, teeth = mean_colour("pupil"), mean_colour("teeth")
    assert np.all(lips[:, 0] / lips[:, 1] > skin[:, 0] / skin[:, 1])  # lips redder than skin
    assert np.mean(_luminance(brows) < _luminance(skin)) > 0.8  # mostly darker hair (grey/blond happen)
    assert np.all(np.abs(brows - skin).max(axis=1) > 0.02)
    assert np.all(_luminance(sclera) > _luminance(iris)) and np.all(_luminance(pupil) < 0.1)
    assert np.all(_luminance(teeth) > 0.7)
    # Skin tones span a realistic range, from very light to very dark.
    assert _luminance(skin).max() > 0.75 and _luminance(skin).min() < 0.35
    # Subtle variation: skin is not one flat colour, but stays close to its mean.
    skin_mask = weights[:, REGIONS.index("skin")] > 0.99
    spread = colours[:, skin_mask].std(axis=1) / colours[:, skin_mask].mean(axis=1)
    assert np.all(spread > 0.005) and np.all(spread < 0.15)


def test_basis_rows_select_vertices(basis):
    rows = np.array([5, 17000, 22000])
    subset = basis.rows(rows)
    params = appearance_params([1, 2])
    torch.testing.assert_close(vertex_colours(subset, params), vertex_colours(basis, params)[:, rows])


def test_negative_seed_is_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        appearance_params([-1])


@pytest.mark.parametrize("side", ["left", "right"])
def test_eyes_have_a_white_sclera_round_a_coloured_iris_and_a_dark_pupil(model, colours, side):
    centre, axis, iris_radius = eye_geometry(model, side)
    assert 4.5 < iris_radius * 250 < 7.0  # mm: an adult iris is about 12 mm across
    eyeball = np.arange(model.num_vertices)[model.part_vertices(f"sclera_{side}")]
    offset = model.neutral[eyeball] - centre
    front = offset @ axis > 0
    radial = np.linalg.norm(np.cross(offset, axis), axis=1) / iris_radius
    pupil = colours[:, eyeball[front & (radial < 0.25)]].mean(axis=1)
    iris = colours[:, eyeball[front & (radial > 0.5) & (radial < 0.85)]].mean(axis=1)
    sclera = colours[:, eyeball[front & (radial > 1.3) & (radial < 2.0)]].mean(axis=1)
    assert np.all(_luminance(sclera) > 0.6)  # white ...
    assert np.all(_luminance(sclera) > _luminance(iris) + 0.15)  # ... round a darker iris ...
    assert np.all(_luminance(pupil) < 0.1)  # ... with a dark pupil
    assert np.std(iris, axis=0).max() > 0.05  # iris colours vary from head to head
