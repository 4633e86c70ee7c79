"""The one configuration of the conditional 1D latent diffusion model (network and noise process).

Flat (no nested dataclasses) so that it round-trips through `config.json` unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

PREDICTION_TYPES = ("epsilon", "v_prediction")
BETA_SCHEDULES = ("squaredcos_cap_v2", "linear")


@dataclass
class DiffusionConfig:
    """Sizes of the 1D U-Net and settings of the noise process it is trained for.

    Defaults are the project's CPU-friendly model for the 4456-long MonoNPHM latent
    (z_geo 2176, z_exp 100, z_app 2176, 4 values of padding).
    """

    sample_length: int = 4456
    in_channels: int = 1
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2, 2)
    res_blocks_per_level: int = 1
    attention_levels: tuple[int, ...] = (2, 3)
    attention_heads: int = 4
    norm_groups: int = 8
    cond_dim: int = 512
    cond_tokens: int = 4
    time_embed_dim: int = 128
    dropout: float = 0.0
    prediction_type: str = "v_prediction"
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    cond_drop_prob: float = 0.1
    snr_gamma: float | None = None
    # Width of the conditional-mean MLP (`mean_head.latent_mlp`); None: the paper's plain diffusion.
    # With it the model predicts the latent's conditional mean from z_cond and diffuses only the
    # residual around it (see `LatentDiffusion`).
    mean_head_hidden: int | None = None

    def __post_init__(self) -> None:
        self.channel_mults = tuple(int(m) for m in self.channel_mults)
        self.attention_levels = tuple(int(level) for level in self.attention_levels)
        levels = len(self.channel_mults)
        if levels < 1:
            raise ValueError("channel_mults needs at least one level.")
        factor = 2 ** (levels - 1)
        if self.sample_length < factor or self.sample_length % factor:
            raise ValueError(
                f"sample_length {self.sample_length} must be a positive multiple of {factor}: a U-Net "
                f"with {levels} levels halves the length {levels - 1} times (pad the latent, e.g. 4452 -> 4456)."
            )
        bad_levels = [level for level in self.attention_levels if not 0 <= level < levels]
        if bad_levels:
            raise ValueError(f"attention_levels {bad_levels} are outside 0..{levels - 1}.")
        for width in {self.base_channels * m for m in self.channel_mults}:
            if width % self.norm_groups or width % self.attention_heads:
                raise ValueError(
                    f"Channel width {width} must be divisible by norm_groups ({self.norm_groups}) "
                    f"and attention_heads ({self.attention_heads})."
                )
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, not {self.prediction_type!r}.")
        if self.beta_schedule not in BETA_SCHEDULES:
            raise ValueError(f"beta_schedule must be one of {BETA_SCHEDULES}, not {self.beta_schedule!r}.")
        if not 0.0 <= self.cond_drop_prob < 1.0:
            raise ValueError(f"cond_drop_prob must be in [0, 1), not {self.cond_drop_prob}.")
        if self.snr_gamma is not None and self.snr_gamma <= 0:
            raise ValueError(f"snr_gamma must be positive (or None to disable), not {self.snr_gamma}.")
        if self.mean_head_hidden is not None and self.mean_head_hidden < 1:
            raise ValueError(
                f"mean_head_hidden must be positive (or None for no conditional mean), not {self.mean_head_hidden}."
            )
        if (
            min(
                self.in_channels,
                self.res_blocks_per_level,
                self.cond_dim,
                self.cond_tokens,
                self.time_embed_dim,
                self.num_train_timesteps,
            )
            < 1
        ):
            raise ValueError("Sizes and counts in DiffusionConfig must be positive.")
