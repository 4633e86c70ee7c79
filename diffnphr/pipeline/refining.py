"""The pipeline's `refine` stage: each sampled head fitted to its own photo's landmarks (`diffnphr.refine`).

One place for the single call, the transfer and the batch: a head whose settings ask for it
(`SamplingSettings.refine`) goes through `Refiner.refine` with its crop (which leaves inference
mode for the fit, which differentiates); the others, and every head of a pipeline without a factor map, pass
unchanged. A crop without landmarks is passed through with the refiner's warning. The stage's
seconds are timed as "refine". `reconstruction_with_expression` re-decodes a head with expression
weights a person chose (the app's sliders), through the pipeline's public stages.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from diffnphr.pipeline.progress import ProgressCallback, StageProgress, StageTimer, timed_extraction

if TYPE_CHECKING:
    from diffnphr.face.crop import FaceCrop
    from diffnphr.nphm.latents import HeadLatents
    from diffnphr.pipeline.reconstruction import Reconstruction
    from diffnphr.pipeline.settings import SamplingSettings
    from diffnphr.refine.refiner import Refiner


def refines(refiner: Refiner | None, settings: Sequence[SamplingSettings]) -> bool:
    """Whether a call with these settings has a refine stage."""
    return refiner is not None and any(chosen.refine for chosen in settings)


def refine_heads(
    refiner: Refiner | None,
    latents: Sequence[HeadLatents],
    crops: Sequence[FaceCrop],
    settings: Sequence[SamplingSettings],
    timer: StageTimer,
    tracker: StageProgress,
) -> tuple[list[HeadLatents], list[list[str]]]:
    """Each head refined to its crop where its settings ask (module docstring), and each head's new warnings;
    reports one stage of progress when there is a refine stage (`refines`)."""
    heads, warnings = list(latents), [[] for _ in latents]
    if not refines(refiner, settings):
        return heads, warnings
    tracker.report(0.0)
    with timer.stage("refine"):
        for index, (crop, chosen) in enumerate(zip(crops, settings)):
            if chosen.refine:
                outcome = refiner.refine(heads[index], crop)
                heads[index] = outcome.latents
                if outcome.warning:
                    warnings[index].append(outcome.warning)
            tracker.report((index + 1) / len(heads))
    tracker.next()
    return heads, warnings


def reconstruction_with_expression(
    pipeline: Any,
    head: Reconstruction,
    expression: dict[str, float],
    resolution: int | None = None,
    progress: ProgressCallback | None = None,
) -> Reconstruction:
    """`head` (a reconstruction of `pipeline`, a `HeadReconstructionPipeline`) re-decoded with the named ICT
    expression weights set (each in [0, 1]; the others as the head has them) through the factor map
    (`Refiner.with_expression`), at `resolution` (default: the pipeline's); its seed and crop kept."""
    from diffnphr.pipeline.reconstruction import Reconstruction, usable_copy

    if pipeline.refiner is None:
        raise ValueError("These weights have no factor map, so a head's expression cannot be edited.")
    tracker = StageProgress(progress, ["refine", "extraction", "colour"])
    timer = StageTimer(pipeline.device)
    tracker.report(0.0)
    with timer.stage("refine"):
        latents = pipeline.refiner.with_expression(head.latents, expression)
    tracker.next()
    resolution = resolution or pipeline.default_resolution
    with torch.inference_mode(), pipeline.execution.precision(pipeline.device):
        mesh = timed_extraction(
            lambda follow: pipeline.mesh(pipeline.decode(latents), resolution, follow), timer, tracker
        )
    return Reconstruction(mesh, head.crop, usable_copy(latents), head.seed, timer.summary(), [])
