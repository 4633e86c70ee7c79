"""What a reconstruction run trains: the encoder, the diffusion model, the regression baseline and the
encoders' factor read-outs, and how a run starts from exported weights."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.model import LatentDiffusion
from diffnphr.encoders.farl import FaceEncoder, farl_vision_config

if TYPE_CHECKING:
    from diffnphr.train.config import ReconstructionTrainingConfig
    from diffnphr.train.reconstruction_data import TrainingHeads

ENCODER_DIR, DIFFUSION_DIR, REGRESSION_DIR = "encoder", "diffusion", "baselines/regression"


class FactorReadout(nn.Module):
    """Linear map from an encoder's embedding to a head's standardised generating factors (training only).

    The factors are what made the rendered head: its ICT identity coefficients, its expression's
    blendshape weights and its appearance's region colours (`RenderBatches.factors`). Predicting them
    linearly from `z_cond` asks the encoder to carry them, which the diffusion loss alone
    asks only weakly; the read-out is not exported.
    """

    def __init__(self, cond_dim: int, factor_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, factor_dim)

    def forward(self, z_cond: Tensor) -> Tensor:
        """Predicted standardised factors [B, factor_dim] from embeddings [B, cond_dim]."""
        return self.linear(z_cond)


class ReconstructionModels:
    """What a run trains: encoder + diffusion, and optionally the regression baseline (own encoder)."""

    def __init__(self, config: ReconstructionTrainingConfig, heads: TrainingHeads, device: torch.device) -> None:
        if config.frozen_encoder:
            self.encoder = FaceEncoder.from_pretrained(config.frozen_encoder, device=device).freeze()
        else:
            self.encoder = FaceEncoder.from_config(farl_vision_config(**config.encoder)).to(device).train()
        cond_dim = self.encoder.model.config.projection_dim
        self.diffusion = LatentDiffusion(DiffusionConfig(**{**config.diffusion, "cond_dim": cond_dim})).to(device)
        self.diffusion.set_normalization(heads.mean, heads.std)
        self.diffusion.train()
        self.regressor: LatentRegressor | None = None
        if config.regression:
            if config.frozen_encoder:
                regression_encoder = self.encoder
            else:  # its own weights, initialised independently
                torch.manual_seed(config.seed + 1)
                regression_encoder = FaceEncoder.from_config(farl_vision_config(**config.encoder)).to(device).train()
            head = RegressionHead(RegressionHeadConfig(cond_dim=cond_dim, hidden_dim=config.regression_hidden)).to(
                device
            )
            head.data_mean.copy_(heads.mean)
            head.data_std.copy_(heads.std)
            self.regressor = LatentRegressor(regression_encoder, head).train()
        self.trained: dict[str, nn.Module] = {"diffusion": self.diffusion}
        if not config.frozen_encoder:
            self.trained["encoder"] = self.encoder
        if self.regressor is not None:
            self.trained["regression"] = self.regressor if not config.frozen_encoder else self.regressor.head
        self.readouts: dict[str, FactorReadout] = {}

    def add_readouts(self, config: ReconstructionTrainingConfig, factor_dim: int) -> None:
        """A factor read-out per trained encoder (it exists to shape the encoder: a frozen one gets none)."""
        if config.readout_weight == 0 or config.frozen_encoder:
            return
        cond_dim, device = self.encoder.model.config.projection_dim, self.diffusion.data_mean.device
        self.readouts["diffusion"] = FactorReadout(cond_dim, factor_dim).to(device)
        if self.regressor is not None:
            self.readouts["regression"] = FactorReadout(cond_dim, factor_dim).to(device)
        self.trained.update({f"{name}_readout": readout for name, readout in self.readouts.items()})

    def parameters(self) -> list[nn.Parameter]:
        """Every trained parameter (one optimiser holds them all)."""
        return [p for module in self.trained.values() for p in module.parameters() if p.requires_grad]


def initialise_from(models: ReconstructionModels, weights_dir: str | os.PathLike) -> None:
    """Start a run's models from an exported weights folder (`encoder/`, `diffusion/`, `baselines/regression/`).

    Lets a run continue a shipped model with a changed recipe instead of starting from scratch.
    Shapes must match; what the folder lacks may only be the diffusion's mean head (a run that
    adds one starts it fresh); a frozen encoder stays the one the config names. The factor
    read-outs are not exported, so they start fresh. The latent normalisation statistics stay
    the run's own: its targets may come from another decoder than the folder's models saw.
    """
    weights_dir = Path(weights_dir)
    if not (weights_dir / DIFFUSION_DIR).is_dir():
        raise FileNotFoundError(f"{weights_dir} holds no {DIFFUSION_DIR}/ folder to start the run from.")
    own = models.diffusion.data_mean.clone(), models.diffusion.data_std.clone()
    if "encoder" in models.trained:
        models.encoder.load_state_dict(FaceEncoder.from_pretrained(weights_dir / ENCODER_DIR).state_dict())
    diffusion = LatentDiffusion.from_pretrained(weights_dir / DIFFUSION_DIR)
    missing, unexpected = models.diffusion.load_state_dict(diffusion.state_dict(), strict=False)
    if unexpected or any(not key.startswith("mean_head.") for key in missing):
        raise ValueError(
            f"{weights_dir / DIFFUSION_DIR} does not fit this run's diffusion model "
            f"(missing {missing}, unexpected {unexpected})."
        )
    if models.regressor is not None:
        regressor = LatentRegressor.from_pretrained(weights_dir / REGRESSION_DIR)
        if "encoder" in models.trained:
            models.regressor.load_state_dict(regressor.state_dict())
        else:
            models.regressor.head.load_state_dict(regressor.head.state_dict())
        models.regressor.head.data_mean.copy_(own[0])
        models.regressor.head.data_std.copy_(own[1])
    models.diffusion.set_normalization(*own)
