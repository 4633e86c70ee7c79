"""A reconstruction run's weight folders: its newest checkpoint -> the folders the pipeline and the evaluation read
(`export_reconstruction`), and such folders -> the start of a new run (`initialise_from`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.model import LatentDiffusion
from diffnphr.encoders.loading import build_face_encoder, load_face_encoder
from diffnphr.train.checkpoints import list_checkpoints, load_checkpoint
from diffnphr.train.config import ReconstructionTrainingConfig

if TYPE_CHECKING:
    from diffnphr.train.ema import ExponentialAverage
    from diffnphr.train.reconstruction_models import ReconstructionModels

ENCODER_DIR, DIFFUSION_DIR, REGRESSION_DIR = "encoder", "diffusion", "baselines/regression"


def trained_tensors(models: ReconstructionModels, ema: ExponentialAverage) -> dict[str, Tensor]:
    """Flat name -> tensor of every trained module and its average, as a checkpoint holds them."""
    tensors = {}
    for name, module in models.trained.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
        tensors.update({f"ema.{name}.{key}": value for key, value in ema.shadow[name].state_dict().items()})
    return tensors


def export_reconstruction(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> dict[str, Path]:
    """Write a run's newest checkpoint (EMA weights) as weight folders; returns their paths.

    `out_dir/encoder/` (the run's encoder, `load_face_encoder` reads it), `out_dir/diffusion/` (`LatentDiffusion`, with the
    normalisation statistics) and, when trained, `out_dir/baselines/regression/`
    (`LatentRegressor`). Parameters are stored at `dtype` (float16 halves the download).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"{run_dir} holds no checkpoint to export; train first (python -m diffnphr train-reconstruction)."
        )
    checkpoint = load_checkpoint(found[-1])
    config = ReconstructionTrainingConfig.from_dict(checkpoint.state["config"])
    if config.frozen_encoder:
        encoder = load_face_encoder(config.frozen_encoder)
    else:
        encoder = build_face_encoder(config.encoder_type, config.encoder)
        encoder.load_state_dict(_prefixed(checkpoint.tensors, "ema.encoder."))
    cond_dim = encoder.cond_dim
    diffusion = LatentDiffusion(DiffusionConfig(**{**config.diffusion, "cond_dim": cond_dim}))
    diffusion.load_state_dict(_prefixed(checkpoint.tensors, "ema.diffusion."))
    paths = {
        "encoder": encoder.save_pretrained(out_dir / ENCODER_DIR, dtype=dtype),
        "diffusion": diffusion.save_pretrained(out_dir / DIFFUSION_DIR, dtype=dtype),
    }
    if config.regression:
        head = RegressionHead(RegressionHeadConfig(cond_dim=cond_dim, hidden_dim=config.regression_hidden))
        if config.frozen_encoder:
            head.load_state_dict(_prefixed(checkpoint.tensors, "ema.regression."))
            regressor = LatentRegressor(encoder, head)
        else:
            regressor = LatentRegressor(build_face_encoder(config.encoder_type, config.encoder), head)
            regressor.load_state_dict(_prefixed(checkpoint.tensors, "ema.regression."))
        paths["regression"] = regressor.save_pretrained(out_dir / REGRESSION_DIR, dtype=dtype)
    return paths


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The tensors under `prefix`, with it stripped."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


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
        models.encoder.load_state_dict(load_face_encoder(weights_dir / ENCODER_DIR).state_dict())
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
