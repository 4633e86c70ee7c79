"""Training our MonoNPHM decoder and its factor map on fresh ICT-FaceKit heads, in resumable time-boxed runs.

MonoNPHM trains its decoder as an auto-decoder: fixed codebooks of one latent per training
scan, optimised with the network (reference note §5.1). Our heads are generated, so instead of
codebooks a factor map (`diffnphr.nphm.factor_map.FactorMap`) learns, jointly with the
decoder, the latent of any head from its generating factors (`diffnphr.data.factors`): z_geo
from identity and hair shape, z_exp from the expression alone, z_app from the colours. Every
step draws `heads_per_step` new random heads (no head is seen twice; one in
`NEUTRAL_EVERY` is neutral, which the neutral-offset terms need), samples their whole closed
surface with hair, eyes and teeth on the device (`diffnphr.data.sampling.HeadSampler`) and
applies `diffnphr.train.losses` to the latents the map gives them. The default decoder keeps
the official latent layout (2176/100/2176) with narrower MLPs (`MonoNPHMConfig.small()`);
`init_decoder` starts it from a trained decoder folder (its anchor template included).
Decoder and map use AdamW (gradient norm clipped to 1 per network), with the reference's
learning-rate halvings at the same fractions of `total_steps`, and the correspondence weight
drops to a quarter after 30 %.

A run lives in one folder: `split.json` + `heads.safetensors` (the fixed seeded split: its
held-out identities are what the decoder is measured on, its training identities' mapped
latents the reconstruction stage's targets), `train_log.jsonl` (losses and steps/s) and
`checkpoint-<step>` folders (`diffnphr.train.checkpoints`). `train_decoder` resumes from the
newest checkpoint and stops cleanly, checkpoint written, before its time budget ends, so
training proceeds in GPU commands of under 10 minutes. To move a run between machines, copy
the folder without the checkpoints' `optimizer.pt`; the optimiser moments then restart, with a
short learning-rate warm-up. `export_decoder` turns a run into the deliverables.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.factors import APPEARANCE_DIM, HeadFactors, sample_head_factors
from diffnphr.data.hair_styles import GEOMETRY_DIM
from diffnphr.data.ict import ICTFaceModel, load_ict
from diffnphr.data.sampling import HeadSampler
from diffnphr.devices import resolve_device
from diffnphr.heads.latents import CODEBOOKS_NAME, LATENT_STATISTICS_FILE, SplitLatents, save_latent_statistics
from diffnphr.heads.split import HeadSplit, load_head_split, make_head_split
from diffnphr.nphm.decoder import MonoNPHM
from diffnphr.nphm.factor_map import FactorMap, FactorMapConfig
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
    pass

DECODER_DIR = "decoder"
FACTOR_MAP_DIR = "factor_map"
LATENTS_DIR = "decoder_latents"
NEUTRAL_EVERY = 8  # one head in eight of every batch is neutral (the split's slot 0 has the same share)
_ANCHOR_TEMPLATE_HEADS = 256  # random neutral heads whose mean anchors are a new decoder's template


def factor_map_config(ict: ICTFaceModel, config: DecoderTrainingConfig) -> FactorMapConfig:
    """The factor map's config: widths from the ICT model and the data, hidden sizes from the run's config."""
    return dataclasses.replace(
        config.factor_map,
        geometry_dim=ict.identity_modes.shape[0] + GEOMETRY_DIM,
        expression_dim=len(ict.expression_names),
        appearance_dim=APPEARANCE_DIM,
        z_geo_dim=config.model.z_geo_dim,
        z_exp_dim=config.model.lat_dim_exp,
        z_app_dim=config.model.z_app_dim,
    )


def training_heads(ict: ICTFaceModel, count: int, seed: int) -> HeadFactors:
    """`count` fresh random heads of one step (`seed`), one in `NEUTRAL_EVERY` of them neutral."""
    factors = sample_head_factors(count, seed, ict.expression_names, ict.identity_modes.shape[0])
    factors.expression[::NEUTRAL_EVERY] = 0.0
    return factors


def mean_anchor_template(sampler: HeadSampler, ict: ICTFaceModel, seed: int) -> Tensor:
    """Anchor positions [65, 3] of the mean of `_ANCHOR_TEMPLATE_HEADS` random neutral heads with
    their hair (a new decoder's anchor template; MonoNPHM's `anchors_65.npy` is the mean of its
    training anchors)."""
    heads = training_heads(ict, _ANCHOR_TEMPLATE_HEADS, seed).neutral()
    vertices = sampler.geometry.vertices(heads)
    rows = torch.as_tensor(np.searchsorted(sampler.surface.vertex_ids, anchor_vertices(ict)), device=vertices.device)
    return vertices[:, rows].mean(dim=0).cpu()


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
    """The trainable state of a run (decoder, factor map, optimiser, batch RNG) and one training step."""

    def __init__(
        self, run_dir: Path, config: DecoderTrainingConfig, ict: ICTFaceModel, split: HeadSplit, device: torch.device
    ):
        self.run_dir, self.config, self.split, self.ict, self.device = run_dir, config, split, ict, device
        self.restart_step: int | None = None  # the step a resume without optimiser moments restarted them at
        self.trained_s, self.resumed_at = 0.0, time.monotonic()
        self.sampler = HeadSampler(ict, device, config.sampling)
        with seeded(config.seed):
            if config.init_decoder is not None:
                self.model = MonoNPHM.from_pretrained(config.init_decoder, device=device)
                if self.model.config != config.model:
                    raise ValueError(
                        f"The decoder in {config.init_decoder} has other sizes than the run's config.model; "
                        "set config.model to its config.json."
                    )
            else:
                self.model = MonoNPHM(config.model, mean_anchor_template(self.sampler, ict, config.seed))
            self.model = self.model.to(device).train()
            self.factor_map = FactorMap(factor_map_config(ict, config)).to(device).train()
        self.optimizer = torch.optim.AdamW(
            [
                {"params": list(self.model.parameters()), "lr": config.lr_network},
                {"params": list(self.factor_map.parameters()), "lr": config.lr_factor_map},
            ],
            weight_decay=config.weight_decay,
        )
        self.base_rates = [group["lr"] for group in self.optimizer.param_groups]
        self.generator = torch.Generator().manual_seed(config.seed)
        self.autocast_dtype = PRECISIONS[config.precision] if device.type == "cuda" else None

    def restore(self, checkpoint: Checkpoint) -> bool:
        """Load a checkpoint's state; returns whether the optimiser moments were restored too."""
        tensors = checkpoint.tensors
        self.model.load_state_dict(_prefixed(tensors, "model."))
        self.factor_map.load_state_dict(_prefixed(tensors, "factor_map."))
        self.generator.set_state(tensors["rng.batches"].cpu())
        if checkpoint.optimizers is None:
            return False
        self.optimizer.load_state_dict(checkpoint.optimizers["network"])
        return True

    def save(self, step: int) -> Path:
        """Write checkpoint-<step> with everything needed to continue exactly."""
        state = {"restart_step": self.restart_step, "trained_s": self.trained_s + time.monotonic() - self.resumed_at}
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"factor_map.{k}": v for k, v in self.factor_map.state_dict().items()})
        tensors["rng.batches"] = self.generator.get_state()
        tensors["anchor_template"] = self.model.id_decoder.anchor_template
        optimizers = {"network": self.optimizer.state_dict()}
        state = {**state, "config": self.config.to_dict(), "split_fingerprint": self.split.fingerprint()}
        return save_checkpoint(self.run_dir, step, tensors, optimizers, state, keep=self.config.keep_checkpoints)

    def validate(self) -> dict[str, float]:
        """The decoder run validates by `eval decoder` and `fit`, not inside the loop."""
        return {}

    def train_step(self, step: int) -> StepResult:
        """One optimisation step on a batch of new random heads (its loss terms, the loss and the rate factor)."""
        config, device = self.config, self.device
        seed = int(torch.randint(2**62, (), generator=self.generator))
        factors = training_heads(self.ict, config.heads_per_step, seed)
        batch = self.sampler.sample(factors, seed)
        far_generator = torch.Generator(device).manual_seed(seed + 1)
        unit = torch.rand((config.heads_per_step, config.far_points, 3), generator=far_generator, device=device)
        z_geo, z_exp, z_app = self.factor_map.latents(factors)
        terms = head_loss_terms(
            self.model,
            z_geo,
            z_exp,
            z_app,
            batch,
            (factors.expression == 0).all(dim=-1).to(device),
            config.sampling.uniform_points,
            config.far_extent * (2 * unit - 1),
            self.autocast_dtype,
        )
        loss = total_loss(terms, _loss_weights(config, step))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for network in (self.model.id_decoder, self.model.ex_decoder, self.factor_map):
            torch.nn.utils.clip_grad_norm_(network.parameters(), config.grad_clip)
        factor = _learning_rate_factor(config, step, self.restart_step)
        for group, rate in zip(self.optimizer.param_groups, self.base_rates):
            group["lr"] = rate * factor
        self.optimizer.step()
        return StepResult(terms, loss, {"lr_factor": factor, "heads_per_step": config.heads_per_step})


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries of a checkpoint under `prefix`, without it."""
    return {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}


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
    """Write a run's newest checkpoint as deliverables; returns {"decoder", "factor_map", "latents": folder}.

    * `out_dir/decoder/`: the decoder (`MonoNPHM.save_pretrained`: config.json, safetensors
      shards ≤ 15 MiB, anchors.npy), loadable with `MonoNPHM.from_pretrained`, and
      `out_dir/factor_map/` the factor map (`FactorMap.from_pretrained`); parameters are stored
      in float16 (half the download);
    * `out_dir/decoder_latents/`: what the reconstruction stage needs: the split (split.json,
      heads.safetensors), the mapped latents of its training heads as `SplitLatents` named
      "codebooks" (shards ≤ 15 MB; computed with the float16 map, as the shipped map gives them)
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
    model.load_state_dict(_prefixed(tensors, "model."))
    ict = load_ict()
    factor_map = FactorMap(factor_map_config(ict, config))
    factor_map.load_state_dict(_prefixed(tensors, "factor_map."))
    decoder_dir = model.save_pretrained(out_dir / DECODER_DIR, dtype=torch.float16)
    map_dir = factor_map.save_pretrained(out_dir / FACTOR_MAP_DIR, dtype=torch.float16)
    factor_map = FactorMap.from_pretrained(map_dir)
    latents_dir = out_dir / LATENTS_DIR
    split.save(latents_dir)
    latents = split_latents(factor_map, split, split.train_identities)
    latents.save(latents_dir, CODEBOOKS_NAME, dtype=torch.float16)
    save_latent_statistics(latents.statistics(), latents_dir / LATENT_STATISTICS_FILE)
    return {"decoder": decoder_dir, "factor_map": map_dir, "latents": latents_dir}


def split_latents(factor_map: FactorMap, split: HeadSplit, identities: Tensor) -> SplitLatents:
    """The mapped latents of a split's identities (every expression slot) as `SplitLatents`."""
    slots = split.expressions_per_identity
    rows = identities.repeat_interleave(slots)
    with torch.no_grad():
        z_geo, z_exp, z_app = (
            z.detach().cpu()
            for z in factor_map.latents(split.factors(rows, torch.arange(slots).repeat(len(identities))))
        )
    return SplitLatents(
        identities=identities.clone(),
        z_geo=z_geo[::slots].clone(),
        z_exp=z_exp.reshape(len(identities), slots, -1),
        z_app=z_app[::slots].clone(),
    )
