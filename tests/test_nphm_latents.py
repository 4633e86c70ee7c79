"""Flat latent layout (pack / unpack) and per-dimension normalisation statistics."""

from __future__ import annotations

import pytest
import torch

from diffnphr.nphm import MonoNPHMConfig
from diffnphr.nphm.latents import FLAT, PADDED, Z_APP, Z_EXP, Z_GEO, LatentStatistics, pack, unpack


def codes(batch: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(batch, dim, generator=g) for dim in (Z_GEO, Z_EXP, Z_APP))


def test_layout_matches_the_decoder_configs():
    assert (Z_GEO, Z_EXP, Z_APP, FLAT, PADDED) == (2176, 100, 2176, 4452, 4456)
    for config in (MonoNPHMConfig(), MonoNPHMConfig.small()):
        assert (config.z_geo_dim, config.lat_dim_exp, config.z_app_dim) == (Z_GEO, Z_EXP, Z_APP)


def test_pack_and_unpack_round_trip_with_and_without_padding():
    z_geo, z_exp, z_app = codes()
    flat = pack(z_geo, z_exp, z_app)
    assert flat.shape == (3, PADDED)
    assert torch.equal(flat[:, FLAT:], torch.zeros(3, PADDED - FLAT))
    assert torch.equal(flat[:, :Z_GEO], z_geo) and torch.equal(flat[:, Z_GEO + Z_EXP : FLAT], z_app)
    for packed in (flat, pack(z_geo, z_exp, z_app, pad=False)):
        back = unpack(packed)
        assert all(torch.equal(a, b) for a, b in zip(back, (z_geo, z_exp, z_app)))
    noisy_padding = flat.clone()
    noisy_padding[:, FLAT:] = 5.0  # a diffusion sample is never exactly zero there
    assert torch.equal(unpack(noisy_padding)[2], z_app)


def test_layout_errors_are_explained():
    z_geo, z_exp, z_app = codes()
    with pytest.raises(ValueError, match="z_exp must have shape"):
        pack(z_geo, z_exp[:, :99], z_app)
    with pytest.raises(ValueError, match="z_app must have shape"):
        pack(z_geo, z_exp, z_app[:2])
    with pytest.raises(ValueError, match="4452 or 4456"):
        unpack(torch.zeros(2, 4453))


def test_statistics_normalise_each_dimension_and_invert():
    z_geo, z_exp, z_app = codes(batch=64)
    scale = torch.ones(Z_GEO)
    scale[64:] = 0.25  # local codes are about 4x smaller than global ones
    z_geo = 0.02 * z_geo * scale + 0.01
    z_geo[:, 100] = 0.3  # a dimension that never varies
    latents = pack(z_geo, z_exp, z_app)
    stats = LatentStatistics.from_latents(latents[:, :FLAT], min_std=1e-4)
    assert stats.mean.shape == stats.std.shape == (PADDED,)
    assert torch.equal(stats.mean[FLAT:], torch.zeros(4)) and torch.equal(stats.std[FLAT:], torch.ones(4))
    assert stats.std[100] == 1e-4
    normalised = stats.normalise(latents)
    assert torch.equal(normalised[:, FLAT:], torch.zeros(64, 4))
    varying = torch.ones(PADDED, dtype=torch.bool)
    varying[100], varying[FLAT:] = False, False
    torch.testing.assert_close(normalised[:, varying].mean(0), torch.zeros(int(varying.sum())), atol=1e-5, rtol=0)
    torch.testing.assert_close(normalised[:, varying].std(0), torch.ones(int(varying.sum())), atol=1e-4, rtol=0)
    torch.testing.assert_close(stats.denormalise(normalised), latents, atol=1e-6, rtol=1e-6)
    assert stats.normalise(latents.double()).dtype == torch.float64


def test_statistics_reject_too_few_or_unpadded_latents():
    with pytest.raises(ValueError, match="at least 2"):
        LatentStatistics.from_latents(torch.zeros(1, PADDED))
    stats = LatentStatistics.from_latents(torch.randn(4, PADDED))
    with pytest.raises(ValueError, match="padded"):
        stats.normalise(torch.zeros(2, FLAT))
