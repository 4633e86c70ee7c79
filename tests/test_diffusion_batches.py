"""Sampling several conditions at once: each condition's own seed gives it the latent it gets alone."""

from __future__ import annotations

import pytest
import torch

from diffnphr.diffusion import DiffusionConfig, LatentDiffusion


@pytest.fixture(scope="module")
def model() -> LatentDiffusion:
    torch.manual_seed(0)
    diffusion = LatentDiffusion(
        DiffusionConfig(
            base_channels=8,
            channel_mults=(1, 1, 1, 1),
            attention_levels=(),
            attention_heads=2,
            norm_groups=4,
            cond_tokens=1,
            time_embed_dim=16,
            mean_head_hidden=8,
        )
    ).eval()
    torch.nn.init.normal_(diffusion.unet.output_conv.weight, std=0.05)  # so the latent depends on the condition
    return diffusion


@pytest.fixture(scope="module")
def conditions() -> torch.Tensor:
    return torch.randn(3, 512, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"average_of": 3},
        {"average_of": [1, 4, 2]},
        {"eta": 1.0, "average_of": 2},
        {"guidance_scale": 2.0, "average_of": 2},
        {"scheduler": "dpmsolver++", "average_of": 2},
    ],
)
def test_a_condition_with_its_own_seed_gets_the_latent_it_gets_alone(model, conditions, options):
    seeds = [7, 3, 9]
    together = model.sample(conditions, num_steps=4, seed=seeds, **options)
    counts = options.get("average_of", 1)
    for row, seed in enumerate(seeds):
        alone_options = {**options, "average_of": counts[row] if isinstance(counts, list) else counts}
        alone = model.sample(conditions[row : row + 1], num_steps=4, seed=seed, **alone_options)
        torch.testing.assert_close(together[row : row + 1], alone, atol=1e-5, rtol=0)
    # and not the latent of another seed: the seeds matter row by row
    swapped = model.sample(conditions, num_steps=4, seed=[3, 7, 9], **options)
    assert not torch.allclose(swapped[:2], together[:2], atol=1e-3)
    torch.testing.assert_close(swapped[2], together[2], atol=1e-5, rtol=0)


def test_every_sample_of_every_condition_goes_through_the_unet_together(model, conditions):
    batches = []
    hook = model.unet.register_forward_hook(lambda module, args, output: batches.append(output.shape[0]))
    try:
        model.sample(conditions, num_steps=5, seed=[1, 2, 3], average_of=[8, 8, 2])
    finally:
        hook.remove()
    assert batches == [18] * 5  # one forward per step for all 3 conditions' 18 samples


def test_per_condition_seeds_and_counts_are_checked(model, conditions):
    with pytest.raises(ValueError, match="one per condition"):
        model.sample(conditions, seed=[1, 2])
    with pytest.raises(ValueError, match="average_of"):
        model.sample(conditions, seed=[1, 2, 3], average_of=[1, 0, 2])
    with pytest.raises(ValueError, match="average_of"):
        model.sample(conditions, seed=[1, 2, 3], average_of=[1, 2])
