"""The settings that define a training run, one frozen dataclass per trainer, stored as JSON in its run folder.

`JsonConfig` gives both the same style: `to_dict` (JSON-able), `from_dict` (the defaults with a
possibly partial, nested object applied; unknown keys are an error) and `from_json` (a file of
such an object) and `for_run` (a run's config: its stored one wins when it resumes).
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from diffnphr.data.samples import SamplingConfig
from diffnphr.nphm.config import MonoNPHMConfig
from diffnphr.nphm.factor_map import FactorMapConfig
from diffnphr.train.losses import LossWeights


class JsonConfig:
    """The JSON form every training config shares (a mixin for dataclasses with a `resumable` class attribute)."""

    resumable: ClassVar[tuple[str, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form (nested dataclasses as dicts, tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Any:
        """The default config with `values` (possibly partial, nested) applied; unknown keys are an error."""
        return _apply(cls(), values)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> Any:
        """Read a JSON file of settings (any subset of the config's fields, nested where they are)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No training config at {path}.")
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ValueError(f"{path} is not valid JSON ({error}).") from error
        return cls.from_dict(values)

    @classmethod
    def for_run(cls, given: Any, stored: dict[str, Any] | None, total_steps: int | None) -> Any:
        """The config of a run: the stored one when resuming (a `given` one, a config or a JSON file, must agree
        with it except in the class's `resumable` settings, which it then overrides), else `given` or the
        defaults; `total_steps`, when given, replaces the planned length."""
        if given is not None and not isinstance(given, cls):
            given = cls.from_json(given)
        if stored is None:
            config = given or cls()
        else:
            config = cls.from_dict(stored)
            if given is not None:
                resumable = cls.resumable
                ours, theirs = config.to_dict(), given.to_dict()
                differing = sorted(k for k, v in theirs.items() if k not in resumable and ours[k] != v)
                if differing:
                    raise ValueError(
                        f"This run folder was started with different settings ({', '.join(differing)}); "
                        "resume it with its own config (omit --config) or train into a new folder."
                    )
                config = dataclasses.replace(config, **{k: getattr(given, k) for k in resumable})
        if total_steps is not None:
            config = dataclasses.replace(config, total_steps=total_steps)
        return config


def _apply(base: Any, values: dict[str, Any]) -> Any:
    """`base` (a dataclass) with `values` applied: nested dataclasses field by field, tuples from lists."""
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


PRECISIONS = {"fp32": None, "tf32": None, "bf16": torch.bfloat16}


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
class DecoderTrainingConfig(JsonConfig):
    """Everything that defines a decoder training run (data, model, losses, optimisation, bookkeeping)."""

    # Settings that may differ when a run is resumed; everything else must match the run's own config.
    resumable: ClassVar[tuple[str, ...]] = (
        "total_steps",
        "checkpoint_every",
        "keep_checkpoints",
        "log_every",
        "precision",
    )

    seed: int = 0
    # The split: held-out identities to measure on, training identities whose mapped latents the
    # reconstruction stage learns (the decoder itself trains on fresh random heads).
    train_identities: int = 1000
    heldout_identities: int = 100
    expressions_per_identity: int = 8
    model: MonoNPHMConfig = field(default_factory=MonoNPHMConfig.small)
    factor_map: FactorMapConfig = field(default_factory=FactorMapConfig)  # hidden sizes (widths follow the data)
    init_decoder: str | None = None  # a decoder weights folder to start from (None: a new decoder)
    sampling: SamplingConfig = field(default_factory=training_sampling)
    losses: LossWeights = field(default_factory=LossWeights)
    heads_per_step: int = 64
    far_points: int = 32  # per head, uniform in [-far_extent, far_extent]^3, where offsets should vanish
    far_extent: float = 1.25
    total_steps: int = 8000  # about three 9-minute H100 commands at 64 heads per step
    lr_network: float = 5e-4
    lr_factor_map: float = 5e-4
    weight_decay: float = 5e-4
    grad_clip: float = 1.0
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


# The ViT the shipped weights were trained with (FaRL's architecture at ViT-Tiny width and half its
# depth, 128-px crops): the `encoder` overrides of configs written before `encoder_type` existed.
LEGACY_FARL_ENCODER = dict(
    hidden_size=192, num_hidden_layers=6, num_attention_heads=3, intermediate_size=768, image_size=128, patch_size=16
)
HEAD_SOURCES = ("fresh", "split")
# What a stored config without `encoder_type` meant: it was written when the encoder was always the ViT and
# the heads always the split's.
_BEFORE_ENCODER_TYPE = {"encoder_type": "farl", "heads": "split"}


@dataclass(frozen=True)
class ReconstructionTrainingConfig(JsonConfig):
    """Everything that defines a run of `train_reconstruction` (stored in the run folder)."""

    # Settings that may change when a run resumes; the rest must match the run's stored config.
    resumable: ClassVar[tuple[str, ...]] = (
        "total_steps",
        "log_every",
        "validate_every",
        "checkpoint_every",
        "copies_per_head",
    )

    # The encoder: "resnet" (`ResNetFaceEncoder`, ResNet-18 at 224 px by default) or "farl" (FaRL's ViT);
    # `encoder` overrides that kind's config fields (`ResNetEncoderConfig` / `farl_vision_config`).
    encoder_type: str = "resnet"
    encoder: dict[str, Any] = field(default_factory=dict)
    frozen_encoder: str | None = None  # an encoder folder (e.g. converted FaRL) to use frozen instead
    init_from: str | None = None  # a weights folder whose trained models start a new run (`initialise_from`)
    # DiffusionConfig overrides; by default the diffusion is centred on a conditional mean whose MLP
    # is as wide as the regression baseline's (`LatentDiffusion`)
    diffusion: dict[str, Any] = field(default_factory=lambda: {"mean_head_hidden": 256})
    regression: bool = True  # train the direct-regression baseline alongside
    regression_hidden: int = 256
    # Where the heads come from: "fresh" (a new random head every render, its latent from the factor map at
    # `factor_map`) or "split" (the split's training identities × expressions and their codebook latents).
    heads: str = "fresh"
    factor_map: str = "weights/factor_map"
    mix_appearance: bool = True  # split heads only: each rendered in another training identity's colours
    # Fresh heads only: renders per drawn and rasterised head, each in its own lights, background and photo
    # degradations (`HeadRenderer.render_crops`); more renders per second, fewer distinct heads and poses per batch.
    copies_per_head: int = 1
    readout_weight: float = 1.0  # weight of the encoders' generating-factor read-out loss (0: none)
    render: dict[str, Any] = field(default_factory=dict)  # RenderConfig overrides (image_size follows the encoder)
    batch_size: int = 256  # per step over all processes; each of W processes renders batch_size / W
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

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ReconstructionTrainingConfig:
        """The defaults with `values` applied; `values` naming `encoder` but no `encoder_type` are the format of
        before the ResNet (a FaRL ViT on the split's heads), and read as such."""
        if isinstance(values, dict) and "encoder" in values and "encoder_type" not in values:
            values = {**_BEFORE_ENCODER_TYPE, **values}
        return _apply(cls(), values)

    def __post_init__(self) -> None:
        if min(self.batch_size, self.total_steps, self.log_every, self.validate_every, self.checkpoint_every) < 1:
            raise ValueError("batch_size, total_steps and the log/validate/checkpoint intervals must be positive.")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must lie in [0, 1), got {self.ema_decay}.")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}.")
        if not self.readout_weight >= 0:
            raise ValueError(f"readout_weight must be non-negative, got {self.readout_weight}.")
        if self.encoder_type not in ("resnet", "farl"):
            raise ValueError(f"encoder_type must be 'resnet' or 'farl', got {self.encoder_type!r}.")
        if self.copies_per_head < 1 or (self.copies_per_head > 1 and self.heads != "fresh"):
            raise ValueError(f"copies_per_head must be 1, or more with fresh heads; got {self.copies_per_head}.")
        if self.heads not in HEAD_SOURCES:
            raise ValueError(f"heads must be one of {', '.join(HEAD_SOURCES)}; got {self.heads!r}.")
