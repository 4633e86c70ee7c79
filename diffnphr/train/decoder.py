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
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from diffnphr.data.anchors import anchor_vertices
from diffnphr.data.heads import head_vertices
from diffnphr.data.ict import ICTFaceModel, load_ict
from diffnphr.data.sampling import HeadSampler, SamplingConfig
from diffnphr.nphm import MonoNPHM, MonoNPHMConfig
from diffnphr.train.checkpoints import (
    Checkpoint,
    TimeBox,
    list_checkpoints,
    load_checkpoint,
    newest_checkpoint,
    resume_config,
    save_checkpoint,
)
from diffnphr.train.head_latents import LATENT_STATISTICS_FILE, HeadLatents, save_latent_statistics
from diffnphr.train.log import LOG_FILE, TrainingLog
from diffnphr.train.losses import LossWeights, head_loss_terms, total_loss
from diffnphr.train.split import HeadSplit, load_head_split, make_head_split

DECODER_DIR = "decoder"
LATENTS_DIR = "decoder_latents"
CODEBOOKS_NAME = "codebooks"
PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}
# Settings that may differ when a run is resumed; everything else must match the run's own config.
RESUMABLE_OVERRIDES = ("total_steps", "checkpoint_every", "keep_checkpoints", "log_every", "precision")


def training_sampling() -> SamplingConfig:
    """Points per head and step in decoder training (latent fitting uses fewer off-surface points)."""
    return SamplingConfig(
        surface_points=1024,
        face_fraction=0.5,
        near_points=512,
        near_sigmas=(0.004, 0.04),
        uniform_points=128,
        correspondences=256,
        correspondence_sigmas=(0.002, 0.01),
    )


@dataclass(frozen=True)
class DecoderTrainingConfig:
    """Everything that defines a decoder training run (data, model, losses, optimisation, bookkeeping)."""

    seed: int = 0
    train_identities: int = 1000
    heldout_identities: int = 100
    expressions_per_identity: int = 8
    model: MonoNPHMConfig = field(default_factory=MonoNPHMConfig.small)
    sampling: SamplingConfig = field(default_factory=training_sampling)
    losses: LossWeights = field(default_factory=LossWeights)
    heads_per_step: int = 64
    far_points: int = 32  # per head, uniform in [-far_extent, far_extent]^3, where offsets should vanish
    far_extent: float = 1.25
    total_steps: int = 8000  # about three 9-minute H100 commands at 64 heads per step
    lr_network: float = 5e-4
    weight_decay: float = 5e-4
    lr_shape_codes: float = 2e-3  # z_geo and z_app
    lr_expression_codes: float = 1e-2
    grad_clip: float = 1.0
    code_max_norm: float = 1.0
    lr_halving_fractions: tuple[float, ...] = (0.14, 0.28, 0.42, 0.52, 0.62, 0.72, 0.82, 0.92)
    correspondence_decay_fraction: float = 0.3
    correspondence_decay_factor: float = 0.25
    restart_warmup_steps: int = 200
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    log_every: int = 50
    # fp32, tf32 (CUDA matmuls in TF32) or bf16 (autocast). On an H100 at 64 heads per step: tf32 5.2,
    # fp32 4.6, bf16 4.2 steps/s (bf16 pays for casts around small GEMMs and gains nothing).
    precision: str = "tf32"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}.")
        counts = {
            name: getattr(self, name) for name in ("heads_per_step", "total_steps", "checkpoint_every", "log_every")
        }
        bad = [f"{name}={value}" for name, value in counts.items() if value < 1]
        if bad:
            raise ValueError(f"DecoderTrainingConfig counts must be positive; got {', '.join(bad)}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (nested dataclasses as dicts, tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> DecoderTrainingConfig:
        """The default config with `values` (possibly partial, nested) applied; unknown keys are an error."""
        return _apply(cls(), values)


def _apply(base: Any, values: dict[str, Any]) -> Any:
    if not isinstance(values, dict):
        raise ValueError(f"{type(base).__name__} settings must be a JSON object, got {values!r}.")
    known = {f.name for f in dataclasses.fields(base)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown {type(base).__name__} settings: {', '.join(unknown)}.")
    updates = {}
    for name, value in values.items():
        current = getattr(base, name)
        if dataclasses.is_dataclass(current):
            updates[name] = _apply(current, value)
        elif isinstance(current, tuple):
            updates[name] = tuple(value)
        else:
            updates[name] = value
    return dataclasses.replace(base, **updates)


def load_training_config(path: str | os.PathLike) -> DecoderTrainingConfig:
    """Read a JSON file of settings (any subset of `DecoderTrainingConfig`, nested for model/sampling/losses)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No training config at {path}.")
    try:
        values = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}).") from error
    return DecoderTrainingConfig.from_dict(values)


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

    def latents(self, split: HeadSplit) -> HeadLatents:
        """The codebooks as `HeadLatents` of the split's training identities."""
        rows = self.geo.weight.shape[0]
        return HeadLatents(
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


def resolve_device(device: str | torch.device | None) -> torch.device:
    """The device to train on: the given one, else CUDA when available, else the CPU (clear error if CUDA is missing)."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for, but this machine has no usable GPU; use --device cpu.")
    return device


def _run_config(
    given: DecoderTrainingConfig | str | os.PathLike | None, stored: dict[str, Any] | None, total_steps: int | None
) -> DecoderTrainingConfig:
    """The config of a run: the stored one when resuming (a given one must agree with it), else the given or default one."""
    if given is not None and not isinstance(given, DecoderTrainingConfig):
        given = load_training_config(given)
    return resume_config(DecoderTrainingConfig, given, stored, total_steps, RESUMABLE_OVERRIDES)


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
    `config` given too must agree with it, except `RESUMABLE_OVERRIDES`); otherwise starts a
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
    config = _run_config(config, checkpoint.state["config"] if checkpoint else None, total_steps)
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

    def __init__(self, config: DecoderTrainingConfig, ict: ICTFaceModel, split: HeadSplit, device: torch.device):
        self.config, self.split, self.device = config, split, device
        self.sampler = HeadSampler(ict, device, config.sampling)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
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

    def save(self, run_dir: Path, step: int, state: dict[str, Any]) -> Path:
        """Write checkpoint-<step> with everything needed to continue exactly."""
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update({f"codebooks.{k}": v for k, v in self.codebooks.state_dict().items()})
        tensors["rng.batches"] = self.generator.get_state()
        tensors["anchor_template"] = self.model.id_decoder.anchor_template
        optimizers = {"network": self.network_optimizer.state_dict(), "codes": self.code_optimizer.state_dict()}
        state = {**state, "config": self.config.to_dict(), "split_fingerprint": self.split.fingerprint()}
        return save_checkpoint(run_dir, step, tensors, optimizers, state, keep=self.config.keep_checkpoints)

    def step(self, step: int, restart_step: int | None) -> tuple[dict[str, Tensor], Tensor, float]:
        """One optimisation step on a fresh batch of heads; returns the loss terms, the loss and the rate factor."""
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
        factor = _learning_rate_factor(config, step, restart_step)
        for group, rate in zip(self.groups, self.base_rates):
            group["lr"] = rate * factor
        self.network_optimizer.step()
        self.code_optimizer.step()
        return terms, loss, factor


def _train(
    run_dir: Path,
    config: DecoderTrainingConfig,
    ict: ICTFaceModel,
    split: HeadSplit,
    checkpoint: Checkpoint | None,
    device: torch.device,
    budget: TimeBox,
) -> dict[str, Any]:
    run = _DecoderRun(config, ict, split, device)
    step, restart_step, trained_s, restored = 0, None, 0.0, True
    if checkpoint is not None:
        step, trained_s = checkpoint.step, float(checkpoint.state.get("trained_s", 0.0))
        restored = run.restore(checkpoint)
        restart_step = checkpoint.state.get("restart_step") if restored else step
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

    loop_started = time.monotonic()

    def save() -> Path:
        state = {"restart_step": restart_step, "trained_s": trained_s + time.monotonic() - loop_started}
        return run.save(run_dir, step, state)

    saved_at = step if checkpoint is not None else None
    records: list[dict[str, Any]] = []
    while step < config.total_steps and budget.allows_step():
        tick = time.monotonic()
        terms, loss, factor = run.step(step, restart_step)
        step += 1
        log.add(terms, loss)
        if step % config.log_every == 0 or step == config.total_steps:
            records.append(
                log.flush(
                    step,
                    {
                        "lr_factor": factor,
                        "heads_per_step": config.heads_per_step,
                        "elapsed_s": time.monotonic() - budget.started,
                    },
                )
            )
        budget.stepped(time.monotonic() - tick)
        if step % config.checkpoint_every == 0:
            tick = time.monotonic()
            save()
            saved_at = step
            budget.saved(time.monotonic() - tick)
    path = save() if saved_at != step else list_checkpoints(run_dir)[-1]
    rates = [record["steps_per_s"] for record in records[-5:]]
    return {
        "step": step,
        "total_steps": config.total_steps,
        "done": step >= config.total_steps,
        "steps_this_call": budget.steps,
        "steps_per_s": float(np.median(rates)) if rates else None,
        "losses": records[-1] if records else {},
        "checkpoint": str(path),
        "elapsed_s": time.monotonic() - budget.started,
    }


def export_decoder(run_dir: str | os.PathLike, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Write a run's newest checkpoint as deliverables; returns {"decoder": folder, "latents": folder}.

    * `out_dir/decoder/`: the decoder (`MonoNPHM.save_pretrained`: config.json, safetensors
      shards ≤ 15 MiB, anchors.npy), loadable with `MonoNPHM.from_pretrained`; parameters
      and codebooks are stored in float16 (half the download; near the surface the SDF moves
      by 0.012 mm on average, 0.07 mm at most, measured on three training heads);
    * `out_dir/decoder_latents/`: what the diffusion stage needs: the split (split.json,
      heads.safetensors), the codebooks as `HeadLatents` named "codebooks" (shards ≤ 15 MB)
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
