"""The per-render loop of `eval reconstruction`: decode each method's latent, compare it with the truth, cache.

Beside the table it measures consistency (Chamfer between the reconstructions of a head's two
renders, over the Chamfer to another head's, at the pipeline's default settings) and expression
transfer (identity A's z_geo/z_app with B's z_exp against the true head of A with B's expression).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.eval.heads import GroundTruthHeads, compare_head, decode_mesh, sample_in_box
from diffnphr.eval.metrics import surface_metrics
from diffnphr.eval.reconstruction.cache import ResultCache, result_key, transfer_key
from diffnphr.eval.reconstruction.methods import (
    TRANSFER_METHODS,
    ConditionalMean,
    DecoderFit,
    DiffusionSampling,
    Method,
    SamplingFloor,
)
from diffnphr.eval.reconstruction.renders import CHUNK, SLOTS_PER_IDENTITY, EvalRenders
from diffnphr.nphm.latents import pack, unpack

if TYPE_CHECKING:
    from diffnphr.eval.reconstruction.models import EvalModels
    from diffnphr.heads.split import HeadSplit

logger = logging.getLogger(__name__)


class Work:
    """The per-item loop: decode, compare, cache; latents computed per chunk as the loop reaches it."""

    def __init__(
        self,
        cache: ResultCache,
        models: EvalModels,
        truth_heads: GroundTruthHeads,
        split: HeadSplit,
        renders: EvalRenders,
        decoder,
        resolution: int,
        points: int,
        seed: int,
    ):
        self.cache, self.models, self.truth_heads, self.split = cache, models, truth_heads, split
        self.renders, self.decoder, self.resolution, self.points, self.seed = renders, decoder, resolution, points, seed
        self._latents: dict[tuple[int, int, str], dict[str, Tensor]] = {}

    def latent(self, method: Method, index: int, view: int = 0) -> Tensor:
        """The padded latent one method gives for render `index` (computed with its whole chunk, kept)."""
        chunk = self.renders.chunk_of(index)
        key = (chunk, view, method.name)
        if key not in self._latents:
            self._latents[key] = self.models.latents(chunk, [method], view)[method.name]
        return self._latents[key][index - chunk * CHUNK]

    def mesh(self, latent: Tensor, colours: bool = False):
        """The decoder's mesh of a padded latent."""
        z_geo, z_exp, z_app = unpack(latent)
        return decode_mesh(self.decoder, z_geo, z_exp, z_app, self.resolution, colours=colours)

    def truth(self, index: int, expression_identity: int | None = None, expression_slot: int | None = None):
        """The ground-truth head of render `index` (or its identity wearing another head's expression)."""
        identity, slot = int(self.renders.identities[index]), int(self.renders.slots[index])
        if expression_identity is not None:
            return self.truth_heads.mesh(self.split, identity, expression_slot, expression_identity=expression_identity)
        return self.truth_heads.mesh(self.split, identity, slot)

    def compare(self, mesh, truth, index: int) -> dict[str, Any]:
        """`compare_head` metrics, or the reason there are none (an empty or misplaced mesh)."""
        identity = int(self.renders.identities[index])
        try:
            return compare_head(
                mesh.vertices, mesh.faces, truth, self.points, self.seed + 7919 * identity + index, with_floor=False
            )
        except ValueError as error:
            return {"error": str(error)}

    def run(self, scope: range, methods: Sequence[Method], default: DiffusionSampling, deadline: float | None) -> bool:
        """Do every pending item in `scope`; True when the deadline stopped it first."""
        done = 0
        for index in scope:
            pending = [m for m in methods if result_key("recon", m.name, index) not in self.cache]
            # Consistency and transfer use the default diffusion setting; they run when diffusion is evaluated.
            diffusion = any(isinstance(m, (DiffusionSampling, ConditionalMean)) for m in methods)
            consistency = diffusion and result_key("consistency", default.name, index) not in self.cache
            transfer = [
                m
                for m in TRANSFER_METHODS
                if diffusion
                and int(self.renders.slots[index]) == 0
                and transfer_key(default.name, m, index) not in self.cache
            ]
            if not (pending or consistency or transfer):
                continue
            truth = self.truth(index)
            default_mesh = None
            for method in pending:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                if isinstance(method, SamplingFloor):
                    record = self.compare(_Mesh(truth["vertices"], truth["faces"]), truth, index)
                else:
                    mesh = self.mesh(self.latent(method, index))
                    default_mesh = mesh if method == default else default_mesh
                    record = self.compare(mesh, truth, index)
                self.cache.add(result_key("recon", method.name, index), record)
                done += 1
            if consistency:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                default_mesh = default_mesh or self.mesh(self.latent(default, index))
                self.cache.add(
                    result_key("consistency", default.name, index), self.consistency_item(default_mesh, default, index)
                )
            for method in transfer:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                self.cache.add(transfer_key(default.name, method, index), self.transfer_item(method, index))
            logger.info("render %d/%d done (%d reconstructions this call)", index + 1, len(scope), done)
        return False

    def consistency_item(self, mesh, method: Method, index: int) -> dict[str, Any]:
        """Chamfer (mm) from render `index`'s reconstruction to its second view's, and to another head's second view's."""
        other = (index + SLOTS_PER_IDENTITY) % len(self.renders)
        second = self.mesh(self.latent(method, index, view=1))
        another = self.mesh(self.latent(method, other, view=1))
        distances = reconstruction_distances(
            mesh, second, another, self.points, self.seed + index, self.truth_heads.device
        )
        return {"other": other, **distances}

    def transfer_item(self, method: str, index: int) -> dict[str, Any]:
        """Identity of neutral render `index` with the expression of the next identity's first posed render."""
        expression_index = (index + SLOTS_PER_IDENTITY + 1) % len(self.renders)
        donor = int(self.renders.identities[expression_index])
        donor_slot = int(self.renders.slots[expression_index])
        source = DecoderFit() if method == "decoder_fit" else self.models.default_method
        z_geo, _, z_app = unpack(self.latent(source, index))
        if method == "diffusion_without_transfer":
            latent = self.latent(source, index)
        else:
            latent = pack(z_geo, unpack(self.latent(source, expression_index))[1], z_app)
        truth = self.truth(index, expression_identity=donor, expression_slot=donor_slot)
        return {"expression_of": expression_index, **self.compare(self.mesh(latent), truth, index)}


@dataclass(frozen=True)
class _Mesh:
    """Vertices and faces, where `compare_head` expects a mesh (the ground truth compared with itself)."""

    vertices: Tensor
    faces: Tensor


def reconstruction_distances(
    mesh, second, another, points: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Chamfer-L1 (mm) of `mesh` to `second` (the same head, another render) and to `another` (another head).

    Each mesh is sampled above the box floor like the ground truth, on `device` (where the
    nearest-neighbour search runs); an empty mesh gives the reason instead of numbers.
    """
    try:
        samples = [
            sample_in_box(
                torch.as_tensor(np.asarray(m.vertices), dtype=torch.float32, device=device),
                torch.as_tensor(np.asarray(m.faces), device=device),
                points,
                seed + 1000 * k,
            )
            for k, m in enumerate((mesh, second, another))
        ]
    except ValueError as error:
        return {"error": str(error)}
    base = samples[0]
    same = surface_metrics(base.points, base.normals, samples[1].points, samples[1].normals)["chamfer_l1_mm"]
    other = surface_metrics(base.points, base.normals, samples[2].points, samples[2].normals)["chamfer_l1_mm"]
    return {"same_head_mm": same, "other_head_mm": other}
