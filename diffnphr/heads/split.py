"""The heads the decoder is trained on, and the identities held out from it, fixed by one seed.

A split holds `train + heldout` identities drawn from the ICT model (identity coefficients
N(0, 1) per mode, `diffnphr.data.heads.sample_identities`), each with `expressions` expression
weight vectors: slot 0 is the neutral face (all zeros), the others come from the realistic
sampler (`diffnphr.data.expressions.sample_expressions`), one appearance seed per identity
(`diffnphr.data.appearance.appearance_params`) and one hair style per identity
(`diffnphr.data.hair_styles`, in the identity's hair colour). A seeded permutation decides
which identities are held out. The decoder trains on fresh random heads and is measured on the
held-out identities; the latents of the training identities (from the factor map) are the
reconstruction stage's targets, and its renders show the same heads with the same hair.

Files (`save` / `load_head_split`): `split.json` (seed, counts, which rows are train and held
out, the expression names) and `heads.safetensors` (the arrays). Arrays are stored rather than
regenerated, so the split stays the same whatever NumPy version reads it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffnphr.data.appearance import REGIONS, AppearanceParams, appearance_params
from diffnphr.data.expressions import sample_expressions
from diffnphr.data.factors import HeadFactors
from diffnphr.data.hair_styles import HairStyles, sample_hair_styles
from diffnphr.data.heads import sample_identities

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

SPLIT_FILE = "split.json"
HEADS_FILE = "heads.safetensors"
SPLIT_FORMAT = 2  # 2: with a hair style per identity


@dataclass(frozen=True)
class HeadSplit:
    """Identities × expressions of the decoder's data, and which identities are held out.

    Rows of the arrays are identities; `train_identities` and `heldout_identities` are
    disjoint, sorted row indices. Expression slot 0 of every identity is its neutral face.
    """

    seed: int
    identity_coefficients: Tensor  # (n_identities, I) float32
    expression_weights: Tensor  # (n_identities, n_expressions, E) float32, slot 0 all zeros
    appearance_seeds: Tensor  # (n_identities,) int64
    train_identities: Tensor  # (n_train,) int64
    heldout_identities: Tensor  # (n_heldout,) int64
    expression_names: tuple[str, ...]
    hair: HairStyles  # (n_identities rows)

    @property
    def expressions_per_identity(self) -> int:
        """Expression slots per identity (slot 0 neutral)."""
        return int(self.expression_weights.shape[1])

    def appearance(self, identities: Tensor) -> AppearanceParams:
        """Procedural appearance parameters of the given identity rows, in their order."""
        return appearance_params(self.appearance_seeds[identities.cpu()].tolist())

    def factors(self, identities: Tensor, slots: Tensor, appearance_identities: Tensor | None = None) -> HeadFactors:
        """The generating factors of heads (identity row, expression slot), each [B]; with
        `appearance_identities`, in those identities' colours (hair colour included)."""
        identities, slots = identities.cpu(), slots.cpu()
        colours = identities if appearance_identities is None else appearance_identities.cpu()
        hair = self.hair.select(identities)
        if appearance_identities is not None:
            hair = hair.with_colours_of(self.hair.select(colours))
        return HeadFactors(
            self.identity_coefficients[identities],
            self.expression_weights[identities, slots],
            self.appearance(colours),
            hair,
        )

    def fingerprint(self) -> str:
        """A short hash of the arrays and the split, to tell whether a checkpoint belongs to this split."""
        digest = hashlib.sha256()
        for tensor in (
            self.identity_coefficients,
            self.expression_weights,
            self.appearance_seeds,
            self.train_identities,
            self.heldout_identities,
            *self.hair.tensors().values(),
        ):
            digest.update(tensor.contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def save(self, directory: str | os.PathLike) -> Path:
        """Write `split.json` and `heads.safetensors` into `directory`; returns the JSON path."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_file(
            {
                "identity_coefficients": self.identity_coefficients.contiguous(),
                "expression_weights": self.expression_weights.contiguous(),
                "appearance_seeds": self.appearance_seeds.contiguous(),
                **{f"hair.{name}": value.contiguous() for name, value in self.hair.tensors().items()},
            },
            str(directory / HEADS_FILE),
        )
        description = {
            "format": SPLIT_FORMAT,
            "seed": self.seed,
            "identities": int(self.identity_coefficients.shape[0]),
            "expressions_per_identity": self.expressions_per_identity,
            "expression_slot_0": "neutral (all blendshape weights zero)",
            "arrays": HEADS_FILE,
            "fingerprint": self.fingerprint(),
            "train_identities": self.train_identities.tolist(),
            "heldout_identities": self.heldout_identities.tolist(),
            "expression_names": list(self.expression_names),
        }
        path = directory / SPLIT_FILE
        path.write_text(json.dumps(description, indent=1) + "\n")
        return path


def make_head_split(
    model: ICTFaceModel,
    seed: int = 0,
    train_identities: int = 1000,
    heldout_identities: int = 100,
    expressions_per_identity: int = 8,
) -> HeadSplit:
    """Draw the identities, expressions and appearance seeds of a split from one seed (module docstring)."""
    if train_identities < 1 or heldout_identities < 0:
        raise ValueError(
            f"A split needs at least one training identity and no negative counts; "
            f"got {train_identities} train and {heldout_identities} held out."
        )
    if expressions_per_identity < 1:
        raise ValueError(f"expressions_per_identity must be at least 1 (the neutral), got {expressions_per_identity}.")
    rng = np.random.default_rng(seed)
    total = train_identities + heldout_identities
    identities = sample_identities(rng, total, model.identity_modes.shape[0])
    posed = sample_expressions(rng, total * (expressions_per_identity - 1), model.expression_names)
    expressions = np.zeros((total, expressions_per_identity, len(model.expression_names)), dtype=np.float32)
    expressions[:, 1:] = posed.reshape(total, expressions_per_identity - 1, -1)
    appearance_seeds = rng.choice(2**31 - 1, size=total, replace=False)
    order = rng.permutation(total)
    hair_colours = appearance_params(appearance_seeds.tolist()).region_colours[:, REGIONS.index("hair")]
    hair = sample_hair_styles(total, torch.Generator().manual_seed(int(seed)), hair_colours)
    return HeadSplit(
        seed=int(seed),
        identity_coefficients=torch.from_numpy(identities),
        expression_weights=torch.from_numpy(expressions),
        appearance_seeds=torch.from_numpy(appearance_seeds.astype(np.int64)),
        train_identities=torch.from_numpy(np.sort(order[:train_identities]).astype(np.int64)),
        heldout_identities=torch.from_numpy(np.sort(order[train_identities:]).astype(np.int64)),
        expression_names=tuple(model.expression_names),
        hair=hair,
    )


def load_head_split(directory: str | os.PathLike) -> HeadSplit:
    """Read a split written by `HeadSplit.save` (a folder holding split.json and heads.safetensors)."""
    directory = Path(directory)
    path = directory / SPLIT_FILE
    if not path.is_file() or not (directory / HEADS_FILE).is_file():
        raise FileNotFoundError(f"{directory} holds no head split ({SPLIT_FILE} and {HEADS_FILE}).")
    description = json.loads(path.read_text())
    if description.get("format") != SPLIT_FORMAT:
        raise ValueError(
            f"{path} has split format {description.get('format')}; this code reads format {SPLIT_FORMAT} "
            "(heads with hair): train a new decoder run (python -m diffnphr train-decoder)."
        )
    arrays = load_file(str(directory / HEADS_FILE))
    split = HeadSplit(
        seed=int(description["seed"]),
        identity_coefficients=arrays["identity_coefficients"],
        expression_weights=arrays["expression_weights"],
        appearance_seeds=arrays["appearance_seeds"],
        train_identities=torch.tensor(description["train_identities"], dtype=torch.int64),
        heldout_identities=torch.tensor(description["heldout_identities"], dtype=torch.int64),
        expression_names=tuple(description["expression_names"]),
        hair=HairStyles.from_tensors({k[len("hair.") :]: v for k, v in arrays.items() if k.startswith("hair.")}),
    )
    if split.fingerprint() != description["fingerprint"]:
        raise ValueError(
            f"{directory / HEADS_FILE} does not match {path} (fingerprint differs); the split files are mixed up."
        )
    return split
