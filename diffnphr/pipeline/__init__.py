"""The reconstruction pipeline: photo → crop → embedding → latent diffusion → MonoNPHM → mesh.

`pipeline` holds `HeadReconstructionPipeline`; `batch` its calls on several photos at once;
`reconstruction` what a call gives back; `settings` its defaults (`pipeline.json`) and one call's
validated `SamplingSettings`; `execution` how it runs (`ExecutionOptions`: batched extraction,
TF32 / bf16 on a GPU); `progress` the per-stage progress and timing.
"""

from diffnphr.pipeline.execution import ExecutionOptions
from diffnphr.pipeline.pipeline import (
    REPO_WEIGHTS_DIR,
    WEIGHTS_ENV,
    HeadReconstructionPipeline,
    resolve_pipeline_weights,
)
from diffnphr.pipeline.progress import STAGE_LABELS
from diffnphr.pipeline.reconstruction import Reconstruction
from diffnphr.pipeline.settings import MAX_SAMPLES, MAX_SEED, RESOLUTION_RANGE, PipelineDefaults, SamplingSettings

__all__ = [
    "MAX_SAMPLES",
    "MAX_SEED",
    "REPO_WEIGHTS_DIR",
    "RESOLUTION_RANGE",
    "STAGE_LABELS",
    "WEIGHTS_ENV",
    "ExecutionOptions",
    "HeadReconstructionPipeline",
    "PipelineDefaults",
    "Reconstruction",
    "SamplingSettings",
    "resolve_pipeline_weights",
]
