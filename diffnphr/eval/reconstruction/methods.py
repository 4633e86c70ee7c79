"""The methods `eval reconstruction` compares, as typed objects (the models they read are `models`'s).

Every method turns a chunk of evaluation renders into padded latents [B, 4456] (`Method.latents`);
its `name` keys its cached results, so names never change:

* `decoder_fit`: the latents fitted to the held-out heads with the decoder frozen, the
  decoder's ceiling (it sees the 3D head, not the image); reported apart from the methods;
* `mean`: the training latents' mean (`LatentDiffusion.data_mean`);
* `nearest_neighbour`: the codebook latent of the training head whose render embedding is
  closest (`baselines.neighbours`);
* `regression`: the same encoder + an MLP to z (`baselines.regression.LatentRegressor`);
* `landmark_ridge`: ridge from Face Mesh landmarks (`baselines.landmarks`, made on the CPU by
  `eval landmarks`);
* `diffusion_ddim{steps}_g{guidance}[_avg{samples}]` (`DiffusionSampling`): the diffusion model,
  seeded; with samples > 1 their average in latent space (the app's default averages 8; not an
  oracle: no ground truth is used to choose);
* `diffusion_conditional_mean`: the diffusion model's mean head alone, without sampling (the
  point its samples are centred on; only for a model with a mean head): what sampling adds;
* `sampling_floor`: the ground truth against itself resampled (no latent): what a perfect
  reconstruction scores.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.eval.reconstruction.models import ChunkInputs, EvalModels


class Method(ABC):
    """One way to reconstruct: `name` keys its cached results; `reads_image` says whether it needs the renders."""

    name: str
    reads_image: bool = True

    @abstractmethod
    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor | None:
        """Padded raw latents (B, 4456) for the chunk's renders, or None for a method without latents."""

    def __repr__(self) -> str:
        return self.name


class DecoderFit(Method):
    """The fitted held-out latents: the decoder's ceiling."""

    name, reads_image = "decoder_fit", False

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        return models.fitted_latents(chunk.identities, chunk.slots)


class MeanLatent(Method):
    """The training latents' mean: knowing nothing about the face."""

    name, reads_image = "mean", False

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        return models.pipeline.diffusion.data_mean.expand(len(chunk.identities), -1)


class NearestNeighbour(Method):
    """The codebook latent of the training head whose render embedding is closest."""

    name = "nearest_neighbour"

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        return models.neighbours().predict(chunk.z_cond())


class Regression(Method):
    """The direct-regression baseline on its own encoder."""

    name = "regression"

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        regressor = models.regressor
        return regressor.predict(regressor.encoder.preprocess(chunk.crops()))


class LandmarkRidge(Method):
    """Ridge from Face Mesh landmarks, predicted beforehand by `eval landmarks`."""

    name, reads_image = "landmark_ridge", False

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        return models.landmark_latents[chunk.rows]


class ConditionalMean(Method):
    """The diffusion model's conditional mean head alone, without sampling."""

    name = "diffusion_conditional_mean"

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        diffusion = models.pipeline.diffusion
        return diffusion.denormalize(diffusion.conditional_mean(chunk.z_cond().to(diffusion.data_mean.dtype)))


@dataclass(frozen=True, repr=False)
class DiffusionSampling(Method):
    """DDIM sampling at `steps` and `guidance`, `samples` samples averaged in latent space."""

    steps: int
    guidance: float
    samples: int = 1

    @property
    def name(self) -> str:  # type: ignore[override]
        """`diffusion_ddim{steps}_g{guidance}`, `_avg{samples}` when more than one sample is averaged."""
        return f"diffusion_ddim{self.steps}_g{self.guidance:g}" + (f"_avg{self.samples}" if self.samples > 1 else "")

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> Tensor:
        pipeline = models.pipeline
        settings = pipeline.settings(
            seed=chunk.seed, steps=self.steps, guidance_scale=self.guidance, samples=self.samples
        )
        return pipeline.sample_flat(chunk.z_cond(), settings)


class SamplingFloor(Method):
    """The ground truth against itself, resampled: no latent, the metrics' floor."""

    name, reads_image = "sampling_floor", False

    def latents(self, models: EvalModels, chunk: ChunkInputs) -> None:
        return None


DIFFUSION_STEPS = (5, 10, 25, 50)
GUIDANCE_SCALES = (1.0, 2.0)
BASELINES: tuple[Method, ...] = (MeanLatent(), NearestNeighbour(), Regression(), LandmarkRidge())
DIFFUSION_METHODS = tuple(DiffusionSampling(s, g) for s in DIFFUSION_STEPS for g in GUIDANCE_SCALES)
# The shipped pipeline's default (`SamplingSettings`: 10 steps, guidance 1, 8 samples averaged; a test
# keeps the two in step without importing the pipeline here)
AVERAGED_METHOD = DiffusionSampling(10, 1.0, 8)
METHODS: tuple[Method, ...] = (
    DecoderFit(),
    *BASELINES,
    *DIFFUSION_METHODS,
    AVERAGED_METHOD,
    ConditionalMean(),
    SamplingFloor(),
)
METHODS_BY_NAME = {method.name: method for method in METHODS}
TRANSFER_METHODS = ("diffusion", "diffusion_without_transfer", "decoder_fit")


def default_method(pipeline) -> DiffusionSampling:
    """The method a pipeline runs when a call leaves its settings out (its `SamplingSettings`)."""
    settings = pipeline.defaults
    return DiffusionSampling(settings.steps, settings.guidance_scale, settings.samples)
