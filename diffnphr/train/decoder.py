"""Auto-decoder training of our MonoNPHM decoder on ICT-FaceKit heads, in resumable time-boxed runs.

As MonoNPHM does (reference note §5.1): the decoder and three codebooks are optimised together,
z_geo and z_app per training identity and z_exp per (identity, expression), all codes starting
at zero and kept within norm 1 (`nn.Embedding(max_norm=1)`). The default decoder keeps the
official latent layout (2176/100/2176) with narrower MLPs (`MonoNPHMConfig.small()`). Each step draws
`heads_per_step` (identity, expression) heads at random, samples them on the device
(`diffnphr.data.sampling.HeadSampler`) and applies `diffnphr.train.losses`. The networks use
AdamW (lr 5e-4, weight decay 5e-4, gradient norm clipped to 1 per network), the codes
SparseAdam (2e-3 geometry/appearance, 1e-2 expression); all rates halve at the reference's
epochs 350, 700, 1050, 1300, ... 2300 of 2500, here the same fractions of `total_steps`, and
the correspondence weight drops to a quarter after 30 % (the reference's epoch 750).

A run lives in one folder: `split.json` + `heads.safetensors` (the fixed seeded split),
`train_log.jsonl` (losses and steps/s) and `checkpoint-<step>` folders
(`diffnphr.train.checkpoints`). `train_decoder` resumes from the newest checkpoint and stops
cleanly, checkpoint written, before its time budget ends, so training proceeds in GPU commands
of under 10 minutes. To move a run between machines, copy the folder without the checkpoints'
`optimizer.pt` (it exceeds what travels); the optimiser moments then restart, with a short
learning-rate warm-up. `export_decoder` turns a run into the deliverables.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.heads import head_vertices
from diffnphr.data.ict import ICTFaceModel, load_ict
from diffnphr.data.sampling import HeadSampler
from diffnphr.devices import resolve_device
from diffnphr.heads.latents import CODEBOOKS_NAME, LATENT_STATISTICS_FILE, SplitLatents, save_latent_statistics
from diffnphr.heads.split import HeadSplit, load_head_split, make_head_split
from diffnphr.nphm.decoder import MonoNPHM
from diffnphr.train.checkpoints import (
    Checkpoint,
    list_checkpoints,
    load_checkpoint,
    newest_checkpoint,
    save_checkpoint,
)
from diffnphr.train.config import PRECISIONS, DecoderTrainingConfig
from diffnphr.train.log import LOG_FILE, TrainingLog
from diffnphr.train.loop import LoopSchedule, StepResult, TimeBox, run_training, seeded
from diffnphr.train.losses import LossWeights, head_loss_terms, total_loss

if TYPE_CHECKING:
    from diffnphr.nphm.config import MonoNPHMConfig

DECODER_DIR = "decoder"
LATENTS_DIR = "decoder_latents"


class Codebooks(nn.Module):
    """The auto-decoder's latent codes: z_geo and z_app per training identity, z_exp per (identity, expression slot).

    Row r of `geo`/`app` belongs to the split's r-th training identity; row r·X + x of `exp` to
    its expression slot x. Zero-initialised sparse embeddings whose looked-up rows are pulled
    back to norm `max_norm`, as in MonoNPHM.
    """

    def __init__(self, identities: int, expressions_per_identity: int, config: MonoNPHMConfig, max_norm: float):
        super().__init__()
        self.expressions_per_identity = expressions_per_identity

        def table(rows: int, dim: int) -> nn.Embedding:
            embedding = nn.Embedding(rows, dim, max_norm=max_norm, sparse=True)
            nn.init.zeros_(embedding.weight)
            return embedding

        self.geo = table(identities, config.z_geo_dim)
        self.exp = table(identities * expressions_per_identity, config.lat_dim_exp)
        self.app = table(identities, config.z_app_dim)

    def forward(self, identities: Tensor, slots: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(z_geo, z_exp, z_app) of heads given by training-identity rows and expression slots, each [B]."""
        return self.geo(identities), self.exp(identities * self.expressions_per_identity + slots), self.app(identities)

    def latents(self, split: HeadSplit) -> SplitLatents:
        """The codebooks as `SplitLatents` of the split's training identities."""
        rows = self.geo.weight.shape[0]
        return SplitLatents(
            identities=split.train_identities.clone(),
            z_geo=self.geo.weight.detach().cpu().clone(),
            z_exp=self.exp.weight.detach().cpu().reshape(rows, self.expressions_per_identity, -1).clone(),
            z_app=self.app.weight.detach().cpu().clone(),
        )


def mean_anchor_template(ict: ICTFaceModel, split: HeadSplit) -> Tensor:
    """Anchor positions [65, 3] of the mean neutral training head (the decoder's anchor template).

    MonoNPHM's `anchors_65.npy` is the mean of its training anchors; heads are linear in the
    identity coefficients, so the anchors of the mean coefficients are the mean anchors.
    """
    mean_identity = split.identity_coefficients[split.train_identities].mean(dim=0).numpy()
    return torch.from_numpy(head_vertices(ict, mean_identity)[anchor_vertices(ict)])


def _learning_rate_factor(config: DecoderTrainingConfig, step: int, restart_step: int | None) -> float:
    halvings = sum(step >= fraction * config.total_steps for fraction in config.lr_halving_fractions)
    warmup = 1.0
    if restart_step is not None and config.restart_warmup_steps > 0:
        warmup = min(1.0, (step - restart_step + 1) / config.restart_warmup_steps)
    return 0.5**halvings * warmup


def _loss_weights(config: DecoderTrainingConfig, step: int) -> LossWeights:
    if step < config.correspondence_decay_fraction * config.total_steps:
        return config.losses
    return dataclasses.replace(
        config.losses, correspondence=config.losses.correspondence * config.correspondence_decay_factor
    )


def _run_split(run_dir: Path, config: DecoderTrainingConfig, ict: ICTFaceModel) -> HeadSplit:
    """The run's split: read from the run folder, or drawn from the config's seed and written there."""
    try:
        split = load_head_split(run_dir)
    except FileNotFoundError:
        split = make_head_split(
            ict, config.seed, config.train_identities, config.heldout_identities, config.expressions_per_identity
        )
        split.save(run_dir)
        return split
    expected = (config.seed, config.train_identities, config.heldout_identities, config.expressions_per_identity)
    found = (split.seed, len(split.train_identities), len(split.heldout_identities), split.expressions_per_identity)
    if found != expected:
        raise ValueError(
            f"The split in {run_dir} (seed, train, held out, expressions = {found}) does not match the "
            f"run's config {expected}; train into a new folder."
        )
    return split


def train_decoder(
    out_dir: str | os.PathLike,
    time_budget_s: float = 540.0,
    config: DecoderTrainingConfig | str | os.PathLike | None = None,
    *,
    total_steps: int | None = None,
    ict_path: str | os.PathLike | None = None,
    device: str | torch.device | None = None,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train (or resume training) the decoder in `out_dir` for at most `time_budget_s` seconds.

    Resumes from the newest checkpoint in `out_dir` when there is one (its config wins; a
    `config` given too must agree with it, except `DecoderTrainingConfig.resumable`); otherwise starts a
    run with `config` (a `DecoderTrainingConfig` or a JSON file of settings; default: the
    defaults). `total_steps` overrides the planned length (the schedules are fractions of it).
    Stops at `total_steps`, after `stop_after_steps` steps of this call, or when the next step
    and the final checkpoint would overrun the budget (counted from this call's start), and
    always leaves a checkpoint. Returns a summary: step, total_steps, done, steps_per_s, the
    last logged losses and the checkpoint path.
    """
    budget = TimeBox(time_budget_s, time.monotonic(), stop_after_steps)
    run_dir = Path(out_dir)
    device = resolve_device(device)
    checkpoint = newest_checkpoint(run_dir, device)
    config = DecoderTrainingConfig.for_run(config, checkpoint.state["config"] if checkpoint else None, total_steps)
    ict = load_ict(ict_path)
    split = _run_split(run_dir, config, ict)
    if checkpoint is not None and checkpoint.state.get("split_fingerprint") != split.fingerprint():
        raise ValueError(f"The checkpoint {checkpoint.path} was trained on another split than {run_dir}'s split files.")

    previous_precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if config.precision == "tf32" else "highest")
    try:
        return _train(run_dir, config, ict, split, checkpoint, device, budget)
    finally:
        torch.set_float32_matmul_precision(previous_precision)


class _DecoderRun:
    """The trainable state of a run (decoder, codebooks, optimisers, batch RNG) and one training step."""

    def __init__(
        self, run_dir: Path, config: DecoderTrainingConfig, ict: ICTFaceModel, split: HeadSplit, device: torch.device
    ):
        self.run_dir, self.config, self.split, self.device = run_dir, config, split, device
        self.restart_step: int | None = None  # the step a resume without optimiser moments restarted them at
        self.trained_s, self.resumed_at = 0.0, time.monotonic()
        self.sampler = HeadSampler(ict, device, config.sampling)
        with seeded(config.seed):
            self.model = MonoNPHM(config.model, mean_anchor_template(ict, split)).to(device).train()
        self.slots = split.expressions_per_identity
        self.codebooks = Codebooks(len(split.train_identities), self.slots, config.model, config.code_max_norm).to(
            device
        )
        self.network_optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr_network, weight_decay=config.weight_decay
        )
        self.code_optimizer = torch.optim.SparseAdam(
            [
                {"params": [self.codebooks.geo.weight, self.codebooks.app.weight], "lr": config.lr_shape_codes},
                {"params": [self.codebooks.exp.weight], "lr": config.lr_expression_codes},
            ]
        )
        self.groups = self.network_optimizer.param_groups + self.code_optimizer.param_groups
        self.base_rates = [group["lr"] for group in self.groups]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.coefficients = split.identity_coefficients[split.train_identities].to(device)
        self.expressions = split.expression_weights[split.train_identities].to(device)
        self.appearance = split.appearance(split.train_identities).to(device)
        self.autocast_dtype = PRECISIONS[config.precision] if device.type == "cuda" else None

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Load a checkpoint's state; returns whether the optimiser moments were restored too."""
        tensors = checkpoint.tensors
        self.model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
        self.codebooks.load_state_dict(
            {k[len("codebooks.") :]: v for k, v in tensors.items() if k.startswith("codebooks.")}
        )
        self.generator.set_state(tensors["rng.batches"].cpu())
        if checkpoint.optimizers is None:
            return False
        self.network_optimizer.load_state_dict(checkpoint.optimizers["network"])
        self.code_optimizer.load_state_dict(checkpoint.optimizers["codes"])
        return True

    def save(self, step: int) -> Path:
        """Write checkpoint-<step> with everything needed to continue exactly."""
        state = {"restart_step": self.restart_step, "trained_s": self.trained_s + time.monotonic() - self.resumed_at}
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"codebooks.{k}": v for k, v in self.codebooks.state_dict().items()})
        tensors["rng.batches"] = self.generator.get_state()
        tensors["anchor_template"] = self.model.id_decoder.anchor_template
        optimizers = {"network": self.network_optimizer.state_dict(), "codes": self.code_optimizer.state_dict()}
        state = {**state, "config": self.config.to_dict(), "split_fingerprint": self.split.fingerprint()}
        return save_checkpoint(self.run_dir, step, tensors, optimizers, state, keep=self.config.keep_checkpoints)

    def validate(self) -> dict[str, float]:
        """The decoder run validates by `eval decoder` and `fit`, not inside the loop."""
        return {}

    def train_step(self, step: int) -> StepResult:
        """One optimisation step on a fresh batch of heads (its loss terms, the loss and the rate factor)."""
        config, device = self.config, self.device
        rows = torch.randint(len(self.coefficients), (config.heads_per_step,), generator=self.generator).to(device)
        slot = torch.randint(self.slots, (config.heads_per_step,), generator=self.generator).to(device)
        seed = int(torch.randint(2**62, (), generator=self.generator))
        weights = self.expressions[rows, slot]
        batch = self.sampler.sample(self.coefficients[rows], weights, self.appearance.select(rows), seed)
        far_generator = torch.Generator(device).manual_seed(seed + 1)
        unit = torch.rand((config.heads_per_step, config.far_points, 3), generator=far_generator, device=device)
        z_geo, z_exp, z_app = self.codebooks(rows, slot)
        terms = head_loss_terms(
            self.model,
            z_geo,
            z_exp,
            z_app,
            batch,
            (weights == 0).all(dim=-1),
            config.sampling.uniform_points,
            config.far_extent * (2 * unit - 1),
            self.autocast_dtype,
        )
        loss = total_loss(terms, _loss_weights(config, step))
        self.network_optimizer.zero_grad(set_to_none=True)
        self.code_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.id_decoder.parameters(), config.grad_clip)
        torch.nn.utils.clip_grad_norm_(self.model.ex_decoder.parameters(), config.grad_clip)
        factor = _learning_rate_factor(config, step, self.restart_step)
        for group, rate in zip(self.groups, self.base_rates):
            group["lr"] = rate * factor
        self.network_optimizer.step()
        self.code_optimizer.step()
        return StepResult(terms, loss, {"lr_factor": factor, "heads_per_step": config.heads_per_step})


def _train(
    run_dir: Path,
    config: DecoderTrainingConfig,
    ict: ICTFaceModel,
    split: HeadSplit,
    checkpoint: Checkpoint | None,
    device: torch.device,
    budget: TimeBox,
) -> dict[str, Any]:
    run = _DecoderRun(run_dir, config, ict, split, device)
    step, restored = 0, True
    if checkpoint is not None:
        step, run.trained_s = checkpoint.step, float(checkpoint.state.get("trained_s", 0.0))
        restored = run.restore(checkpoint)
        run.restart_step = checkpoint.state.get("restart_step") if restored else step
    log = TrainingLog(run_dir / LOG_FILE)
    log.write(
        {
            "event": "start",
            "step": step,
            "device": str(device),
            "precision": config.precision,
            "optimizer_restored": restored,
        }
    )
    run.resumed_at = time.monotonic()
    schedule = LoopSchedule(config.total_steps, config.log_every, config.checkpoint_every)
    outcome = run_training(run, schedule, budget, log, step, checkpoint.path if checkpoint else None)
    rates = [record["steps_per_s"] for record in outcome.records[-5:]]
    return {
        "step": outcome.step,
        "total_steps": config.total_steps,
        "done": outcome.step >= config.total_steps,
        "steps_this_call": budget.steps,
        "steps_per_s": float(np.median(rates)) if rates else None,
        "losses": outcome.records[-1] if outcome.records else {},
        "checkpoint": str(outcome.checkpoint),
        "elapsed_s": budget.elapsed_s(),
    }


def export_decoder(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a run's newest checkpoint as deliverables; returns {"decoder": folder, "latents": folder}.

    * `out_dir/decoder/`: the decoder (`MonoNPHM.save_pretrained`: config.json, safetensors
      shards ≤ 15 MiB, anchors.npy), loadable with `MonoNPHM.from_pretrained`; parameters
      and codebooks are stored in float16 (half the download; near the surface the SDF moves
      by 0.012 mm on average, 0.07 mm at most, measured on three training heads);
    * `out_dir/decoder_latents/`: what the diffusion stage needs: the split (split.json,
      heads.safetensors), the codebooks as `SplitLatents` named "codebooks" (shards ≤ 15 MB)
      and the per-dimension statistics of their flat latents (latent_statistics.safetensors).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(
            f"{run_dir} holds no checkpoint to export; train first (python -m diffnphr train-decoder)."
        )
    checkpoint = load_checkpoint(found[-1])
    config = DecoderTrainingConfig.from_dict(checkpoint.state["config"])
    split = load_head_split(run_dir)
    tensors = checkpoint.tensors
    model = MonoNPHM(config.model, tensors["anchor_template"])
    model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    codebooks = Codebooks(
        len(split.train_identities), split.expressions_per_identity, config.model, config.code_max_norm
    )
    codebooks.load_state_dict({k[len("codebooks.") :]: v for k, v in tensors.items() if k.startswith("codebooks.")})
    decoder_dir = model.save_pretrained(out_dir / DECODER_DIR, dtype=torch.float16)
    latents_dir = out_dir / LATENTS_DIR
    split.save(latents_dir)
    latents = codebooks.latents(split)
    latents.save(latents_dir, CODEBOOKS_NAME, dtype=torch.float16)
    save_latent_statistics(latents.statistics(), latents_dir / LATENT_STATISTICS_FILE)
    return {"decoder": decoder_dir, "latents": latents_dir}
