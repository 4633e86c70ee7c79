"""What a reconstruction run trains: the encoder, the diffusion model, the regression baseline and the
encoders' factor read-outs; and the loss they are trained by (`ReconstructionObjective`, the one module a
distributed run wraps)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.model import LatentDiffusion
from diffnphr.encoders.loading import build_face_encoder, load_face_encoder

if TYPE_CHECKING:
    from diffnphr.train.config import ReconstructionTrainingConfig
    from diffnphr.train.reconstruction_data import Batch, TrainingHeads


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
        """`heads.mean`, `heads.std`: the per-dimension latent statistics the diffusion model and the baseline
        normalise by."""
        mean, std = heads.mean, heads.std
        if config.frozen_encoder:
            self.encoder = load_face_encoder(config.frozen_encoder, device=device).freeze()
        else:
            self.encoder = build_face_encoder(config.encoder_type, config.encoder).to(device).train()
        cond_dim = self.encoder.cond_dim
        self.diffusion = LatentDiffusion(DiffusionConfig(**{**config.diffusion, "cond_dim": cond_dim})).to(device)
        self.diffusion.set_normalization(mean, std)
        self.diffusion.train()
        self.regressor: LatentRegressor | None = None
        if config.regression:
            if config.frozen_encoder:
                regression_encoder = self.encoder
            else:  # its own weights, initialised independently
                torch.manual_seed(config.seed + 1)
                regression_encoder = build_face_encoder(config.encoder_type, config.encoder).to(device).train()
            head = RegressionHead(RegressionHeadConfig(cond_dim=cond_dim, hidden_dim=config.regression_hidden)).to(
                device
            )
            head.data_mean.copy_(mean)
            head.data_std.copy_(std)
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
        cond_dim, device = self.encoder.cond_dim, self.diffusion.data_mean.device
        self.readouts["diffusion"] = FactorReadout(cond_dim, factor_dim).to(device)
        if self.regressor is not None:
            self.readouts["regression"] = FactorReadout(cond_dim, factor_dim).to(device)
        self.trained.update({f"{name}_readout": readout for name, readout in self.readouts.items()})

    def parameters(self) -> list[nn.Parameter]:
        """Every trained parameter (one optimiser holds them all)."""
        return [p for module in self.trained.values() for p in module.parameters() if p.requires_grad]


class ReconstructionObjective(nn.Module):
    """The loss terms of one batch: the diffusion loss, the regression baseline's MSE (if trained) and each
    encoder's weighted factor read-out. One module holding every trained module, so that a distributed run
    wraps it once in `DistributedDataParallel` (whose forward must be the one that computes the loss)."""

    def __init__(self, models: ReconstructionModels, readout_weight: float) -> None:
        super().__init__()
        self.encoder, self.diffusion, self.regressor = models.encoder, models.diffusion, models.regressor
        self.readouts = nn.ModuleDict(models.readouts)
        self.readout_weight = readout_weight

    def forward(self, batch: Batch, autocast: bool, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """Named loss terms (float32 scalars) of `batch`; `generator` draws the diffusion noise."""
        with torch.autocast(device_type=batch.crops.device.type, dtype=torch.bfloat16, enabled=autocast):
            pixels = self.encoder.preprocess(batch.crops)
            z_cond = self.encoder(pixels).float()
            diffusion_terms = self.diffusion.training_losses(batch.latents, z_cond, generator)
            terms = {"diffusion": diffusion_terms["denoising"]}
            if "conditional_mean" in diffusion_terms:
                terms["diffusion_mean"] = diffusion_terms["conditional_mean"]
            embeddings = {"diffusion": z_cond}
            if self.regressor is not None:
                embeddings["regression"] = self.regressor.encoder(pixels).float()
                predicted = self.regressor.head(embeddings["regression"]).float()
                terms["regression"] = (predicted - self.diffusion.normalize(batch.latents)).pow(2).mean()
            for name, readout in self.readouts.items():
                error = readout(embeddings[name]).float() - batch.factors
                terms[f"{name}_readout"] = self.readout_weight * error.pow(2).mean()
        return terms
