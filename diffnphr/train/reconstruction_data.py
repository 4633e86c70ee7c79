"""What the reconstruction trainer learns from: heads with exact target latents, and batches of their renders.

`TrainingHeads` reads the decoder's latents folder (split, statistics, fitted held-out latents and,
for the split's heads, the codebooks). Two sources of training batches share one interface
(`training(seed, count)`, `heldout(count)`, `factor_dim`), both rendering on the device with each
head's own hair (the style its target latent was made with) and fresh pose, light, background and
camera, cropped by the app's crop rule, each crop paired with its target latent and its
standardised generating factors (the read-out's targets):

* `FreshHeadBatches` (`heads: "fresh"`, the default): every render a new random head
  (`diffnphr.train.decoder.training_heads`, the distribution the decoder and its factor map were
  trained on: `sample_head_factors`, one head in eight neutral), drawn from the batch's seed, its
  exact latent from the factor map (`FactorMap.latents`). No head is seen twice, so its own colours
  are no key to identity and there is nothing to mix; the read-out's factors are the factor map's
  inputs (`HeadFactors.vectors()`), standardised by a fixed sample of fresh heads.
* `RenderBatches` (`heads: "split"`): the split's 1,000 training identities × 8 expressions and their
  codebook latents. With `mix_appearance` a head wears another training identity's colours (hair
  colour included) and its target that identity's z_app.

Both normalise targets by the shipped statistics of the split's latents
(`latent_statistics.safetensors`), and validate on the same fixed renders of held-out identities
with their fitted latents.
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
from diffnphr.nphm.latents import Z_APP, Z_EXP, Z_GEO, pack

if TYPE_CHECKING:
    from diffnphr.data.factors import HeadFactors
    from diffnphr.data.renders import HeadRenderer
    from diffnphr.nphm.factor_map import FactorMap
    from diffnphr.train.config import ReconstructionTrainingConfig

VALIDATION_SEED = 2**40  # fixed validation renders: VALIDATION_SEED + seed (held out), + 1 (training heads)
FACTOR_SCALE_SEED, FACTOR_SCALE_HEADS = 2**41, 1024  # the fresh heads that standardise the read-out's factors
_Z_APP = slice(Z_GEO + Z_EXP, Z_GEO + Z_EXP + Z_APP)  # z_app's columns in a padded latent


@dataclass(frozen=True)
class TrainingHeads:
    """The decoder's heads as diffusion targets: the split, each training head's latent, and statistics."""

    split: HeadSplit
    latents: Tensor | None  # (n_train * slots, 4456) raw codebook latents, row = train row * slots + slot
    heldout_latents: Tensor | None  # (n_fitted * fitted slots, 4456) fitted latents of held-out identities
    heldout_identities: Tensor  # (n_fitted,) the held-out identities those latents belong to
    heldout_slots: int
    mean: Tensor
    std: Tensor

    @classmethod
    def load(cls, directory: str | os.PathLike, codebooks: bool = True) -> TrainingHeads:
        """Read `split`, statistics, (if present) the fitted held-out latents and, with `codebooks`, the training
        heads' codebook latents of a latents folder (fresh heads take their latents from the factor map)."""
        directory = Path(directory)
        split = load_head_split(directory)
        codebook = load_head_latents(directory, CODEBOOKS_NAME) if codebooks else None
        if codebook is not None and not torch.equal(codebook.identities, split.train_identities):
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
            latents=codebook.flat() if codebook is not None else None,
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
        if heads.latents is None:
            raise ValueError("Training on the split's heads needs their codebook latents (TrainingHeads.load).")
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


class FreshHeadBatches:
    """Renders of new random heads with their factor-map latents, and of fixed held-out ones (module docstring)."""

    def __init__(
        self,
        config: ReconstructionTrainingConfig,
        heads: TrainingHeads,
        factor_map: FactorMap,
        renderer: HeadRenderer,
        device: torch.device,
    ) -> None:
        self.config, self.heads, self.renderer, self.device = config, heads, renderer, device
        self.factor_map = factor_map.to(device).eval().requires_grad_(False)
        self._factor_scale = _standardiser(_flat_factors(self.draw(FACTOR_SCALE_HEADS, FACTOR_SCALE_SEED)))

    @property
    def factor_dim(self) -> int:
        """Length of a head's factor vector (the factor map's geometry + expression + appearance inputs)."""
        return len(self._factor_scale[0])

    def draw(self, count: int, seed: int) -> HeadFactors:
        """`count` new random heads from `seed`, distributed as the factor map's training heads (on the CPU)."""
        from diffnphr.train.decoder import training_heads  # the decoder trainer's draw, not its import weight

        return training_heads(self.renderer.model, count, seed)

    def factors(self, heads: HeadFactors) -> Tensor:
        """(B, factor_dim) standardised generating factors of `heads` (on the device)."""
        mean, std = self._factor_scale
        return ((_flat_factors(heads) - mean) / std).to(self.device)

    def render(self, heads: HeadFactors, seed: int, latents: Tensor | None = None, copies: int = 1) -> Batch:
        """Crops of `heads` with their own hair in scenes drawn from `seed`, each shown in `copies` lightings
        (`HeadRenderer.render_crops`); targets `latents`, else the map's (repeated for the copies)."""
        scenes = self.renderer.sample_scenes(
            heads.identity.to(self.device),
            heads.expression.to(self.device),
            heads.appearance.to(self.device),
            seed=seed,
            hair=heads.hair,
        )
        if latents is None:
            with torch.no_grad():
                latents = pack(*self.factor_map.latents(heads)).float()
        crops = self.renderer.render_crops(scenes, copies)
        factors = self.factors(heads)
        return Batch(crops, latents.to(self.device).repeat_interleave(copies, 0), factors.repeat_interleave(copies, 0))

    def training(self, seed: int, count: int) -> Batch:
        """`count` renders of new random heads drawn from `seed` (their factors, their scenes), with their exact
        latents: `count / copies_per_head` heads, each in `copies_per_head` lightings."""
        copies = self.config.copies_per_head
        if count % copies:
            raise ValueError(f"A batch of {count} renders does not split into copies of {copies} per head.")
        return self.render(self.draw(count // copies, seed), seed, copies=copies)

    def heldout(self, count: int) -> Batch | None:
        """Fixed renders of the held-out identities that have fitted latents, with those latents (None without)."""
        if self.heads.heldout_latents is None:
            return None
        fitted, slots_per_id = self.heads.heldout_identities, self.heads.heldout_slots
        seed = VALIDATION_SEED + self.config.seed
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(0, len(fitted), (count,), generator=generator)
        slots = torch.randint(0, slots_per_id, (count,), generator=generator)
        heads = self.heads.split.factors(fitted[rows], slots)
        return self.render(heads, seed, self.heads.heldout_latents[rows * slots_per_id + slots])


def _flat_factors(heads: HeadFactors) -> Tensor:
    """(B, ·) the factor map's three input vectors of `heads`, side by side (on the CPU)."""
    vectors = heads.vectors()
    return torch.cat([vectors.geometry, vectors.expression, vectors.appearance], dim=1).cpu()


def _standardiser(values: Tensor) -> tuple[Tensor, Tensor]:
    """Per-column mean and standard deviation (at least 1e-3, so constant columns stay 0) of (N, D) values."""
    return values.mean(0), values.std(0).clamp_min(1e-3)
