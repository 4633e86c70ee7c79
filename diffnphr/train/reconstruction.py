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

import copy
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.data.backgrounds import BackgroundBank
from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer, RenderConfig
from diffnphr.diffusion import DiffusionConfig, LatentDiffusion
from diffnphr.encoders import FaceEncoder, farl_vision_config
from diffnphr.nphm.latents import Z_APP, Z_EXP, Z_GEO
from diffnphr.train.checkpoints import (
    TimeBox,
    list_checkpoints,
    load_checkpoint,
    newest_checkpoint,
    resume_config,
    save_checkpoint,
)
from diffnphr.train.decoder import CODEBOOKS_NAME, resolve_device
from diffnphr.train.head_latents import (
    FITTED_HELDOUT_NAME,
    LATENT_STATISTICS_FILE,
    load_head_latents,
    load_latent_statistics,
)
from diffnphr.train.log import LOG_FILE, TrainingLog
from diffnphr.train.split import HeadSplit, load_head_split

CONFIG_FILE = "config.json"
ENCODER_DIR, DIFFUSION_DIR, REGRESSION_DIR = "encoder", "diffusion", "baselines/regression"
# The default encoder: FaRL's ViT (CLIP vision tower) at ViT-Tiny width and half its depth, on
# 128-px crops (64 patches): 2.9 M parameters, a few ms per image on a CPU core.
DEFAULT_ENCODER = dict(
    hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, image_size=128, patch_size=16
)
# Settings that may change when a run resumes; the rest must match the run's stored config.
RESUMABLE_OVERRIDES = ("total_steps", "log_every", "validate_every", "checkpoint_every")
_STEP_SEED = 1_000_003  # render seeds of training steps: seed * _STEP_SEED + step
_VALIDATION_SEED = 2**40  # fixed validation renders: _VALIDATION_SEED + seed (held out), + 1 (training heads)
_Z_APP = slice(Z_GEO + Z_EXP, Z_GEO + Z_EXP + Z_APP)  # z_app's columns in a padded latent


@dataclass
class ReconstructionTrainingConfig:
    """Everything that defines a run of `train_reconstruction` (stored in the run folder)."""

    encoder: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_ENCODER))  # farl_vision_config overrides
    frozen_encoder: str | None = None  # a FaceEncoder folder (e.g. converted FaRL) to use frozen instead
    init_from: str | None = None  # a weights folder whose trained models start a new run (`initialise_from`)
    # DiffusionConfig overrides; by default the diffusion is centred on a conditional mean whose MLP
    # is as wide as the regression baseline's (`LatentDiffusion`)
    diffusion: dict[str, Any] = field(default_factory=lambda: {"mean_head_hidden": 256})
    regression: bool = True  # train the direct-regression baseline alongside
    regression_hidden: int = 256
    mix_appearance: bool = True  # each head rendered in another training identity's colours (module docstring)
    readout_weight: float = 1.0  # weight of the encoders' generating-factor read-out loss (0: none)
    render: dict[str, Any] = field(default_factory=dict)  # RenderConfig overrides (image_size follows the encoder)
    batch_size: int = 256
    total_steps: int = 12_000
    learning_rate: float = 4e-4
    weight_decay: float = 0.02
    warmup_steps: int = 500
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    bf16: bool = True  # autocast the forward passes to bfloat16 on CUDA
    seed: int = 0
    log_every: int = 100
    validate_every: int = 1000
    validation_renders: int = 256
    checkpoint_every: int = 1000

    def __post_init__(self) -> None:
        if min(self.batch_size, self.total_steps, self.log_every, self.validate_every, self.checkpoint_every) < 1:
            raise ValueError("batch_size, total_steps and the log/validate/checkpoint intervals must be positive.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if not self.readout_weight >= 0:
            raise ValueError(f"readout_weight must be non-negative, got {self.readout_weight}.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able settings."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReconstructionTrainingConfig:
        """Settings from `to_dict` (or a JSON file's object); unknown keys are refused."""
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown training settings: {', '.join(sorted(unknown))}.")
        return cls(**values)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> ReconstructionTrainingConfig:
        """Settings from a JSON file of `to_dict` keys (any subset)."""
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass(frozen=True)
class TrainingHeads:
    """The decoder's heads as diffusion targets: the split, each training head's latent, and statistics."""

    split: HeadSplit
    latents: Tensor  # (n_train * slots, 4456) raw, row = train row * slots + slot
    heldout_latents: Tensor | None  # (n_heldout * fitted slots, 4456) fitted latents of held-out identities
    heldout_slots: int
    mean: Tensor
    std: Tensor

    @classmethod
    def load(cls, directory: str | os.PathLike) -> TrainingHeads:
        """Read `split`, `codebooks`, statistics and (if present) the fitted held-out latents of a latents folder."""
        directory = Path(directory)
        split = load_head_split(directory)
        codebooks = load_head_latents(directory, CODEBOOKS_NAME)
        if not torch.equal(codebooks.identities, split.train_identities):
            raise ValueError(f"The codebooks in {directory} do not belong to its split's training identities.")
        statistics = load_latent_statistics(directory / LATENT_STATISTICS_FILE)
        try:
            fitted = load_head_latents(directory, FITTED_HELDOUT_NAME)
        except FileNotFoundError:
            fitted = None
        if fitted is not None and not torch.equal(fitted.identities, split.heldout_identities):
            raise ValueError(
                f"The fitted held-out latents in {directory} do not match its split's held-out identities."
            )
        return cls(
            split=split,
            latents=codebooks.flat(),
            heldout_latents=fitted.flat() if fitted is not None else None,
            heldout_slots=int(fitted.z_exp.shape[1]) if fitted is not None else 0,
            mean=statistics.mean,
            std=statistics.std,
        )


class FactorReadout(nn.Module):
    """Linear map from an encoder's embedding to a head's standardised generating factors (training only).

    The factors are what made the rendered head: its ICT identity coefficients, its expression's
    blendshape weights and its appearance's region colours (`_Batches.factors`). Predicting them
    linearly from `z_cond` asks the encoder to carry them, which the diffusion loss alone
    asks only weakly; the read-out is not exported.
    """

    def __init__(self, cond_dim: int, factor_dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(cond_dim, factor_dim)

    def forward(self, z_cond: Tensor) -> Tensor:
        """Predicted standardised factors [B, factor_dim] from embeddings [B, cond_dim]."""
        return self.linear(z_cond)


@dataclass(frozen=True)
class Batch:
    """One batch of training or validation renders and what they should give."""

    crops: Tensor  # (B, 3, S, S) in [0, 1]
    latents: Tensor  # (B, 4456) raw target latents
    factors: Tensor  # (B, factor_dim) standardised generating factors (`_Batches.factors`)


class ExponentialAverage:
    """EMA copies of some modules' parameters (buffers are copied as they are at export)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.modules = modules
        self.decay = decay
        self.shadow = {name: copy.deepcopy(module).requires_grad_(False) for name, module in modules.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the averages towards the current weights (decay warms up as (1 + step) / (10 + step))."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, module in self.modules.items():
            averaged = list(self.shadow[name].parameters())
            current = [p.detach() for p in module.parameters()]
            torch._foreach_lerp_(averaged, current, 1.0 - decay)


class _Models:
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


def initialise_from(models: _Models, weights_dir: str | os.PathLike) -> None:
    """Start a run's models from an exported weights folder (`encoder/`, `diffusion/`, `baselines/regression/`).

    Lets a run continue a shipped model with a changed recipe instead of starting from scratch.
    Shapes must match; what the folder lacks may only be the diffusion's mean head (a run that
    adds one starts it fresh); a frozen encoder stays the one the config names. The factor
    read-outs are not exported, so they start fresh.
    """
    weights_dir = Path(weights_dir)
    if not (weights_dir / DIFFUSION_DIR).is_dir():
        raise FileNotFoundError(f"{weights_dir} holds no {DIFFUSION_DIR}/ folder to start the run from.")
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


def _cosine_factor(config: ReconstructionTrainingConfig, step: int, restart_step: int | None) -> float:
    """Learning-rate factor: linear warm-up (again after a restart without optimiser state), then cosine to 5 %."""
    warm = min(1.0, (step + 1) / config.warmup_steps)
    if restart_step is not None:
        warm = min(warm, (step - restart_step + 1) / min(200, config.warmup_steps))
    progress = min(1.0, step / config.total_steps)
    return warm * (0.05 + 0.95 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class _Batches:
    """Renders of training heads (or held-out ones) with their targets, one call per step."""

    def __init__(
        self, config: ReconstructionTrainingConfig, heads: TrainingHeads, renderer: HeadRenderer, device: torch.device
    ) -> None:
        self.config, self.heads, self.renderer, self.device = config, heads, renderer, device
        split = heads.split
        appearance = split.appearance(torch.arange(len(split.appearance_seeds)))
        self.appearance = appearance.to(device)
        self._colours = appearance.region_colours.flatten(1)  # (identities, regions · 3), on the CPU like the split
        self.latents = heads.latents.to(device)
        self.heldout_latents = heads.heldout_latents.to(device) if heads.heldout_latents is not None else None
        train = split.train_identities
        self._factor_scale = [
            _standardiser(split.identity_coefficients[train]),
            _standardiser(split.expression_weights[train].flatten(0, 1)),
            _standardiser(self._colours[train]),
        ]

    @property
    def factor_dim(self) -> int:
        """Length of a head's factor vector (identity coefficients + expression weights + region colours)."""
        return sum(len(mean) for mean, _ in self._factor_scale)

    def factors(self, identities: Tensor, slots: Tensor, appearance_identities: Tensor) -> Tensor:
        """(B, factor_dim) standardised generating factors of B rendered heads (on the device)."""
        split = self.heads.split
        raw = [
            split.identity_coefficients[identities],
            split.expression_weights[identities, slots],
            self._colours[appearance_identities],
        ]
        return torch.cat([(value - mean) / std for value, (mean, std) in zip(raw, self._factor_scale)], 1).to(
            self.device
        )

    def _render(
        self, identities: Tensor, slots: Tensor, appearance_identities: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """Crops of the heads (identity, slot) in the colours of `appearance_identities`, and their factors."""
        split = self.heads.split
        scenes = self.renderer.sample_scenes(
            split.identity_coefficients[identities].to(self.device),
            split.expression_weights[identities, slots].to(self.device),
            self.appearance.select(appearance_identities.to(self.device)),
            seed=seed,
        )
        return self.renderer.render_crops(scenes), self.factors(identities, slots, appearance_identities)

    def training(self, seed: int, count: int) -> Batch:
        """Random training heads drawn from `seed` (in other identities' colours with `mix_appearance`)."""
        generator = torch.Generator().manual_seed(seed)
        split, slots_per_id = self.heads.split, self.heads.split.expressions_per_identity
        rows = torch.randint(0, len(split.train_identities), (count,), generator=generator)
        slots = torch.randint(0, slots_per_id, (count,), generator=generator)
        colour_rows = rows
        if self.config.mix_appearance:
            colour_rows = torch.randint(0, len(split.train_identities), (count,), generator=generator)
        identities = split.train_identities[rows]
        crops, factors = self._render(identities, slots, split.train_identities[colour_rows], seed)
        latents = self.latents[(rows * slots_per_id + slots).to(self.device)].clone()
        latents[:, _Z_APP] = self.latents[(colour_rows * slots_per_id).to(self.device), _Z_APP]
        return Batch(crops, latents, factors)

    def heldout(self, count: int) -> Batch | None:
        """Fixed renders of held-out identities, in their own colours, with their fitted latents (None without them)."""
        if self.heldout_latents is None:
            return None
        split, slots_per_id = self.heads.split, self.heads.heldout_slots
        seed = _VALIDATION_SEED + self.config.seed
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, len(split.heldout_identities), (count,), generator=generator)
        slots = torch.randint(0, slots_per_id, (count,), generator=generator)
        identities = split.heldout_identities[rows]
        crops, factors = self._render(identities, slots, identities, seed)
        return Batch(crops, self.heldout_latents[(rows * slots_per_id + slots).to(self.device)], factors)


def _standardiser(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and standard deviation (at least 1e-3, so constant columns stay 0) of (N, D) values."""
    return values.mean(0), values.std(0).clamp_min(1e-3)


def _losses(
    models: _Models, batch: Batch, autocast: bool, readout_weight: float, generator: torch.Generator | None = None
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


def _validate(models: _Models, batches: _Batches) -> dict[str, float]:
    """Losses on fixed renders of held-out identities and of training heads (same noise draws each time)."""
    count = batches.config.validation_renders
    sets = {"train": batches.training(_VALIDATION_SEED + batches.config.seed + 1, count)}
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
    (its stored config wins; a given config must agree except `RESUMABLE_OVERRIDES`). Stops at
    `total_steps`, after `stop_after_steps` steps of this call, or before `time_budget_s` would
    be overrun, always leaving a checkpoint. `backgrounds` is a background bank file for the
    renders (`python -m diffnphr build-backgrounds`). Returns a summary of the call.
    """
    budget = TimeBox(time_budget_s, time.monotonic(), stop_after_steps)
    run_dir = Path(out_dir)
    device = resolve_device(device)
    checkpoint = newest_checkpoint(run_dir, device)
    config = _run_config(config, checkpoint.state["config"] if checkpoint else None, total_steps)
    (run_dir / CONFIG_FILE).write_text(json.dumps(config.to_dict(), indent=2) + "\n")

    heads = TrainingHeads.load(latents_dir)
    if checkpoint is not None and checkpoint.state.get("split_fingerprint") != heads.split.fingerprint():
        raise ValueError(f"The checkpoint {checkpoint.path} was trained on another split than {latents_dir}'s.")
    torch.manual_seed(config.seed)
    models = _Models(config, heads, device)
    image_size = models.encoder.model.config.image_size
    bank = BackgroundBank.load(backgrounds, device) if backgrounds else None
    renderer = HeadRenderer(
        load_ict(ict_path), device, RenderConfig(**{**config.render, "image_size": image_size}), backgrounds=bank
    )
    batches = _Batches(config, heads, renderer, device)
    models.add_readouts(config, batches.factor_dim)
    if checkpoint is None and config.init_from:
        initialise_from(models, config.init_from)
    optimizer = torch.optim.AdamW(models.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
    ema = ExponentialAverage(models.trained, config.ema_decay)

    step, restart_step = 0, None
    if checkpoint is not None:
        step = checkpoint.step
        _load_trained(models, ema, checkpoint.tensors)
        if checkpoint.optimizers is not None:
            optimizer.load_state_dict(checkpoint.optimizers["adamw"])
            restart_step = checkpoint.state.get("restart_step")
        else:
            restart_step = step
    log = TrainingLog(run_dir / LOG_FILE)
    log.write(
        {
            "event": "start",
            "step": step,
            "device": str(device),
            "backgrounds": bool(bank),
            "optimizer_restored": checkpoint is None or checkpoint.optimizers is not None,
        }
    )

    def save() -> Path:
        state = {
            "config": config.to_dict(),
            "restart_step": restart_step,
            "split_fingerprint": heads.split.fingerprint(),
        }
        return save_checkpoint(
            run_dir, step, _trained_tensors(models, ema), {"adamw": optimizer.state_dict()}, state, keep=2
        )

    autocast = device.type == "cuda" and config.bf16
    saved_at = step if checkpoint is not None else None
    records: list[dict[str, Any]] = []
    while step < config.total_steps and budget.allows_step():
        tick = time.monotonic()
        factor = _cosine_factor(config, step, restart_step)
        for group in optimizer.param_groups:
            group["lr"] = config.learning_rate * factor
        batch = batches.training(config.seed * _STEP_SEED + step, config.batch_size)
        terms = _losses(models, batch, autocast, config.readout_weight)
        loss = sum(terms.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        for module in models.trained.values():
            torch.nn.utils.clip_grad_norm_(module.parameters(), config.grad_clip)
        optimizer.step()
        ema.update(step)
        step += 1
        log.add(terms, loss)
        extra: dict[str, Any] = {}
        if step % config.validate_every == 0 or step == config.total_steps:
            extra = _validate(models, batches)
        if step % config.log_every == 0 or step == config.total_steps or extra:
            elapsed = time.monotonic() - budget.started
            records.append(log.flush(step, {"lr_factor": factor, "elapsed_s": elapsed, **extra}))
        budget.stepped(time.monotonic() - tick)
        if step % config.checkpoint_every == 0:
            tick = time.monotonic()
            save()
            saved_at = step
            budget.saved(time.monotonic() - tick)
    path = save() if saved_at != step else list_checkpoints(run_dir)[-1]
    return {
        "step": step,
        "total_steps": config.total_steps,
        "done": step >= config.total_steps,
        "steps_this_call": budget.steps,
        "images_per_s": config.batch_size / budget.step_s if budget.step_s else None,
        "losses": records[-1] if records else {},
        "checkpoint": str(path),
        "elapsed_s": time.monotonic() - budget.started,
    }


def _run_config(
    given: ReconstructionTrainingConfig | str | os.PathLike | None,
    stored: dict[str, Any] | None,
    total_steps: int | None,
) -> ReconstructionTrainingConfig:
    """The run's config: the stored one when resuming (a given one must agree with it), else the given or default."""
    if given is not None and not isinstance(given, ReconstructionTrainingConfig):
        given = ReconstructionTrainingConfig.from_json(given)
    return resume_config(ReconstructionTrainingConfig, given, stored, total_steps, RESUMABLE_OVERRIDES)


def _trained_tensors(models: _Models, ema: ExponentialAverage) -> dict[str, Tensor]:
    """Flat name -> tensor of every trained module and its average, for a checkpoint."""
    tensors = {}
    for name, module in models.trained.items():
        tensors.update({f"{name}.{key}": value for key, value in module.state_dict().items()})
        tensors.update({f"ema.{name}.{key}": value for key, value in ema.shadow[name].state_dict().items()})
    return tensors


def _load_trained(models: _Models, ema: ExponentialAverage, tensors: dict[str, Tensor]) -> None:
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
