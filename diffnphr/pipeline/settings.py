"""The settings of a reconstruction: the weights' stored defaults, and one call's validated sampling settings.

`PipelineDefaults` is `pipeline.json` beside the weights (what a call gets when it leaves a
setting out). `SamplingSettings` is what one call runs with, every value filled in and checked
once, with one sentence naming the setting and its range when a value cannot work; the app, the
CLI, the benchmark and the evaluation all build one through `HeadReconstructionPipeline.settings`.
"""

from __future__ import annotations

import json
import math
import secrets
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np

from diffnphr.diffusion.model import SAMPLERS

MAX_SEED = 2**31 - 1
MAX_SAMPLES = 32  # diffusion samples averaged into one head
RESOLUTION_RANGE = (16, 1024)
PIPELINE_CONFIG_NAME = "pipeline.json"


@dataclass
class PipelineDefaults:
    """Settings used when a call leaves them out; stored as `pipeline.json` beside the weights."""

    steps: int = 10  # beats 25 and 50 on Chamfer in `eval reconstruction` (docs/RESULTS.md), and is faster
    guidance_scale: float = 1.0
    # Diffusion samples averaged into the head: their mean beats one sample on Chamfer in `eval
    # reconstruction` (docs/RESULTS.md); 8 add about 1-1.7 s on 2 CPU cores
    samples: int = 8
    resolution: int = 256  # on a GPU: under 1 s per head on an H100 (docs/RESULTS.md)
    cpu_resolution: int = 128  # on a CPU: 256 takes about 4x as long (about 55 s on 2 cores)
    scheduler: str = "ddim"
    # Fit the sampled head to the photo's Face Mesh landmarks (`diffnphr.refine`; needs the weights'
    # factor_map/). Off: on 24 held-out renders it lowered the expression error only 1.34 -> 1.27 mm (-5 %, within noise)
    # (docs/RESULTS.md, "Fit to the photo (issue 28)"); the checkbox and `refine=True` switch it on
    refine: bool = False

    def __post_init__(self) -> None:
        if self.scheduler not in SAMPLERS:
            raise ValueError(f"pipeline.json names the sampler {self.scheduler!r}; use one of {SAMPLERS}.")

    def save(self, path: Path) -> None:
        """Write these defaults as `pipeline.json`."""
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> PipelineDefaults:
        """Read `pipeline.json` (missing file: the built-in defaults; unknown keys are ignored)."""
        if not path.is_file():
            return cls()
        raw = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in raw.items() if key in known})


@dataclass(frozen=True)
class SamplingSettings:
    """One call's settings, validated: diffusion seed, DDIM steps, guidance, samples averaged, mesh resolution,
    and whether the sampled head is refined to the photo's landmarks.

    `max_steps` is the diffusion model's limit (`LatentDiffusion.max_sampling_steps`).
    """

    seed: int
    steps: int
    guidance_scale: float
    samples: int
    resolution: int
    max_steps: int = 500
    refine: bool = False

    def __post_init__(self) -> None:
        _check_whole("The seed", self.seed, 0, MAX_SEED)
        _check_whole("The number of diffusion steps", self.steps, 1, self.max_steps)
        _check_whole("The mesh resolution", self.resolution, *RESOLUTION_RANGE)
        _check_whole("The number of samples averaged", self.samples, 1, MAX_SAMPLES)
        value = self.guidance_scale
        if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
            raise ValueError(f"The guidance scale must be a number of at least 0; got {value!r}.")
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"The guidance scale must be a finite number of at least 0; got {value!r}.")
        for name, kind in (("seed", int), ("steps", int), ("resolution", int), ("samples", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))
        object.__setattr__(self, "guidance_scale", float(value))
        if not isinstance(self.refine, (bool, np.bool_)):
            raise ValueError(f"Refinement is switched on or off with true or false; got {self.refine!r}.")
        object.__setattr__(self, "refine", bool(self.refine))

    @classmethod
    def resolve(
        cls,
        defaults: PipelineDefaults,
        default_resolution: int,
        max_steps: int,
        *,
        seed: int | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        samples: int | None = None,
        resolution: int | None = None,
        refine: bool | None = None,
    ) -> SamplingSettings:
        """The settings of one call: the values given, else `defaults` (`default_resolution` for the mesh);
        `seed=None` draws a random seed (the result reports it)."""
        return cls(
            seed=secrets.randbelow(MAX_SEED + 1) if seed is None else seed,
            steps=defaults.steps if steps is None else steps,
            guidance_scale=defaults.guidance_scale if guidance_scale is None else guidance_scale,
            samples=defaults.samples if samples is None else samples,
            resolution=default_resolution if resolution is None else resolution,
            max_steps=max_steps,
            refine=defaults.refine if refine is None else refine,
        )


def _check_whole(what: str, value: object, low: int, high: int) -> None:
    """Refuse a value that is not a whole number in [low, high], in one sentence."""
    whole = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    if not whole or not low <= value <= high:
        raise ValueError(f"{what} must be a whole number from {low} to {high}; got {value!r}.")
