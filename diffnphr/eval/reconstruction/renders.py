"""The evaluation set of `eval reconstruction`: which held-out heads are rendered, and with which seeds.

Every held-out identity of the split × 3 expression slots (slot 0 neutral and two of the slots
that have fitted latents, drawn by a fixed seed), each rendered twice by `HeadRenderer` with
seeds no training step uses (`EVAL_RENDER_SEED` + chunk; the second view, for the consistency
check, `SECOND_VIEW_OFFSET` further). Renders go in fixed chunks of `CHUNK`, so a render and its
diffusion noise never depend on which subset a call evaluates.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel
    from diffnphr.heads.split import HeadSplit

SLOTS_PER_IDENTITY = 3
SLOT_DRAW_SEED = 5
CHUNK = 50
EVAL_RENDER_SEED = 1_000_000_000  # training steps use seeds below 10^8, validation 2^40 and up
SECOND_VIEW_OFFSET = 100_000


@dataclass(frozen=True)
class EvalRenders:
    """The evaluation renders: split rows and expression slots, in a fixed order (identity-major)."""

    identities: Tensor  # (N,) split rows of held-out identities
    slots: Tensor  # (N,) expression slots; every identity's first render is its neutral slot 0
    split_fingerprint: str

    def __len__(self) -> int:
        return len(self.identities)

    def chunk_of(self, index: int) -> int:
        """The render chunk (of `CHUNK` renders) holding render `index`."""
        return index // CHUNK

    def chunk_rows(self, chunk: int) -> slice:
        """The renders of one chunk."""
        return slice(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self)))

    def seed(self, chunk: int, view: int) -> int:
        """The scene seed of a chunk's renders (view 0: the evaluated render; view 1: the second one)."""
        return EVAL_RENDER_SEED + view * SECOND_VIEW_OFFSET + chunk

    def fingerprint(self) -> str:
        """A short hash of the split, the renders and their seeds (files made for this set carry it)."""
        digest = hashlib.sha256(f"{self.split_fingerprint}/{EVAL_RENDER_SEED}/{SECOND_VIEW_OFFSET}/{CHUNK}".encode())
        digest.update(self.identities.numpy().tobytes())
        digest.update(self.slots.numpy().tobytes())
        return digest.hexdigest()[:16]


def eval_renders(split: HeadSplit, fitted_slots: int) -> EvalRenders:
    """Every held-out identity × slot 0 and two other slots below `fitted_slots`, drawn with a fixed seed."""
    if fitted_slots < SLOTS_PER_IDENTITY:
        raise ValueError(
            f"the evaluation needs fitted latents for at least {SLOTS_PER_IDENTITY} expression slots "
            f"per held-out identity; the fitted latents have {fitted_slots}"
        )
    rng = np.random.default_rng(SLOT_DRAW_SEED)
    identities, slots = [], []
    for identity in split.heldout_identities.tolist():
        others = np.sort(rng.choice(np.arange(1, fitted_slots), SLOTS_PER_IDENTITY - 1, replace=False))
        identities += [identity] * SLOTS_PER_IDENTITY
        slots += [0, *others.tolist()]
    return EvalRenders(torch.tensor(identities), torch.tensor(slots), split.fingerprint())


def render_scenes(renderer, split: HeadSplit, identities: Tensor, slots: Tensor, seed: int, device: torch.device):
    """The renderer's scenes of heads (split rows, slots) drawn from `seed`."""
    return renderer.sample_scenes(
        split.identity_coefficients[identities].to(device),
        split.expression_weights[identities, slots].to(device),
        split.appearance(identities).to(device),
        seed=seed,
    )


def default_renderer(
    model: ICTFaceModel, device: torch.device, image_size: int, backgrounds: str | os.PathLike | None = None
):
    """The training renderer (`diffnphr.data.renders.HeadRenderer`) with crops of the encoder's input size."""
    from diffnphr.data.backgrounds import BackgroundBank
    from diffnphr.data.renders import HeadRenderer
    from diffnphr.data.scenes import RenderConfig

    bank = BackgroundBank.load(backgrounds, device) if backgrounds else None
    return HeadRenderer(model, device, RenderConfig(image_size=image_size), backgrounds=bank)
