"""One photo -> a coloured 3D head: face crop, image embedding, latent diffusion, MonoNPHM, mesh.

`HeadReconstructionPipeline` holds the three trained blocks, loaded once from one weights folder:

    weights/
      pipeline.json   defaults: steps, guidance_scale, samples, resolution, scheduler
      encoder/        the image encoder (a ResNet or a FaRL CLIP vision folder; `load_face_encoder`)
      diffusion/      LatentDiffusion
      decoder/        MonoNPHM

Calling it on a photo returns a `Reconstruction` (mesh with vertex colours, the crop, the latents,
the seed used, seconds per stage, warnings); on a list of photos, a list of them, the photos taken
through every stage together (`batch`); `transfer_expression` puts the expression of one photo
(or a given `z_exp`) on the head of another. Its stages (`crop`, `encode`, `sample_latents` /
`sample_flat`, `decode`, `mesh`) are public, so the benchmark and the evaluation run exactly
them. How it runs (batched extraction, TF32 and bf16 on a GPU) is its `execution`
(`ExecutionOptions`); `warm_up` makes a server's first request as fast as the next.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

import torch
from PIL import Image

from diffnphr.devices import resolve_device
from diffnphr.diffusion.model import LatentDiffusion
from diffnphr.encoders.loading import ImageEncoder, load_face_encoder
from diffnphr.face.crop import FaceCrop, crop_face
from diffnphr.mesh.extract import MeshExtraction, extract_mesh_with_stats
from diffnphr.nphm.decoder import HeadField, MonoNPHM
from diffnphr.nphm.latents import HeadLatents, unpack
from diffnphr.pipeline.batch import reconstruct_batch
from diffnphr.pipeline.execution import ExecutionOptions
from diffnphr.pipeline.progress import ProgressCallback, StageProgress, StageTimer, timed_extraction
from diffnphr.pipeline.reconstruction import Reconstruction, checked_expression_code, naming_the_photo, usable_copy
from diffnphr.pipeline.refining import refine_heads, refines
from diffnphr.pipeline.settings import PIPELINE_CONFIG_NAME, PipelineDefaults, SamplingSettings
from diffnphr.refine.refiner import FACTOR_MAP_FOLDER, Refiner
from diffnphr.weights import WeightsNotFoundError, resolve_weights_dir

if TYPE_CHECKING:
    import trimesh

    from diffnphr.face.images import ImageSource

__all__ = ["HeadReconstructionPipeline", "Reconstruction", "resolve_pipeline_weights"]
logger = logging.getLogger(__name__)

WEIGHTS_ENV = "DIFFNPHR_WEIGHTS"
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[2] / "weights"
ENCODER_FOLDER, DIFFUSION_FOLDER, DECODER_FOLDER = "encoder", "diffusion", "decoder"


def resolve_pipeline_weights(path_or_hub_id: str | os.PathLike | None = None) -> Path:
    """The pipeline weights folder: an explicit path or Hub id, else `$DIFFNPHR_WEIGHTS`, else the repo's `weights/`.

    Raises `WeightsNotFoundError` naming all three options when none of them holds weights.
    """
    if path_or_hub_id is None:
        path_or_hub_id = os.environ.get(WEIGHTS_ENV) or None
    if path_or_hub_id is None and REPO_WEIGHTS_DIR.is_dir():
        path_or_hub_id = REPO_WEIGHTS_DIR
    if path_or_hub_id is None:
        raise WeightsNotFoundError(_missing_weights_message("No model weights were given."))
    try:
        return resolve_weights_dir(path_or_hub_id)
    except WeightsNotFoundError as error:
        raise WeightsNotFoundError(_missing_weights_message(str(error))) from error


def _missing_weights_message(reason: str) -> str:
    return (
        f"{reason} Point diffnphr at a weights folder (pipeline.json + encoder/, diffusion/, decoder/) "
        f"in one of three ways: pass it explicitly (--weights DIR or a Hugging Face Hub id), set "
        f"${WEIGHTS_ENV} to a folder or Hub id, or put it at {REPO_WEIGHTS_DIR}."
    )


class HeadReconstructionPipeline:
    """Face photo -> 3D head with vertex colours (1D-DiffNPHR). Load once, call many times."""

    def __init__(
        self,
        encoder: ImageEncoder,
        diffusion: LatentDiffusion,
        decoder: MonoNPHM,
        defaults: PipelineDefaults | None = None,
        execution: ExecutionOptions | None = None,
        refiner: Refiner | None = None,
    ) -> None:
        self.encoder = encoder.eval()
        self.diffusion = diffusion.eval()
        self.decoder = decoder.eval()
        self.defaults = defaults or PipelineDefaults()
        self.execution = execution or ExecutionOptions()
        self.refiner = refiner

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        execution: ExecutionOptions | None = None,
    ) -> HeadReconstructionPipeline:
        """Load encoder, diffusion model and decoder from one folder or Hub repo (see `resolve_pipeline_weights`).

        `device=None` picks CUDA when available; `execution` says how to run (default `ExecutionOptions()`).
        """
        root = resolve_pipeline_weights(path_or_hub_id)
        device = resolve_device(device)
        for folder in (ENCODER_FOLDER, DIFFUSION_FOLDER, DECODER_FOLDER):
            if not (root / folder).is_dir():
                raise WeightsNotFoundError(
                    _missing_weights_message(f"The weights folder {root} has no '{folder}' sub-folder.")
                )
        return cls(
            load_face_encoder(root, subfolder=ENCODER_FOLDER, device=device),
            LatentDiffusion.from_pretrained(root, subfolder=DIFFUSION_FOLDER, device=device),
            MonoNPHM.from_pretrained(root, subfolder=DECODER_FOLDER, device=device),
            PipelineDefaults.load(root / PIPELINE_CONFIG_NAME),
            execution,
            Refiner.from_weights(root),
        )

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the folder `from_pretrained` reads: pipeline.json plus encoder/, diffusion/, decoder/."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.defaults.save(directory / PIPELINE_CONFIG_NAME)
        self.encoder.save_pretrained(directory / ENCODER_FOLDER)
        self.diffusion.save_pretrained(directory / DIFFUSION_FOLDER)
        self.decoder.save_pretrained(directory / DECODER_FOLDER)
        if self.refiner is not None:
            self.refiner.factor_map.save_pretrained(directory / FACTOR_MAP_FOLDER)
        return directory

    @property
    def device(self) -> torch.device:
        """The device the models run on."""
        return self.encoder.device

    @property
    def default_resolution(self) -> int:
        """The mesh resolution used when a call gives none: `resolution` on a GPU, `cpu_resolution` on a CPU."""
        return self.defaults.resolution if self.device.type == "cuda" else self.defaults.cpu_resolution

    def settings(self, **given: Any) -> SamplingSettings:
        """One call's `SamplingSettings`: the values given (seed, steps, guidance_scale, samples, resolution,
        refine; None or left out: this pipeline's defaults, a random seed), validated once."""
        return SamplingSettings.resolve(
            self.defaults, self.default_resolution, self.diffusion.max_sampling_steps, **given
        )

    @overload
    def __call__(
        self,
        image: ImageSource | FaceCrop,
        settings: SamplingSettings | None = None,
        *,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        **given: Any,
    ) -> Reconstruction: ...

    @overload
    def __call__(
        self,
        image: list[ImageSource | FaceCrop] | tuple[ImageSource | FaceCrop, ...],
        settings: SamplingSettings | Sequence[SamplingSettings] | None = None,
        *,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        **given: Any,
    ) -> list[Reconstruction]: ...

    def __call__(
        self,
        image: ImageSource | FaceCrop | list[ImageSource | FaceCrop] | tuple[ImageSource | FaceCrop, ...],
        settings: SamplingSettings | Sequence[SamplingSettings] | None = None,
        *,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        **given: Any,
    ) -> Reconstruction | list[Reconstruction]:
        """Reconstruct the head in `image` (a PIL image, a file path, bytes, an RGB array, or a `FaceCrop` from `crop`).

        `settings` (`self.settings(...)`), or the settings given by name (`seed`, `steps`,
        `guidance_scale`, `samples`, `resolution`; the rest default to `self.defaults`, `seed=None`
        draws a random seed, reported in the result). `samples` diffusion samples of the latent
        are averaged into the head (one: a single sample, with the variation the photo leaves
        open). `allow_no_face=True` uses the centre of the image when no face is found instead of
        raising `NoFaceError`. `progress(stage, fraction)` is called as the work advances:
        `stage` is a short sentence (`STAGE_LABELS`), `fraction` the part of the whole call done.

        A list (or tuple) of photos gives a list of reconstructions, one per photo, the photos
        taken through the stages together (`pipeline.batch`): each the one a single call with
        its settings gives (the same seed, the same mesh up to float rounding). `settings` is
        then one for every photo or a sequence of one per photo; an error about one photo
        names it ("Photo 2 of 3 (name.jpg): ...").
        """
        settings = self._resolved(settings, given)
        if isinstance(image, (list, tuple)):
            return reconstruct_batch(self, image, settings, allow_no_face, progress)
        if not isinstance(settings, SamplingSettings):
            raise TypeError("One photo takes one SamplingSettings; give a list of photos for a list of settings.")
        refining = ["refine"] if refines(self.refiner, [settings]) else []
        tracker = StageProgress(progress, ["crop", "encode", "diffusion", *refining, "extraction", "colour"])
        timer = StageTimer(self.device)
        crop = self._timed_crop(image, allow_no_face, timer, tracker)
        with torch.inference_mode(), self.execution.precision(self.device):
            latents = self._timed_sample(self._timed_encode(crop, timer, tracker), settings, timer, tracker)
            (latents,), (refine_warnings,) = refine_heads(self.refiner, [latents], [crop], [settings], timer, tracker)
            mesh = self._timed_mesh(latents, settings.resolution, timer, tracker)
        warnings = list(crop.warnings) + refine_warnings
        return Reconstruction(mesh, crop, usable_copy(latents), settings.seed, timer.summary(), warnings)

    def warm_up(self, resolution: int | None = None, heads: int = 1) -> float:
        """Reconstruct a grey test image once (its centre, no face needed), so that a server's first request does
        not pay for the first call's set-up (CUDA's start, kernels, the face detector's models); its seconds.

        `heads > 1` warms a batch of that many. For a server to call at start-up, before it takes requests.
        """
        photo = Image.new("RGB", (512, 512), (128, 128, 128))
        settings = self.settings(seed=0, resolution=resolution)
        start = time.perf_counter()
        self([photo] * heads if heads > 1 else photo, settings, allow_no_face=True)
        seconds = time.perf_counter() - start
        logger.info("warm-up: %d head(s) at %d³ in %.2f s on %s", heads, settings.resolution, seconds, self.device)
        return seconds

    def transfer_expression(
        self,
        identity_image: ImageSource,
        expression: ImageSource | torch.Tensor,
        settings: SamplingSettings | None = None,
        *,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        **given: Any,
    ) -> Reconstruction:
        """The head of `identity_image` (its z_geo, z_app) wearing the expression of `expression`.

        `expression` is a second photo, whose z_exp is sampled with the same seed, or a z_exp
        tensor ([100] or [1, 100], e.g. `Reconstruction.latents.z_exp`). With the same seed the
        identity is exactly the one `__call__` gives for `identity_image`. Settings as for `__call__`; `refine`
        refines the expression photo's head (only its z_exp is used).
        """
        settings = self._resolved(settings, given)
        from_photo = not isinstance(expression, torch.Tensor)
        given_z_exp = None if from_photo else checked_expression_code(expression, self.decoder.config.lat_dim_exp)
        sampling = ["crop", "encode", "diffusion"]
        if from_photo:  # both crops first, so a bad second photo fails before any model work
            sampling = ["crop", "crop", "encode", "diffusion", "encode", "diffusion"]
        refining = ["refine"] if from_photo and refines(self.refiner, [settings]) else []
        tracker = StageProgress(progress, [*sampling, *refining, "extraction", "colour"])
        timer = StageTimer(self.device)
        with naming_the_photo("Identity photo"):
            crop = self._timed_crop(identity_image, allow_no_face, timer, tracker)
        expression_crop, more = None, []
        if from_photo:
            with naming_the_photo("Expression photo"):
                expression_crop = self._timed_crop(expression, allow_no_face, timer, tracker)
        with torch.inference_mode(), self.execution.precision(self.device):
            identity = self._timed_sample(self._timed_encode(crop, timer, tracker), settings, timer, tracker)
            if expression_crop is not None:
                z_cond = self._timed_encode(expression_crop, timer, tracker)
                heads = [self._timed_sample(z_cond, settings, timer, tracker)]
                (head,), (more,) = refine_heads(self.refiner, heads, [expression_crop], [settings], timer, tracker)
                given_z_exp = head.z_exp
            latents = HeadLatents(identity.z_geo, given_z_exp, identity.z_app)
            mesh = self._timed_mesh(latents, settings.resolution, timer, tracker)
        warnings = list(crop.warnings)
        if expression_crop is not None:
            warnings += [f"Expression photo: {warning}" for warning in expression_crop.warnings + more]
        latents = usable_copy(latents)
        return Reconstruction(mesh, crop, latents, settings.seed, timer.summary(), warnings, expression_crop)

    # -- the stages, public so that the benchmark and the evaluation time and call these very steps ----------

    def crop(self, image: ImageSource | FaceCrop, allow_no_face: bool = False) -> FaceCrop:
        """Find the face in `image` and cut the model's crop (`diffnphr.face.crop_face`); a `FaceCrop` is kept as it is."""
        if isinstance(image, FaceCrop):
            return image
        return crop_face(image, allow_no_face=allow_no_face)

    @torch.inference_mode()
    def encode(self, crop: FaceCrop | Sequence[FaceCrop]) -> torch.Tensor:
        """The image embedding `z_cond` [B, cond_dim] of a crop (B = 1) or of several, in one batch."""
        crops = [crop] if isinstance(crop, FaceCrop) else list(crop)
        with self.execution.autocast(self.device, "encode"):
            return self.encoder.encode([one.image for one in crops]).float()

    @torch.inference_mode()
    def sample_latents(
        self, z_cond: torch.Tensor, settings: SamplingSettings, progress: Callable[[int, int], None] | None = None
    ) -> HeadLatents:
        """The head's MonoNPHM codes sampled for one `z_cond` [1, cond_dim] (the average of `settings.samples`),
        on the CPU; `progress(step, total)` follows the denoising steps."""
        z_geo, z_exp, z_app = (part[0].float().cpu() for part in unpack(self.sample_flat(z_cond, settings, progress)))
        return HeadLatents(z_geo, z_exp, z_app)

    @torch.inference_mode()
    def sample_flat(
        self, z_cond: torch.Tensor, settings: SamplingSettings, progress: Callable[[int, int], None] | None = None
    ) -> torch.Tensor:
        """Padded flat latents [B, 4456] sampled for a batch of embeddings `z_cond` [B, cond_dim], on the device
        (what `sample_latents` unpacks; the evaluation samples whole batches of renders this way)."""
        with self.execution.autocast(self.device, "diffusion"):
            return self.diffusion.sample(
                z_cond,
                num_steps=settings.steps,
                seed=settings.seed,
                guidance_scale=settings.guidance_scale,
                average_of=settings.samples,
                scheduler=self.defaults.scheduler,
                progress=progress,
            )

    @torch.inference_mode()
    def decode(self, latents: HeadLatents) -> HeadField:
        """The decoder bound to one head's codes: its SDF and colour fields."""
        codes = (latents.z_geo, latents.z_exp, latents.z_app)
        return self.decoder.bind(*(code[None].to(self.device) for code in codes))

    @torch.inference_mode()
    def mesh(
        self, head: HeadField, resolution: int, progress: Callable[[str, float], None] | None = None
    ) -> MeshExtraction:
        """The coloured mesh of a decoded head at `resolution`³, with the seconds of each step and the query count;
        `progress(stage, fraction)` follows the extraction, then the colouring."""
        execution, device = self.execution, self.device
        return extract_mesh_with_stats(
            execution.in_autocast(head.point_sdf, device, "sdf"),
            resolution=resolution,
            color_fn=execution.in_autocast(head.point_colour, device, "colour"),
            chunk_size=execution.chunk_size,
            device=device,
            progress=progress,
        )

    # -- the stages with progress and timing ----------------------------------------------------------------

    def _resolved(self, settings: Any, given: dict[str, Any]) -> Any:
        if settings is not None and given:
            raise TypeError(f"Give either settings or {', '.join(given)}, not both.")
        return settings if settings is not None else self.settings(**given)

    def _timed_crop(
        self, image: ImageSource, allow_no_face: bool, timer: StageTimer, tracker: StageProgress
    ) -> FaceCrop:
        tracker.report(0.0)
        with timer.stage("crop"):
            crop = self.crop(image, allow_no_face)
        tracker.next()
        return crop

    def _timed_encode(self, crop: FaceCrop, timer: StageTimer, tracker: StageProgress) -> torch.Tensor:
        tracker.report(0.0)
        with timer.stage("encode"):
            z_cond = self.encode(crop)
        tracker.next()
        return z_cond

    def _timed_sample(
        self, z_cond: torch.Tensor, settings: SamplingSettings, timer: StageTimer, tracker: StageProgress
    ) -> HeadLatents:
        tracker.report(0.0)
        with timer.stage("diffusion"):
            latents = self.sample_latents(z_cond, settings, lambda step, total: tracker.report(step / total))
        tracker.next()
        return latents

    def _timed_mesh(
        self, latents: HeadLatents, resolution: int, timer: StageTimer, tracker: StageProgress
    ) -> trimesh.Trimesh:
        return timed_extraction(lambda follow: self.mesh(self.decode(latents), resolution, follow), timer, tracker)
