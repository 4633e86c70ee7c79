"""`LatentDiffusion`: the conditional 1D U-Net, the data normalisation it models, and its noise process.

Training noise comes from diffusers' `DDPMScheduler`; sampling uses `DDIMScheduler` (default) or
`DPMSolverMultistepScheduler` (DPM-Solver++), all built from the same `DiffusionConfig` so the
training and sampling noise schedules always agree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler
from torch import Tensor

from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.mean_head import latent_mlp
from diffnphr.diffusion.unet import UNet1D
from diffnphr.weights import PretrainedModule

SAMPLERS = ("ddim", "dpmsolver++")


class LatentDiffusion(PretrainedModule):
    """Conditional diffusion over fixed-length latent vectors, conditioned on an image embedding.

    Holds the U-Net and the per-dimension statistics (`data_mean`, `data_std`, saved with the
    weights) that map raw latents to the unit-scale space the diffusion runs in.

    With `config.mean_head_hidden` it also holds `mean_head`, an MLP from z_cond to the latent's
    conditional mean (trained by squared error), and the U-Net models only the residual around
    that mean. Why: the U-Net hears the condition through per-channel FiLM and a few attention
    tokens, global signals from which a position-specific shift of 4456 values is hard to build;
    trained on latents directly, it learnt the prior and ignored the face (its samples averaged
    to the mean latent). The mean head gives every position its conditional value directly; the
    diffusion adds the variation the image leaves open.
    """

    config_class = DiffusionConfig

    def __init__(self, config: DiffusionConfig) -> None:
        if config.in_channels != 1:
            raise ValueError(f"LatentDiffusion models 1-channel latent vectors; got in_channels={config.in_channels}.")
        super().__init__(config)
        self.unet = UNet1D(config)
        self.mean_head = (
            latent_mlp(config.cond_dim, config.mean_head_hidden, config.sample_length)
            if config.mean_head_hidden is not None
            else None
        )
        self.register_buffer("data_mean", torch.zeros(config.sample_length))
        self.register_buffer("data_std", torch.ones(config.sample_length))
        self.noise_scheduler = DDPMScheduler(**self._schedule_kwargs())

    def _schedule_kwargs(self) -> dict[str, object]:
        return {
            "num_train_timesteps": self.config.num_train_timesteps,
            "beta_schedule": self.config.beta_schedule,
            "prediction_type": self.config.prediction_type,
        }

    @property
    def device(self) -> torch.device:
        """The device the weights live on (where sampling noise is drawn)."""
        return self.data_mean.device

    @property
    def max_sampling_steps(self) -> int:
        """The most denoising steps `sample` accepts (half the training timesteps, as the samplers' spacing needs)."""
        return self.config.num_train_timesteps // 2

    def set_normalization(self, mean: Tensor, std: Tensor) -> None:
        """Store the per-dimension mean/std of the training latents (raw space) for (de)normalising."""
        length = self.config.sample_length
        mean, std = torch.as_tensor(mean), torch.as_tensor(std)
        if mean.shape != (length,) or std.shape != (length,):
            raise ValueError(
                f"Normalisation statistics must have shape ({length},); got mean {tuple(mean.shape)} "
                f"and std {tuple(std.shape)}."
            )
        if not torch.isfinite(mean).all() or not torch.isfinite(std).all() or (std <= 0).any():
            raise ValueError(
                "Normalisation statistics must be finite and the std strictly positive "
                "(give constant dimensions, such as the latent's padding, a std of 1)."
            )
        self.data_mean.copy_(mean)
        self.data_std.copy_(std)

    def normalize(self, latents: Tensor) -> Tensor:
        """Raw latents [B, L] -> the unit-scale space the diffusion models."""
        return (latents - self.data_mean) / self.data_std

    def denormalize(self, samples: Tensor) -> Tensor:
        """Diffusion-space samples [B, L] -> raw latents."""
        return samples * self.data_std + self.data_mean

    def _check_condition(self, z_cond: Tensor) -> None:
        if z_cond.dim() != 2 or z_cond.shape[1] != self.config.cond_dim:
            raise ValueError(f"z_cond must have shape [B, {self.config.cond_dim}]; got {tuple(z_cond.shape)}.")

    def conditional_mean(self, z_cond: Tensor) -> Tensor:
        """The normalised latent's conditional mean [B, L] for embeddings `z_cond` [B, C] (0 without a mean head)."""
        if self.mean_head is None:
            return z_cond.new_zeros(z_cond.shape[0], self.config.sample_length)
        return self.mean_head(z_cond)

    def training_losses(
        self, x0: Tensor, z_cond: Tensor, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Losses (scalars) for a batch of raw latents `x0` [B, L] and conditions `z_cond` [B, C].

        `"denoising"`: uniform timesteps, the configured target (noise or velocity), condition
        dropout to the null embedding with probability `cond_drop_prob`, optional min-SNR-γ
        weighting (`snr_gamma`). With a mean head also `"conditional_mean"`: the mean head's
        squared error, the denoising then running on the residual around its (detached)
        prediction. `generator`, if given, must live on the model's device.
        """
        self._check_condition(z_cond)
        if x0.dim() != 2 or x0.shape != (z_cond.shape[0], self.config.sample_length):
            raise ValueError(
                f"x0 must have shape [{z_cond.shape[0]}, {self.config.sample_length}] to match z_cond; "
                f"got {tuple(x0.shape)}."
            )
        batch, device = x0.shape[0], x0.device
        clean = self.normalize(x0)
        losses: dict[str, Tensor] = {}
        if self.mean_head is not None:
            centre = self.mean_head(z_cond)
            losses["conditional_mean"] = (centre.float() - clean).pow(2).mean()
            clean = clean - centre.detach().to(clean.dtype)
        clean = clean.unsqueeze(1)
        timesteps = torch.randint(0, self.config.num_train_timesteps, (batch,), device=device, generator=generator)
        noise = torch.randn(clean.shape, device=device, dtype=clean.dtype, generator=generator)
        noisy = self.noise_scheduler.add_noise(clean, noise, timesteps)
        if self.config.prediction_type == "epsilon":
            target = noise
        else:
            target = self.noise_scheduler.get_velocity(clean, noise, timesteps)
        drop = torch.rand(batch, device=device, generator=generator) < self.config.cond_drop_prob
        prediction = self.unet(noisy, timesteps, z_cond, drop)
        per_sample = (prediction - target).pow(2).mean(dim=(1, 2))
        if self.config.snr_gamma is not None:
            per_sample = per_sample * self._min_snr_weight(timesteps)
        losses["denoising"] = per_sample.mean()
        return losses

    def _min_snr_weight(self, timesteps: Tensor) -> Tensor:
        """min(SNR, γ) expressed for the configured target (Hang et al. 2023, min-SNR-γ)."""
        alphas = self.noise_scheduler.alphas_cumprod.to(timesteps.device)[timesteps]
        snr = alphas / (1 - alphas)
        clipped = snr.clamp(max=self.config.snr_gamma)
        return clipped / snr if self.config.prediction_type == "epsilon" else clipped / (snr + 1)

    def make_sampler(self, name: str) -> DDIMScheduler | DPMSolverMultistepScheduler:
        """A fresh sampling scheduler (`"ddim"` or `"dpmsolver++"`) matching the training schedule.

        v-prediction starts from t = T-1 ("trailing" steps, exact for few steps). With the cosine
        schedule alpha_bar(T-1) ≈ 2e-9, where an epsilon model's clean-sample estimate is amplified
        ~2e4 times, so epsilon models start one stride lower ("leading" steps, offset 1, as in
        Stable Diffusion).
        """
        if self.config.prediction_type == "v_prediction":
            spacing: dict[str, object] = {"timestep_spacing": "trailing"}
        else:
            spacing = {"timestep_spacing": "leading", "steps_offset": 1}
        if name == "ddim":
            sampler = DDIMScheduler(**self._schedule_kwargs(), **spacing, clip_sample=False)
            # Step coefficients in float64: next to alpha_bar ≈ 0, DDIM with eta > 0 takes the square
            # root of 1 - alpha_bar_prev - sigma² ≈ 1e-8, which float32 rounds below zero (NaN).
            sampler.alphas_cumprod = sampler.alphas_cumprod.double()
            return sampler
        if name == "dpmsolver++":
            return DPMSolverMultistepScheduler(**self._schedule_kwargs(), **spacing, algorithm_type="dpmsolver++")
        raise ValueError(f"Unknown sampler {name!r}; choose one of {SAMPLERS}.")

    @torch.inference_mode()
    def sample(
        self,
        z_cond: Tensor,
        num_steps: int = 25,
        eta: float = 0.0,
        seed: int | Sequence[int] | None = 0,
        guidance_scale: float = 1.0,
        scheduler: str = "ddim",
        average_of: int | Sequence[int] = 1,
        progress: Callable[[int, int], None] | None = None,
    ) -> Tensor:
        """Draw raw latents [B, L] for image embeddings `z_cond` [B, cond_dim].

        Deterministic for a given `seed` on a given device (`None` draws a fresh seed), including
        DDIM with `eta > 0`. `guidance_scale != 1` applies classifier-free guidance (conditional
        and null condition in one batched forward; with a mean head the guidance acts on the
        residual, the centre always being the conditional mean). `progress(step, total)` is called
        after each denoising step. `average_of=k` draws k samples per condition and returns their
        mean: an estimate of the latent's posterior mean, which scores better than a single sample
        against the true head (test-time ensembling, as Marigold does for depth).

        Every sample of every condition goes through the U-Net together: one forward per step.
        One `seed` draws the whole batch's noise from one generator (row b's noise then depends on
        the rows before it). A sequence of B seeds gives each condition its own generator, so
        row b is the latent `z_cond[b:b+1]` gets alone with `seed[b]`, whatever its batch-mates
        (up to the float rounding of a larger batch). `average_of` may be a sequence of B counts,
        samples per condition.
        """
        self._check_condition(z_cond)
        if not 1 <= num_steps <= self.max_sampling_steps:
            raise ValueError(f"num_steps must be between 1 and {self.max_sampling_steps}; got {num_steps}.")
        if eta < 0:
            raise ValueError(f"eta must be >= 0; got {eta}.")
        if eta != 0 and scheduler != "ddim":
            raise ValueError("eta only applies to the 'ddim' sampler.")
        counts = _sample_counts(average_of, z_cond.shape[0])
        generators = self._generators(seed, z_cond.shape[0])
        sampler = self.make_sampler(scheduler)
        sampler.set_timesteps(num_steps, device=self.device)

        dtype = self.data_mean.dtype
        z_cond = z_cond.to(device=self.device, dtype=dtype)
        z_cond = z_cond.repeat_interleave(torch.tensor(counts, device=self.device), dim=0)
        batch = z_cond.shape[0]
        guided = guidance_scale != 1.0
        if guided:
            cond_input = torch.cat([z_cond, z_cond])
            drop = torch.arange(2 * batch, device=self.device) >= batch
        sample = self._noise(generators, counts, dtype) * sampler.init_noise_sigma

        total = len(sampler.timesteps)
        for index, timestep in enumerate(sampler.timesteps):
            model_input = sampler.scale_model_input(sample, timestep)
            if guided:
                both = self.unet(torch.cat([model_input, model_input]), timestep, cond_input, drop)
                conditional, unconditional = both.chunk(2)
                prediction = unconditional + guidance_scale * (conditional - unconditional)
            else:
                prediction = self.unet(model_input, timestep, z_cond)
            if scheduler != "ddim":
                sample = sampler.step(prediction, timestep, sample, generator=generators[0]).prev_sample
            elif len(generators) == 1 or eta == 0:
                sample = sampler.step(prediction, timestep, sample, eta=eta, generator=generators[0]).prev_sample
            else:  # each condition's step noise from its own generator
                noise = self._noise(generators, counts, prediction.dtype)
                sample = sampler.step(prediction, timestep, sample, eta=eta, variance_noise=noise).prev_sample
            if progress is not None:
                progress(index + 1, total)
        samples = sample.squeeze(1) + self.conditional_mean(z_cond)
        if len(set(counts)) == 1:
            return self.denormalize(samples.view(-1, counts[0], self.config.sample_length).mean(dim=1))
        return self.denormalize(torch.stack([part.mean(dim=0) for part in samples.split(counts)]))

    def _generators(self, seed: int | Sequence[int] | None, batch: int) -> list[torch.Generator]:
        """One generator for the batch (`seed` an int or None), or one per condition (a sequence of B seeds)."""
        if seed is None or isinstance(seed, int):
            generator = torch.Generator(device=self.device)
            if seed is None:
                generator.seed()
            else:
                generator.manual_seed(seed)
            return [generator]
        seeds = list(seed)
        if len(seeds) != batch or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
            raise ValueError(f"seed must be a whole number or a sequence of {batch} (one per condition); got {seed!r}.")
        return [torch.Generator(device=self.device).manual_seed(s) for s in seeds]

    def _noise(self, generators: list[torch.Generator], counts: list[int], dtype: torch.dtype) -> Tensor:
        """Standard normal noise [sum(counts), 1, L]: from one generator, or each condition's rows from its own."""
        length = self.config.sample_length
        if len(generators) == 1:
            return torch.randn((sum(counts), 1, length), generator=generators[0], device=self.device, dtype=dtype)
        return torch.cat(
            [
                torch.randn((count, 1, length), generator=generator, device=self.device, dtype=dtype)
                for generator, count in zip(generators, counts)
            ]
        )


def _sample_counts(average_of: int | Sequence[int], batch: int) -> list[int]:
    """Samples to average per condition: `average_of` for each, or the sequence given (one per condition)."""
    counts = [average_of] * batch if isinstance(average_of, int) and not isinstance(average_of, bool) else average_of
    try:
        counts = list(counts)
    except TypeError:
        counts = []
    if len(counts) != batch or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts):
        raise ValueError(
            f"average_of must be a whole number of at least 1, or one such per condition; got {average_of!r}."
        )
    return counts
