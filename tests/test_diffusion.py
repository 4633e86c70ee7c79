"""Conditional 1D latent diffusion: it learns a condition -> latent map, samples reproducibly, and saves/loads."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from diffnphr.diffusion import SAMPLERS, DiffusionConfig, LatentDiffusion

LENGTH, COND_DIM = 64, 16


def tiny_config(**changes: object) -> DiffusionConfig:
    """A U-Net small enough to train on a CPU in seconds, with the default attention layout."""
    fields: dict[str, object] = dict(
        sample_length=LENGTH, cond_dim=COND_DIM, base_channels=16, channel_mults=(1, 2, 2, 2), time_embed_dim=64
    )
    fields.update(changes)
    return DiffusionConfig(**fields)


class SyntheticLatents:
    """Latents that are a fixed nonlinear map of the condition, with per-dimension offsets and scales."""

    def __init__(self, generator: torch.Generator) -> None:
        self.weight = torch.randn(COND_DIM, LENGTH, generator=generator) * 1.5 / COND_DIM**0.5
        self.offset = torch.randn(LENGTH, generator=generator) * 3
        self.scale = torch.rand(LENGTH, generator=generator) * 2 + 0.5

    def __call__(self, cond: Tensor) -> Tensor:
        return self.offset + self.scale * torch.tanh(cond @ self.weight)


def mse(a: Tensor, b: Tensor) -> float:
    return (a - b).pow(2).mean().item()


@pytest.fixture(scope="module", params=[None, 64], ids=["plain", "mean_head"])
def trained(request) -> dict[str, object]:
    """Train the tiny model (without and with a conditional-mean head) briefly on 2048 (condition,
    latent) pairs; keep 64 unseen conditions.

    Tensors this small gain nothing from intra-op threads, which only add overhead on a busy CPU.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return train_tiny_model(request.param)
    finally:
        torch.set_num_threads(threads)


def train_tiny_model(mean_head_hidden: int | None) -> dict[str, object]:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(1)
    latents_of = SyntheticLatents(generator)
    cond_train = torch.randn(2048, COND_DIM, generator=generator)
    x_train = latents_of(cond_train)
    cond_test = torch.randn(64, COND_DIM, generator=generator)

    model = LatentDiffusion(tiny_config(mean_head_hidden=mean_head_hidden))
    model.set_normalization(x_train.mean(0), x_train.std(0))
    untrained = model.sample(cond_test, num_steps=10)

    steps, lr = 300, 5e-3
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.1)
    model.train()
    for _ in range(steps):
        index = torch.randint(0, len(x_train), (64,), generator=generator)
        loss = sum(model.training_losses(x_train[index], cond_train[index], generator=generator).values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()
    return {
        "model": model,
        "cond_test": cond_test,
        "x_test": latents_of(cond_test),
        "untrained": untrained,
        "data_mean": x_train.mean(0),
    }


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_samples_land_near_the_target_for_unseen_conditions(trained: dict, sampler: str) -> None:
    model, cond, target = trained["model"], trained["cond_test"], trained["x_test"]
    error = mse(model.sample(cond, num_steps=10, scheduler=sampler), target)
    untrained_error = mse(trained["untrained"], target)
    mean_error = mse(trained["data_mean"].expand_as(target), target)
    assert error < 0.3 * untrained_error
    assert error < 0.25 * mean_error


def test_sampling_is_deterministic_for_a_seed(trained: dict) -> None:
    model, cond = trained["model"], trained["cond_test"][:4]
    first = model.sample(cond, num_steps=5, seed=3)
    assert torch.equal(first, model.sample(cond, num_steps=5, seed=3))
    assert not torch.allclose(first, model.sample(cond, num_steps=5, seed=4))
    stochastic = model.sample(cond, num_steps=5, seed=3, eta=1.0)
    assert torch.equal(stochastic, model.sample(cond, num_steps=5, seed=3, eta=1.0))
    assert not torch.allclose(stochastic, first)


def test_averaged_samples_are_the_mean_of_the_same_draws(trained: dict) -> None:
    """`average_of=k` returns the mean of the k samples a batch of k copies of each condition gets."""
    model, cond = trained["model"], trained["cond_test"][:2]
    averaged = model.sample(cond, num_steps=5, seed=3, average_of=3)
    draws = model.sample(cond.repeat_interleave(3, dim=0), num_steps=5, seed=3)
    torch.testing.assert_close(averaged, draws.view(2, 3, -1).mean(dim=1))
    with pytest.raises(ValueError, match="average_of"):
        model.sample(cond, average_of=0)


def test_classifier_free_guidance(trained: dict) -> None:
    model, cond = trained["model"], trained["cond_test"][:4]
    plain = model.sample(cond, num_steps=5, seed=5)
    # A scale a hair above 1 takes the batched (conditional + null) path and must agree with it.
    torch.testing.assert_close(model.sample(cond, num_steps=5, seed=5, guidance_scale=1.0 + 1e-6), plain)
    assert not torch.allclose(model.sample(cond, num_steps=5, seed=5, guidance_scale=3.0), plain, atol=1e-3)
    # Scale 0 keeps only the null-condition prediction: the image condition must not matter to what
    # the U-Net adds (with a mean head, to the residual around the conditional mean).
    other_cond = trained["cond_test"][4:8]
    unconditional = model.sample(cond, num_steps=5, seed=5, guidance_scale=0.0)
    other = model.sample(other_cond, num_steps=5, seed=5, guidance_scale=0.0)
    with torch.no_grad():
        torch.testing.assert_close(
            model.normalize(unconditional) - model.conditional_mean(cond),
            model.normalize(other) - model.conditional_mean(other_cond),
        )


def test_the_mean_head_predicts_the_conditional_mean(trained: dict) -> None:
    """The mean head alone (no sampling) already lands near the target: the diffusion only adds the rest."""
    model, cond, target = trained["model"], trained["cond_test"], trained["x_test"]
    if model.mean_head is None:
        assert not model.conditional_mean(cond).any()
        return
    with torch.no_grad():
        centre = model.denormalize(model.conditional_mean(cond))
    assert mse(centre, target) < 0.25 * mse(trained["data_mean"].expand_as(target), target)


def test_progress_reports_every_step(trained: dict) -> None:
    calls: list[tuple[int, int]] = []
    trained["model"].sample(trained["cond_test"][:1], num_steps=4, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_save_load_round_trip_gives_identical_samples(trained: dict, tmp_path) -> None:
    model, cond = trained["model"], trained["cond_test"][:4]
    model.save_pretrained(tmp_path / "diffusion")
    loaded = LatentDiffusion.from_pretrained(tmp_path / "diffusion")
    assert loaded.config == model.config
    assert torch.equal(loaded.data_mean, model.data_mean) and torch.equal(loaded.data_std, model.data_std)
    assert torch.equal(loaded.sample(cond, num_steps=5, seed=7), model.sample(cond, num_steps=5, seed=7))


class OracleUNet(nn.Module):
    """Predicts the exact noise/velocity that leads to one known clean (normalised) sample."""

    def __init__(self, model: LatentDiffusion, clean: Tensor) -> None:
        super().__init__()
        self.alphas_cumprod = model.noise_scheduler.alphas_cumprod
        self.prediction_type = model.config.prediction_type
        self.clean = clean

    def forward(self, x: Tensor, timesteps: Tensor, cond: Tensor, drop_cond: Tensor | None = None) -> Tensor:
        alpha = self.alphas_cumprod[timesteps.long().expand(x.shape[0])].view(-1, 1, 1).sqrt()
        sigma = (1 - alpha**2).sqrt()
        noise = (x - alpha * self.clean) / sigma
        return noise if self.prediction_type == "epsilon" else alpha * noise - sigma * self.clean


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_targets_and_samplers_agree_with_the_noise_process(prediction_type: str, sampler: str) -> None:
    """With a perfect denoiser the training loss vanishes and every sampler returns the clean latent."""
    model = LatentDiffusion(tiny_config(prediction_type=prediction_type))
    generator = torch.Generator().manual_seed(0)
    mean, std = torch.randn(LENGTH, generator=generator), torch.rand(LENGTH, generator=generator) + 0.5
    model.set_normalization(mean, std)
    clean = torch.randn(LENGTH, generator=generator)
    model.unet = OracleUNet(model, clean.view(1, 1, -1))
    cond = torch.randn(3, COND_DIM, generator=generator)
    raw = model.denormalize(clean).expand(3, -1)
    assert model.training_losses(raw, cond, generator=generator)["denoising"].item() < 1e-6
    torch.testing.assert_close(model.sample(cond, num_steps=8, scheduler=sampler), raw, atol=1e-3, rtol=1e-4)


def test_samples_are_centred_on_the_conditional_mean() -> None:
    """With a mean head and a perfect denoiser of the residual, samples are the mean head's prediction plus it."""
    model = LatentDiffusion(tiny_config(mean_head_hidden=8))
    generator = torch.Generator().manual_seed(0)
    model.set_normalization(torch.randn(LENGTH, generator=generator), torch.rand(LENGTH, generator=generator) + 0.5)
    residual = torch.randn(LENGTH, generator=generator)
    model.unet = OracleUNet(model, residual.view(1, 1, -1))
    cond = torch.randn(3, COND_DIM, generator=generator)
    with torch.no_grad():
        expected = model.denormalize(model.mean_head(cond) + residual)
        assert model.training_losses(expected, cond, generator=generator)["denoising"].item() < 1e-6
    torch.testing.assert_close(model.sample(cond, num_steps=8), expected, atol=1e-3, rtol=1e-4)
    with pytest.raises(ValueError, match="mean_head_hidden"):
        tiny_config(mean_head_hidden=0)


def test_length_must_allow_the_unet_to_halve_it() -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        DiffusionConfig(sample_length=4452)


def test_bad_inputs_get_clear_errors() -> None:
    model = LatentDiffusion(tiny_config())
    with pytest.raises(ValueError, match="z_cond"):
        model.sample(torch.zeros(2, COND_DIM + 1))
    with pytest.raises(ValueError, match="x0"):
        model.training_losses(torch.zeros(2, LENGTH - 1), torch.zeros(2, COND_DIM))
    with pytest.raises(ValueError, match="shape"):
        model.set_normalization(torch.zeros(LENGTH + 1), torch.ones(LENGTH + 1))
    with pytest.raises(ValueError, match="positive"):
        model.set_normalization(torch.zeros(LENGTH), torch.zeros(LENGTH))
    with pytest.raises(ValueError, match="sampler"):
        model.sample(torch.zeros(1, COND_DIM), scheduler="euler")
    with pytest.raises(ValueError, match="num_steps"):
        model.sample(torch.zeros(1, COND_DIM), num_steps=model.max_sampling_steps + 1)
    with pytest.raises(ValueError, match="eta"):
        model.sample(torch.zeros(1, COND_DIM), eta=0.5, scheduler="dpmsolver++")


def test_default_model_runs_at_the_real_latent_size() -> None:
    model = LatentDiffusion(DiffusionConfig())
    assert model.config.sample_length == 4456 and model.config.cond_dim == 512
    with torch.inference_mode():
        out = model.unet(torch.randn(2, 1, 4456), torch.tensor([10, 900]), torch.randn(2, 512))
    assert out.shape == (2, 1, 4456)
    assert model.sample(torch.randn(2, 512), num_steps=1).shape == (2, 4456)
