"""Joint training of the image encoder and the conditional 1D diffusion model on GPU renders.

The paper conditions its latent diffusion model on a frozen FaRL embedding of the photo. FaRL's
weights cannot be had here, so the default encoder is a CNN trained from scratch together with
the U-Net (`ReconstructionTrainingConfig.encoder_type`: a torchvision-layout ResNet-18,
`diffnphr.encoders.resnet`; "farl" trains FaRL's ViT architecture instead): trained by the
diffusion loss and by a linear read-out of the head's generating factors (`FactorReadout`), which
gives the encoder a direct, low-dimensional signal about the face's shape. Setting
`frozen_encoder` to an encoder folder (e.g. a converted FaRL) gives the paper's setting instead
(encoder loaded and frozen, the renders sized to its input, no read-out).

Each step renders `batch_size` heads on the device with fresh random pose, light, background and
camera (`diffnphr.data.renders.HeadRenderer`), each with its own hair, crops them by the app's
crop rule and trains on (crop, z) pairs, z being the head's exact latent normalised per dimension
(`LatentStatistics`): by default every head is new and z comes from the factor map
(`heads: "fresh"`, `reconstruction_data.FreshHeadBatches`); `heads: "split"` draws the decoder's
1,000 training identities × 8 expressions with their codebook latents instead (`RenderBatches`,
with `mix_appearance`). In the same step the direct-regression baseline (the same encoder
architecture + an MLP to z, `diffnphr.baselines.regression`) trains on the same crops with the
same optimiser settings and read-out, so the evaluation compares like with like. All trained weights keep
an exponential moving average (EMA); exports use it.

Runs live in one folder (`train_log.jsonl`, `checkpoint-<step>` folders from
`diffnphr.train.checkpoints`) and resume from their newest checkpoint, so training proceeds in
GPU commands of under 10 minutes. Under `torchrun` a run trains on every process it is given
(`diffnphr.train.distributed`: the batch split over the processes, each rendering its own share
from its own seeds, gradients averaged, rank 0 writing), and resumes on any number of them. Every
`validate_every` steps the log gets the losses on fixed renders of held-out identities (targets:
their fitted latents) and of training heads.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffnphr.data.backgrounds import BackgroundBank
from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig
from diffnphr.devices import resolve_device
from diffnphr.nphm.factor_map import FactorMap
from diffnphr.train.checkpoints import Checkpoint, newest_checkpoint, save_checkpoint
from diffnphr.train.config import ReconstructionTrainingConfig
from diffnphr.train.distributed import SINGLE_PROCESS, broadcast_buffers, distributed_context, wrap
from diffnphr.train.ema import ExponentialAverage
from diffnphr.train.log import LOG_FILE, TrainingLog
from diffnphr.train.loop import LoopSchedule, StepResult, TimeBox, run_training, seeded, step_generator
from diffnphr.train.reconstruction_data import (
    VALIDATION_SEED,
    FreshHeadBatches,
    RenderBatches,
    TrainingHeads,
)
from diffnphr.train.reconstruction_export import export_reconstruction, initialise_from, trained_tensors
from diffnphr.train.reconstruction_models import ReconstructionModels, ReconstructionObjective
from diffnphr.train.timing import RenderTiming

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel
    from diffnphr.train.distributed import DistributedContext

Batches = FreshHeadBatches | RenderBatches
__all__ = ["export_reconstruction", "train_reconstruction"]

CONFIG_FILE = "config.json"
_STEP_SEED = 1_000_003  # render seeds of training batches: seed * _STEP_SEED + draw index (one draw per step alone)


def _cosine_factor(config: ReconstructionTrainingConfig, step: int, restart_step: int | None) -> float:
    """Learning-rate factor: linear warm-up (again after a restart without optimiser state), then cosine to 5 %."""
    warm = min(1.0, (step + 1) / config.warmup_steps)
    if restart_step is not None:
        warm = min(warm, (step - restart_step + 1) / min(200, config.warmup_steps))
    progress = min(1.0, step / config.total_steps)
    return warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _validate(
    objective: ReconstructionObjective, models: ReconstructionModels, batches: Batches, autocast: bool
) -> dict[str, float]:
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
            terms = objective(batch, autocast, generator)
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

    `latents_dir` is the decoder's latents folder (split, statistics, fitted held-out latents and,
    for `heads: "split"`, codebooks; `weights/decoder_latents`); fresh heads take their targets from
    the config's `factor_map` folder. Resumes from the newest checkpoint when there is one
    (its stored config wins; a given config must agree except `ReconstructionTrainingConfig.resumable`). Stops at
    `total_steps`, after `stop_after_steps` steps of this call, or before `time_budget_s` would
    be overrun, always leaving a checkpoint. `backgrounds` is a background bank file for the
    renders (`python -m diffnphr build-backgrounds`). Under torchrun every process calls this
    (module docstring). Returns a summary of the call.
    """
    budget = TimeBox(time_budget_s, time.monotonic(), stop_after_steps)
    with distributed_context(resolve_device(device)) as (context, device):
        run_dir = Path(out_dir)
        checkpoint = newest_checkpoint(run_dir, device)
        config = ReconstructionTrainingConfig.for_run(
            config, checkpoint.state["config"] if checkpoint else None, total_steps
        )
        if context.is_main:
            (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")
        heads = TrainingHeads.load(latents_dir, codebooks=config.heads == "split")
        if checkpoint is not None and checkpoint.state.get("split_fingerprint") != heads.split.fingerprint():
            raise ValueError(f"The checkpoint {checkpoint.path} was trained on another split than {latents_dir}'s.")
        bank = BackgroundBank.load(backgrounds, device) if backgrounds else None
        run = _ReconstructionRun(run_dir, config, heads, load_ict(ict_path), bank, device, context)
        restored = run.start(checkpoint)
        log = TrainingLog(run_dir / LOG_FILE)
        if context.is_main:
            log.write(
                {
                    "event": "start",
                    "step": run.first_step,
                    "device": str(device),
                    "world_size": context.world_size,
                    "heads": config.heads,
                    "encoder_type": config.encoder_type,
                    "backgrounds": bool(bank),
                    "optimizer_restored": restored,
                }
            )
        schedule = LoopSchedule(config.total_steps, config.log_every, config.checkpoint_every, config.validate_every)
        last = checkpoint.path if checkpoint else None
        outcome = run_training(run, schedule, budget, log, run.first_step, last, context, device)
        return {
            "step": outcome.step,
            "total_steps": config.total_steps,
            "done": outcome.step >= config.total_steps,
            "steps_this_call": budget.steps,
            "world_size": context.world_size,
            "rank": context.rank,
            "draws": run.draws(outcome.step),
            "images_per_s": config.batch_size / budget.step_s if budget.step_s else None,
            **run.timing.summary(),
            "losses": outcome.records[-1] if outcome.records else {},
            "checkpoint": str(outcome.checkpoint) if outcome.checkpoint else None,
            "weights_sha256": run.weights_digest(),
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
        context: DistributedContext = SINGLE_PROCESS,
    ) -> None:
        self.run_dir, self.config, self.heads, self.device, self.context = run_dir, config, heads, device, context
        self.batch_share = context.share(config.batch_size)
        with seeded(config.seed):
            self.models = ReconstructionModels(config, heads, device)
            render = RenderConfig(**{**config.render, "image_size": self.models.encoder.image_size})
            renderer = HeadRenderer(ict, device, render, backgrounds)
            if config.heads == "fresh":
                factor_map = FactorMap.from_pretrained(config.factor_map)
                self.batches: Batches = FreshHeadBatches(config, heads, factor_map, renderer, device)
            else:
                self.batches = RenderBatches(config, heads, renderer, device)
            self.models.add_readouts(config, self.batches.factor_dim)
        self.objective = ReconstructionObjective(self.models, config.readout_weight)
        self.optimizer = torch.optim.AdamW(
            self.models.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
        )
        self.ema = ExponentialAverage(self.models.trained, config.ema_decay)
        self.restart_step: int | None = None  # the step a resume without optimiser moments restarted them at
        self.autocast = device.type == "cuda" and config.bf16
        self.first_step = self.draws_before = 0  # where this call started, and the per-process batches drawn by then
        self.timing = RenderTiming(device)

    def start(self, checkpoint: Checkpoint | None) -> bool:
        """Resume from `checkpoint` (else start from `init_from` or fresh weights), then wrap the objective for
        several processes; returns whether the optimiser moments were restored."""
        restored = True
        if checkpoint is not None:
            restored = self.restore(checkpoint)
        elif self.config.init_from:
            initialise_from(self.models, self.config.init_from)
        self.wrapped = wrap(self.objective, self.context, self.device)
        return restored

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Load a checkpoint's state; returns whether the optimiser moments were restored too."""
        _load_trained(self.models, self.ema, checkpoint.tensors)
        self.first_step = checkpoint.step
        self.draws_before = int(checkpoint.state.get("draws", checkpoint.step))  # one per step before "draws"
        if checkpoint.optimizers is None:
            self.restart_step = checkpoint.step
            return False
        self.optimizer.load_state_dict(checkpoint.optimizers["adamw"])
        self.restart_step = checkpoint.state.get("restart_step")
        return True

    def draws(self, step: int) -> int:
        """Per-process batches the run has drawn once it reaches `step` in this call."""
        return self.draws_before + (step - self.first_step) * self.context.world_size

    def train_step(self, step: int) -> StepResult:
        """One optimisation step on a fresh batch of renders (their seed and the diffusion noise follow the step
        and the process: `DistributedContext.draw_index`)."""
        config = self.config
        factor = _cosine_factor(config, step, self.restart_step)
        for group in self.optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        draw = self.context.draw_index(self.draws_before, step - self.first_step)
        started = self.timing.lap()
        batch = self.batches.training(config.seed * _STEP_SEED + draw, self.batch_share)
        rendered = self.timing.lap()
        terms = self.wrapped(batch, self.autocast, step_generator(config.seed, draw, self.device))
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in self.models.trained.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        self.optimizer.step()
        broadcast_buffers(list(self.models.trained.values()), self.context)
        self.ema.update(step)
        self.timing.add(len(batch.crops) * self.context.world_size, rendered - started, self.timing.lap() - started)
        return StepResult(terms, loss, {"lr_factor": factor, **self.timing.summary()})

    def validate(self) -> dict[str, float]:
        """Losses on fixed renders of held-out identities and of training heads."""
        return _validate(self.objective, self.models, self.batches, self.autocast)

    def save(self, step: int) -> Path:
        """Write checkpoint-<step>: trained weights, their averages, the optimiser moments and the config."""
        state = {
            "config": self.config.to_dict(),
            "restart_step": self.restart_step,
            "split_fingerprint": self.heads.split.fingerprint(),
            "draws": self.draws(step),
            "world_size": self.context.world_size,
        }
        tensors = trained_tensors(self.models, self.ema)
        return save_checkpoint(self.run_dir, step, tensors, {"adamw": self.optimizer.state_dict()}, state, keep=2)

    def weights_digest(self) -> str:
        """SHA-256 of every trained tensor and its average (float32, by name): equal on every process of a run."""
        digest = hashlib.sha256()
        for name, tensor in sorted(trained_tensors(self.models, self.ema).items()):
            digest.update(name.encode())
            digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()


def _load_trained(models: ReconstructionModels, ema: ExponentialAverage, tensors: dict[str, Tensor]) -> None:
    """Restore the trained modules and their averages from checkpoint tensors (strict)."""
    for name, module in models.trained.items():
        for target, prefix in ((module, f"{name}."), (ema.shadow[name], f"ema.{name}.")):
            target.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
