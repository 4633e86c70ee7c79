"""What the reconstruction trainer learns from: the decoder's heads as targets, and batches of their renders.

`TrainingHeads` reads the decoder's latents folder (split, codebooks, statistics, fitted held-out
latents). `RenderBatches` renders random training heads (or fixed held-out ones) on the device
with their own hair (the style their target latent was made with) and fresh pose, light,
background and camera, crops them by the app's crop rule and pairs each crop with its target
latent and its standardised generating factors. With `mix_appearance` a head wears another
training identity's colours (hair colour included) and its target that identity's z_app.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffnphr.heads.latents import (
    CODEBOOKS_NAME,
    FITTED_HELDOUT_NAME,
    LATENT_STATISTICS_FILE,
    load_head_latents,
    load_latent_statistics,
)
from diffnphr.heads.split import HeadSplit, load_head_split
from diffnphr.nphm.latents import Z_APP, Z_EXP, Z_GEO

if TYPE_CHECKING:
    from diffnphr.data.renders import HeadRenderer
    from diffnphr.train.config import ReconstructionTrainingConfig

VALIDATION_SEED = 2**40  # fixed validation renders: VALIDATION_SEED + seed (held out), + 1 (training heads)
_Z_APP = slice(Z_GEO + Z_EXP, Z_GEO + Z_EXP + Z_APP)  # z_app's columns in a padded latent


@dataclass(frozen=True)
class TrainingHeads:
    """The decoder's heads as diffusion targets: the split, each training head's latent, and statistics."""

    split: HeadSplit
    latents: Tensor  # (n_train * slots, 4456) raw, row = train row * slots + slot
    heldout_latents: Tensor | None  # (n_fitted * fitted slots, 4456) fitted latents of held-out identities
    heldout_identities: Tensor  # (n_fitted,) the held-out identities those latents belong to
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
        if fitted is not None and not torch.isin(fitted.identities, split.heldout_identities).all():
            raise ValueError(
                f"The fitted held-out latents in {directory} include identities its split does not hold out."
            )
        return cls(
            split=split,
            latents=codebooks.flat(),
            heldout_latents=fitted.flat() if fitted is not None else None,
            heldout_identities=fitted.identities if fitted is not None else torch.zeros(0, dtype=torch.long),
            heldout_slots=int(fitted.z_exp.shape[1]) if fitted is not None else 0,
            mean=statistics.mean,
            std=statistics.std,
        )


@dataclass(frozen=True)
class Batch:
    """One batch of training or validation renders and what they should give."""

    crops: Tensor  # (B, 3, S, S) in [0, 1]
    latents: Tensor  # (B, 4456) raw target latents
    factors: Tensor  # (B, factor_dim) standardised generating factors (`RenderBatches.factors`)


class RenderBatches:
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
        self._hair_shapes = split.hair.geometry_vector()  # (identities, ·), on the CPU like the split
        train = split.train_identities
        self._factor_scale = [
            _standardiser(split.identity_coefficients[train]),
            _standardiser(split.expression_weights[train].flatten(0, 1)),
            _standardiser(self._colours[train]),
            _standardiser(self._hair_shapes[train]),
        ]

    @property
    def factor_dim(self) -> int:
        """Length of a head's factor vector (identity coefficients + expression weights + region colours + hair shape)."""
        return sum(len(mean) for mean, _ in self._factor_scale)

    def factors(self, identities: Tensor, slots: Tensor, appearance_identities: Tensor) -> Tensor:
        """(B, factor_dim) standardised generating factors of B rendered heads (on the device)."""
        split = self.heads.split
        raw = [
            split.identity_coefficients[identities],
            split.expression_weights[identities, slots],
            self._colours[appearance_identities],
            self._hair_shapes[identities],
        ]
        return torch.cat([(value - mean) / std for value, (mean, std) in zip(raw, self._factor_scale)], 1).to(
            self.device
        )

    def _render(
        self, identities: Tensor, slots: Tensor, appearance_identities: Tensor, seed: int
    ) -> tuple[Tensor, Tensor]:
        """Crops of the heads (identity, slot) with their hair, in the colours of `appearance_identities`
        (hair colour included), and their factors."""
        split = self.heads.split
        hair = split.hair.select(identities).with_colours_of(split.hair.select(appearance_identities))
        scenes = self.renderer.sample_scenes(
            split.identity_coefficients[identities].to(self.device),
            split.expression_weights[identities, slots].to(self.device),
            self.appearance.select(appearance_identities.to(self.device)),
            seed=seed,
            hair=hair,
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
        """Fixed renders of the held-out identities that have fitted latents, in their own colours, with those
        latents (None without any)."""
        if self.heldout_latents is None:
            return None
        fitted, slots_per_id = self.heads.heldout_identities, self.heads.heldout_slots
        seed = VALIDATION_SEED + self.config.seed
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, len(fitted), (count,), generator=generator)
        slots = torch.randint(0, slots_per_id, (count,), generator=generator)
        identities = fitted[rows]
        crops, factors = self._render(identities, slots, identities, seed)
        return Batch(crops, self.heldout_latents[(rows * slots_per_id + slots).to(self.device)], factors)


def _standardiser(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and standard deviation (at least 1e-3, so constant columns stay 0) of (N, D) values."""
    return values.mean(0), values.std(0).clamp_min(1e-3)
