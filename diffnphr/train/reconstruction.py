"""Joint training of the image encoder and the conditional 1D diffusion model on GPU renders.

The paper conditions its latent diffusion model on a frozen FaRL embedding of the photo. FaRL's
weights cannot be had here, so the default encoder has FaRL's architecture, smaller
(`ReconstructionTrainingConfig.encoder`), and is trained from scratch together with the U-Net:
trained by the diffusion loss and by a linear read-out of the head's generating factors
(`FactorReadout`: ICT identity coefficients, expression weights, appearance colours), which
gives the encoder a direct, low-dimensional signal about the face's shape. Setting
`frozen_encoder` to a converted FaRL folder gives the paper's setting instead (encoder loaded
and frozen, the renders sized to its input, no read-out).

Each step draws `batch_size` (identity, expression slot) heads of the decoder's training split
(`weights/decoder_latents`), renders them on the device with fresh random pose, light, hair,
background and camera (`diffnphr.data.renders.HeadRenderer`), crops them by the app's crop rule
and trains on (crop, z) pairs, z being the head's codebook latent normalised per dimension
(`LatentStatistics`). With `mix_appearance` each head wears the procedural colours of another
random training identity and z carries that identity's z_app: colours are then no key to the
head's identity, so the encoder must read its shape (with every head in its own colours, it
learns to recognise the 1,000 training heads by colour, which tells nothing about a new face).
The swap is exact because the decoder's colour field lives in the canonical space all heads
share: z_app of identity j on the geometry of identity i decodes j's colours (0.002-0.004 mean
absolute sRGB error on six pairs, against 0.04-0.44 between the two colourings). In the same step the direct-regression baseline (the same encoder
architecture + an MLP to z, `diffnphr.baselines.regression`) trains on the same crops with the
same optimiser settings and read-out, so the evaluation compares like with like. All trained weights keep
an exponential moving average (EMA); exports use it.

Runs live in one folder (`train_log.jsonl`, `checkpoint-<step>` folders from
`diffnphr.train.checkpoints`) and resume from their newest checkpoint, so training proceeds in
GPU commands of under 10 minutes. Every `validate_every` steps the log gets the losses on fixed
renders of held-out identities (targets: their fitted latents) and of training heads.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.data.backgrounds import BackgroundBank
from diffnphr.data.ict import ICTFaceModel, load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig
from diffnphr.devices import resolve_device
from diffnphr.diffusion.config import DiffusionConfig
from diffnphr.diffusion.model import LatentDiffusion
from diffnphr.encoders.farl import FaceEncoder, farl_vision_config
from diffnphr.train.checkpoints import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)
from diffnphr.train.config import ReconstructionTrainingConfig
from diffnphr.train.ema import ExponentialAverage
from diffnphr.train.log import LOG_FILE, TrainingLog
from diffnphr.train.loop import LoopSchedule, StepResult, TimeBox, run_training, seeded, step_generator
from diffnphr.train.reconstruction_data import VALIDATION_SEED, Batch, RenderBatches, TrainingHeads
from diffnphr.train.reconstruction_models import (
    DIFFUSION_DIR,
    ENCODER_DIR,
    REGRESSION_DIR,
    ReconstructionModels,
    initialise_from,
)

CONFIG_FILE = "config.json"
_STEP_SEED = 1_000_003  # render seeds of training steps: seed * _STEP_SEED + step


def _cosine_factor(config: ReconstructionTrainingConfig, step: int, restart_step: int | None) -> float:
    """Learning-rate factor: linear warm-up (again after a restart without optimiser state), then cosine to 5 %."""
    warm = min(1.0, (step + 1) / config.warmup_steps)
    if restart_step is not None:
        warm = min(warm, (step - restart_step + 1) / min(200, config.warmup_steps))
    progress = min(1.0, step / config.total_steps)
    return warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _losses(
    models: ReconstructionModels,
    batch: Batch,
    autocast: bool,
    readout_weight: float,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """The diffusion loss, the regression baseline's MSE (if trained) and each encoder's weighted read-out loss."""
    with torch.autocast(device_type=batch.crops.device.type, dtype=torch.bfloat16, enabled=autocast):
        pixels = models.encoder.preprocess(batch.crops)
        z_cond = models.encoder(pixels).float()
        diffusion_terms = models.diffusion.training_losses(batch.latents, z_cond, generator)
        terms = {"diffusion": diffusion_terms["denoising"]}
        if "conditional_mean" in diffusion_terms:
            terms["diffusion_mean"] = diffusion_terms["conditional_mean"]
        embeddings = {"diffusion": z_cond}
        if models.regressor is not None:
            embeddings["regression"] = models.regressor.encoder(pixels).float()
            predicted = models.regressor.head(embeddings["regression"]).float()
            terms["regression"] = (predicted - models.diffusion.normalize(batch.latents)).pow(2).mean()
        for name, readout in models.readouts.items():
            error = readout(embeddings[name]).float() - batch.factors
            terms[f"{name}_readout"] = readout_weight * error.pow(2).mean()
    return terms


def _validate(models: ReconstructionModels, batches: RenderBatches) -> dict[str, float]:
    """Losses on fixed renders of held-out identities and of training heads (same noise draws each time)."""
    count = batches.config.validation_renders
    sets = {"train": batches.training(VALIDATION_SEED + batches.config.seed + 1, count)}
    heldout = batches.heldout(count)
    if heldout is not None:
        sets["heldout"] = heldout
    was_training = {name: module.training for name, module in models.trained.items()}
    for module in models.trained.values():
        module.eval()
    results = {}
    with torch.no_grad():
        for name, batch in sets.items():
            generator = torch.Generator(device=batch.crops.device).manual_seed(1234)
            terms = _losses(models, batch, batches.device.type == "cuda", batches.config.readout_weight, generator)
            results.update({f"val_{name}_{term}": float(value) for term, value in terms.items()})
    for name, module in models.trained.items():
        module.train(was_training[name])
    return results


def train_reconstruction(
    out_dir: str | os.PathLike,
    latents_dir: str | os.PathLike,
    time_budget_s: float = 540.0,
    config: ReconstructionTrainingConfig | str | os.PathLike | None = None,
    *,
    total_steps: int | None = None,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume) the encoder + diffusion model (+ regression baseline) in `out_dir`.

    `latents_dir` is the decoder's latents folder (split, codebooks, statistics, fitted held-out
    latents; `weights/decoder_latents`). Resumes from the newest checkpoint when there is one
    (its stored config wins; a given config must agree except `ReconstructionTrainingConfig.resumable`). Stops at
    `total_steps`, after `stop_after_steps` steps of this call, or before `time_budget_s` would
    be overrun, always leaving a checkpoint. `backgrounds` is a background bank file for the
    renders (`python -m diffnphr build-backgrounds`). Returns a summary of the call.
    """
    budget = TimeBox(time_budget_s, time.monotonic(), stop_after_steps)
    run_dir = Path(out_dir)
    device = resolve_device(device)
    checkpoint = newest_checkpoint(run_dir, device)
    config = ReconstructionTrainingConfig.for_run(
        config, checkpoint.state["config"] if checkpoint else None, total_steps
    )
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    heads = TrainingHeads.load(latents_dir)
    if checkpoint is not None and checkpoint.state.get("split_fingerprint") != heads.split.fingerprint():
        raise ValueError(f"The checkpoint {checkpoint.path} was trained on another split than {latents_dir}'s.")
    bank = BackgroundBank.load(backgrounds, device) if backgrounds else None
    run = _ReconstructionRun(run_dir, config, heads, load_ict(ict_path), bank, device)
    restored = True
    if checkpoint is not None:
        restored = run.restore(checkpoint)
    elif config.init_from:
        initialise_from(run.models, config.init_from)
    log = TrainingLog(run_dir / LOG_FILE)
    log.write(
        {
            "event": "start",
            "step": checkpoint.step if checkpoint else 0,
            "device": str(device),
            "backgrounds": bool(bank),
            "optimizer_restored": restored,
        }
    )
    schedule = LoopSchedule(config.total_steps, config.log_every, config.checkpoint_every, config.validate_every)
    outcome = run_training(
        run, schedule, budget, log, checkpoint.step if checkpoint else 0, checkpoint.path if checkpoint else None
    )
    return {
        "step": outcome.step,
        "total_steps": config.total_steps,
        "done": outcome.step >= config.total_steps,
        "steps_this_call": budget.steps,
        "images_per_s": config.batch_size / budget.step_s if budget.step_s else None,
        "losses": outcome.records[-1] if outcome.records else {},
        "checkpoint": str(outcome.checkpoint),
        "elapsed_s": budget.elapsed_s(),
    }


class _ReconstructionRun:
    """The trainable state of a run (models, their EMA, the optimiser, the render batches) and one step."""

    def __init__(
        self,
        run_dir: Path,
        config: ReconstructionTrainingConfig,
        heads: TrainingHeads,
        ict: ICTFaceModel,
        backgrounds: BackgroundBank | None,
        device: torch.device,
    ) -> None:
        self.run_dir, self.config, self.heads, self.device = run_dir, config, heads, device
        with seeded(config.seed):
            self.models = ReconstructionModels(config, heads, device)
            image_size = self.models.encoder.model.config.image_size
            render = RenderConfig(**{**config.render, "image_size": image_size})
            self.batches = RenderBatches(config, heads, HeadRenderer(ict, device, render, backgrounds), device)
            self.models.add_readouts(config, self.batches.factor_dim)
        self.optimizer = torch.optim.AdamW(
            self.models.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.ema = ExponentialAverage(self.models.trained, config.ema_decay)
        self.restart_step: int | None = None  # the step a resume without optimiser moments restarted them at
        self.autocast = device.type == "cuda" and config.bf16

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Load a checkpoint's state; returns whether the optimiser moments were restored too."""
        _load_trained(self.models, self.ema, checkpoint.tensors)
        if checkpoint.optimizers is None:
            self.restart_step = checkpoint.step
            return False
        self.optimizer.load_state_dict(checkpoint.optimizers["adamw"])
        self.restart_step = checkpoint.state.get("restart_step")
        return True

    def train_step(self, step: int) -> StepResult:
        """One optimisation step on a fresh batch of renders (their seed and the diffusion noise follow `step`)."""
        config = self.config
        factor = _cosine_factor(config, step, self.restart_step)
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        batch = self.batches.training(config.seed * _STEP_SEED + step, config.batch_size)
        noise = step_generator(config.seed, step, self.device)
        terms = _losses(self.models, batch, self.autocast, config.readout_weight, noise)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in self.models.trained.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        self.optimizer.step()
        self.ema.update(step)
        return StepResult(terms, loss, {"lr_factor": factor})

    def validate(self) -> dict[str, float]:
        """Losses on fixed renders of held-out identities and of training heads."""
        return _validate(self.models, self.batches)

    def save(self, step: int) -> Path:
        """Write checkpoint-<step>: trained weights, their averages, the optimiser moments and the config."""
        state = {
            "config": self.config.to_dict(),
            "restart_step": self.restart_step,
            "split_fingerprint": self.heads.split.fingerprint(),
        }
        tensors = _trained_tensors(self.models, self.ema)
        return save_checkpoint(self.run_dir, step, tensors, {"adamw": self.optimizer.state_dict()}, state, keep=2)


def _trained_tensors(models: ReconstructionModels, ema: ExponentialAverage) -> dict[str, Tensor]:
    """Flat name -> tensor of every trained module and its average, for a checkpoint."""
    tensors = {}
    for name, module in models.trained.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
        tensors.update({f"ema.{name}.{key}": value for key, value in ema.shadow[name].state_dict().items()})
    return tensors


def _load_trained(models: ReconstructionModels, ema: ExponentialAverage, tensors: dict[str, Tensor]) -> None:
    """Restore the trained modules and their averages from checkpoint tensors (strict)."""
    for name, module in models.trained.items():
        for target, prefix in ((module, f"{name}."), (ema.shadow[name], f"ema.{name}.")):
            target.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})


def export_reconstruction(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike, dtype: torch.dtype = torch.float16
) -> dict[str, Path]:
    """Write a run's newest checkpoint (EMA weights) as weight folders; returns their paths.

    `out_dir/encoder/` (`FaceEncoder`), `out_dir/diffusion/` (`LatentDiffusion`, with the
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
        encoder = FaceEncoder.from_pretrained(config.frozen_encoder)
    else:
        encoder = FaceEncoder.from_config(farl_vision_config(**config.encoder))
        encoder.load_state_dict(_prefixed(checkpoint.tensors, "ema.encoder."))
    cond_dim = encoder.model.config.projection_dim
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
            regressor = LatentRegressor(FaceEncoder.from_config(farl_vision_config(**config.encoder)), head)
            regressor.load_state_dict(_prefixed(checkpoint.tensors, "ema.regression."))
        paths["regression"] = regressor.save_pretrained(out_dir / REGRESSION_DIR, dtype=dtype)
    return paths


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
