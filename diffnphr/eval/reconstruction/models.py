"""The models and baselines the evaluation's methods read, and a chunk of renders as a method sees it.

Below `methods`: a method reads `EvalModels` and `ChunkInputs`; nothing here knows the methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from diffnphr.eval.reconstruction.renders import CHUNK, EvalRenders, render_scenes
from diffnphr.nphm.latents import pack

if TYPE_CHECKING:
    from diffnphr.heads.latents import SplitLatents
    from diffnphr.heads.split import HeadSplit

NEIGHBOUR_RENDER_SEED = 1_500_000_000


@dataclass
class ChunkInputs:
    """One chunk of evaluation renders as a method sees it; crops and embeddings are made only when asked for
    (rendering a chunk costs minutes on a CPU)."""

    rows: slice
    identities: Tensor
    slots: Tensor
    seed: int
    crops: Callable[[], Tensor]
    z_cond: Callable[[], Tensor]


class EvalModels:
    """The trained models and baselines the methods read, and one chunk of renders as `ChunkInputs`."""

    def __init__(
        self,
        pipeline,
        split: HeadSplit,
        renders: EvalRenders,
        renderer,
        fitted: SplitLatents,
        codebooks: SplitLatents,
        regressor,
        landmark_latents: Tensor | None,
        neighbour_heads: int | None,
        device: torch.device,
    ):
        self.pipeline, self.split, self.renders, self.renderer = pipeline, split, renders, renderer
        self.fitted, self.codebooks, self.regressor = fitted, codebooks, regressor
        self.landmark_latents, self.neighbour_heads, self.device = landmark_latents, neighbour_heads, device
        self._neighbours = None
        self._last_conditions: tuple[tuple[int, int] | None, Any] = (None, None)
        self._fitted_row = {int(identity): row for row, identity in enumerate(fitted.identities.tolist())}

    def crops(self, chunk: int, view: int) -> Tensor:
        """The chunk's encoder inputs (B, 3, S, S) in [0, 1]."""
        rows = self.renders.chunk_rows(chunk)
        scenes = render_scenes(
            self.renderer,
            self.split,
            self.renders.identities[rows],
            self.renders.slots[rows],
            self.renders.seed(chunk, view),
            self.device,
        )
        return self.renderer.render_crops(scenes)

    def chunk(self, chunk: int, view: int = 0) -> ChunkInputs:
        """One chunk of renders as a method sees it (view 1: the second renders); crops and embeddings on demand."""
        rows = self.renders.chunk_rows(chunk)
        return ChunkInputs(
            rows=rows,
            identities=self.renders.identities[rows],
            slots=self.renders.slots[rows],
            seed=self.renders.noise_seed(chunk, view),
            crops=lambda: self._conditions(chunk, view)[0],
            z_cond=lambda: self._conditions(chunk, view)[1],
        )

    def _conditions(self, chunk: int, view: int) -> tuple[Tensor, Tensor]:
        """A chunk's crops and their embeddings, kept for the methods that follow on the same chunk."""
        if self._last_conditions[0] != (chunk, view):
            crops = self.crops(chunk, view)
            self._last_conditions = ((chunk, view), (crops, self.pipeline.encoder.encode(crops)))
        return self._last_conditions[1]

    def fitted_latents(self, identities: Tensor, slots: Tensor) -> Tensor:
        """Fitted (decoder-frozen) latents of held-out heads (split rows, slots), padded."""
        rows = torch.tensor([self._fitted_row[int(i)] for i in identities])
        return pack(self.fitted.z_geo[rows], self.fitted.z_exp[rows, slots], self.fitted.z_app[rows])

    def neighbours(self):
        """The nearest-neighbour baseline over renders of the training heads, built on first use."""
        if self._neighbours is None:
            from diffnphr.baselines.neighbours import NearestNeighbourLatents

            flat = self.codebooks.flat()
            heads = len(flat) if self.neighbour_heads is None else min(self.neighbour_heads, len(flat))
            slots = self.codebooks.z_exp.shape[1]
            index = torch.arange(heads)
            identities, head_slots = self.codebooks.identities[index // slots], index % slots
            embeddings = []
            for start in range(0, heads, CHUNK):
                part = slice(start, start + CHUNK)
                scenes = render_scenes(
                    self.renderer,
                    self.split,
                    identities[part],
                    head_slots[part],
                    NEIGHBOUR_RENDER_SEED + start // CHUNK,
                    self.device,
                )
                embeddings.append(self.pipeline.encoder.encode(self.renderer.render_crops(scenes)).float())
            self._neighbours = NearestNeighbourLatents(torch.cat(embeddings), flat[:heads].to(self.device))
        return self._neighbours
