"""The reconstruction pipeline: photo → crop → embedding → latent diffusion → MonoNPHM → mesh.

`pipeline` holds `HeadReconstructionPipeline`; `settings` its defaults (`pipeline.json`) and one
call's validated `SamplingSettings`; `progress` the per-stage progress and timing.
"""

from diffnphr.pipeline.pipeline import (
    REPO_WEIGHTS_DIR,
    WEIGHTS_ENV,
    HeadReconstructionPipeline,
    Reconstruction,
    resolve_pipeline_weights,
)
from diffnphr.pipeline.progress import STAGE_LABELS
from diffnphr.pipeline.settings import MAX_SAMPLES, MAX_SEED, RESOLUTION_RANGE, PipelineDefaults, SamplingSettings

__all__ = [
    "MAX_SAMPLES",
    "MAX_SEED",
    "REPO_WEIGHTS_DIR",
    "RESOLUTION_RANGE",
    "STAGE_LABELS",
    "WEIGHTS_ENV",
    "HeadReconstructionPipeline",
    "PipelineDefaults",
    "Reconstruction",
    "SamplingSettings",
    "resolve_pipeline_weights",
]
