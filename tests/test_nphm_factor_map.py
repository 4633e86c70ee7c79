"""The factor map: expression factors reach z_exp only, shape z_geo only, colours z_app only; it saves and loads."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from diffnphr.data.factors import APPEARANCE_DIM, sample_head_factors
from diffnphr.data.hair_styles import GEOMETRY_DIM
from diffnphr.data.ict import load_ict
from diffnphr.nphm.factor_map import FactorMap, FactorMapConfig


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def factor_map():
    torch.manual_seed(0)
    config = FactorMapConfig(
        geometry_dim=100 + GEOMETRY_DIM,
        expression_dim=53,
        appearance_dim=APPEARANCE_DIM,
        hidden_dim=32,
        expression_hidden_dim=16,
        layers=2,
        output_scale=1.0,
    )
    return FactorMap(config).eval()


def test_each_factor_reaches_only_its_own_latent(model, factor_map):
    heads = sample_head_factors(4, 0, model.expression_names, 100)
    others = sample_head_factors(4, 1, model.expression_names, 100)

    def latents(factors):
        vectors = factors.vectors()
        with torch.no_grad():
            return factor_map(vectors.geometry, vectors.expression, vectors.appearance)

    base = latents(heads)
    swaps = {
        "expression": (replace(heads, expression=others.expression), 1),
        "identity": (replace(heads, identity=others.identity), 0),
        "hair shape": (replace(heads, hair=others.hair.with_colours_of(heads.hair)), 0),
        "appearance": (replace(heads, appearance=others.appearance), 2),
        "hair colour": (replace(heads, hair=heads.hair.with_colours_of(others.hair)), 2),
    }
    for name, (changed, moved) in swaps.items():
        result = latents(changed)
        for index in range(3):
            same = torch.equal(result[index], base[index])
            assert same == (index != moved), f"{name}: latent {index}"


def test_a_head_and_its_neutral_share_geometry_and_colours(model, factor_map):
    heads = sample_head_factors(3, 2, model.expression_names, 100)
    vectors, neutral = heads.vectors(), heads.neutral().vectors()
    assert torch.equal(vectors.geometry, neutral.geometry) and torch.equal(vectors.appearance, neutral.appearance)
    assert torch.all(neutral.expression == 0)


def test_bad_widths_are_refused_with_a_sentence(factor_map):
    with pytest.raises(ValueError, match=r"the expression vectors must have shape \(B, 53\)"):
        factor_map(torch.zeros(2, 100 + GEOMETRY_DIM), torch.zeros(2, 52), torch.zeros(2, APPEARANCE_DIM))
    with pytest.raises(ValueError, match="must be positive"):
        FactorMapConfig(hidden_dim=0)


def test_saves_and_loads_strictly(factor_map, tmp_path):
    factor_map.save_pretrained(tmp_path / "map")
    loaded = FactorMap.from_pretrained(tmp_path / "map")
    for name, value in factor_map.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value), name
