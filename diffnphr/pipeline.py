"""One photo -> a coloured 3D head: face crop, FaRL embedding, latent diffusion, MonoNPHM, mesh.

`HeadReconstructionPipeline` holds the three trained blocks, loaded once from one weights folder:

    weights/
      pipeline.json   defaults: steps, guidance_scale, samples, resolution, scheduler
      encoder/        FaceEncoder (CLIPVisionModelWithProjection folder)
      diffusion/      LatentDiffusion
      decoder/        MonoNPHM

Calling it on a photo returns a `Reconstruction` (mesh with vertex colours, the crop, the latents,
the seed used, seconds per stage, warnings); `transfer_expression` puts the expression of one
photo (or a given `z_exp`) on the head of another.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import trimesh

from diffnphr.diffusion import SAMPLERS, LatentDiffusion
from diffnphr.encoders import FaceEncoder
from diffnphr.face import FaceCrop, ImageSource, crop_face
from diffnphr.mesh import extract_mesh_with_stats
from diffnphr.nphm import MonoNPHM
from diffnphr.nphm.latents import unpack
from diffnphr.weights import WeightsNotFoundError, resolve_weights_dir

WEIGHTS_ENV = "DIFFNPHR_WEIGHTS"
REPO_WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights"
PIPELINE_CONFIG_NAME = "pipeline.json"
ENCODER_FOLDER, DIFFUSION_FOLDER, DECODER_FOLDER = "encoder", "diffusion", "decoder"
MAX_SEED = 2**31 - 1
MAX_SAMPLES = 32  # diffusion samples averaged into one head
RESOLUTION_RANGE = (16, 1024)

ProgressCallback = Callable[[str, float], None]

# What progress reports per stage, and the stage's rough share of the time (so that the
# reported fraction of the whole call only grows, at a fairly even pace).
STAGE_LABELS = {
    "crop": "Finding and cropping the face",
    "encode": "Embedding the face",
    "diffusion": "Sampling the head latent",
    "extraction": "Extracting the surface",
    "colour": "Colouring the mesh",
}
_STAGE_WEIGHTS = {"crop": 1.0, "encode": 1.0, "diffusion": 6.0, "extraction": 3.0, "colour": 1.0}


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

    def __post_init__(self) -> None:
        if self.scheduler not in SAMPLERS:
            raise ValueError(f"pipeline.json names the sampler {self.scheduler!r}; use one of {SAMPLERS}.")


@dataclass
class HeadLatents:
    """The MonoNPHM codes of one head, on the CPU: `z_geo` [2176], `z_exp` [100], `z_app` [2176]."""

    z_geo: torch.Tensor
    z_exp: torch.Tensor
    z_app: torch.Tensor


@dataclass
class Reconstruction:
    """What one reconstruction gives back.

    `mesh` is in MonoNPHM's frame (+y up, face towards +z; 1 unit = 0.25 m) with RGBA vertex
    colours. `crop` is the face crop the model saw (the identity photo's, for a transfer;
    `expression_crop` then holds the other one). `seed` is the seed actually used, so a result
    can be repeated. `timings` holds seconds per stage: crop, encode, diffusion, extraction,
    colour and total. `warnings` are sentences worth showing to the person (e.g. a small face).
    """

    mesh: trimesh.Trimesh
    crop: FaceCrop
    latents: HeadLatents
    seed: int
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    expression_crop: FaceCrop | None = None


class _Progress:
    """Turns stage-by-stage progress into `callback(stage_label, overall_fraction)` calls."""

    def __init__(self, callback: ProgressCallback | None, stages: Sequence[str]) -> None:
        self.callback = callback
        total = sum(_STAGE_WEIGHTS[stage] for stage in stages)
        self.weights = [_STAGE_WEIGHTS[stage] / total for stage in stages]
        self.labels = [STAGE_LABELS[stage] for stage in stages]
        self.index = 0
        self.done = 0.0

    def report(self, fraction_of_stage: float) -> None:
        """Report how far the current stage is (0..1)."""
        if self.callback is not None:
            fraction = self.done + self.weights[self.index] * min(max(fraction_of_stage, 0.0), 1.0)
            self.callback(self.labels[self.index], min(fraction, 1.0))

    def next(self) -> None:
        """Mark the current stage finished and move to the next one."""
        self.report(1.0)
        self.done += self.weights[self.index]
        self.index = min(self.index + 1, len(self.weights) - 1)


class _Timer:
    """Adds wall-clock seconds per stage name (stages may run more than once, e.g. in a transfer)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        begin = time.perf_counter()
        try:
            yield
        finally:
            self.add(name, time.perf_counter() - begin)

    def add(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> dict[str, float]:
        """Seconds per stage, rounded to milliseconds, plus the total."""
        result = {name: round(value, 3) for name, value in self.seconds.items()}
        result["total"] = round(time.perf_counter() - self.start, 3)
        return result


def default_device() -> torch.device:
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
        encoder: FaceEncoder,
        diffusion: LatentDiffusion,
        decoder: MonoNPHM,
        defaults: PipelineDefaults | None = None,
    ) -> None:
        self.encoder = encoder.eval()
        self.diffusion = diffusion.eval()
        self.decoder = decoder.eval()
        self.defaults = defaults or PipelineDefaults()

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
    ) -> HeadReconstructionPipeline:
        """Load encoder, diffusion model and decoder from one folder or Hub repo (see `resolve_pipeline_weights`).

        `device=None` picks CUDA when available.
        """
        root = resolve_pipeline_weights(path_or_hub_id)
        device = torch.device(device) if device is not None else default_device()
        for folder in (ENCODER_FOLDER, DIFFUSION_FOLDER, DECODER_FOLDER):
            if not (root / folder).is_dir():
                raise WeightsNotFoundError(
                    _missing_weights_message(f"The weights folder {root} has no '{folder}' sub-folder.")
                )
        return cls(
            FaceEncoder.from_pretrained(root, subfolder=ENCODER_FOLDER, device=device),
            LatentDiffusion.from_pretrained(root, subfolder=DIFFUSION_FOLDER, device=device),
            MonoNPHM.from_pretrained(root, subfolder=DECODER_FOLDER, device=device),
            _load_defaults(root / PIPELINE_CONFIG_NAME),
        )

    def save_pretrained(self, directory: str | os.PathLike) -> Path:
        """Write the folder `from_pretrained` reads: pipeline.json plus encoder/, diffusion/, decoder/."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / PIPELINE_CONFIG_NAME).write_text(json.dumps(asdict(self.defaults), indent=2) + "\n")
        self.encoder.save_pretrained(directory / ENCODER_FOLDER)
        self.diffusion.save_pretrained(directory / DIFFUSION_FOLDER)
        self.decoder.save_pretrained(directory / DECODER_FOLDER)
        return directory

    @property
    def device(self) -> torch.device:
        """The device the models run on."""
        return self.encoder.device

    @property
    def default_resolution(self) -> int:
        """The mesh resolution used when a call gives none: `resolution` on a GPU, `cpu_resolution` on a CPU."""
        return self.defaults.resolution if self.device.type == "cuda" else self.defaults.cpu_resolution

    def __call__(
        self,
        image: ImageSource,
        seed: int | None = None,
        steps: int | None = None,
        resolution: int | None = None,
        guidance_scale: float | None = None,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        samples: int | None = None,
    ) -> Reconstruction:
        """Reconstruct the head in `image` (a PIL image, a file path, bytes or an RGB array).

        `seed=None` draws a random seed (reported in the result); the other settings default to
        `self.defaults`. `allow_no_face=True` uses the centre of the image when no face is found
        instead of raising `NoFaceError`. `progress(stage, fraction)` is called as the work
        advances: `stage` is a short sentence (`STAGE_LABELS`), `fraction` the part of the whole
        call done, in 0..1. `samples` diffusion samples of the latent are averaged into the head
        (one: a single sample, with the variation the photo leaves open).
        """
        settings = self._settings(seed, steps, resolution, guidance_scale, samples)
        tracker = _Progress(progress, ["crop", "encode", "diffusion", "extraction", "colour"])
        timer = _Timer()
        crop = self._crop(image, allow_no_face, timer, tracker)
        with torch.inference_mode():
            z_cond = self._encode(crop, timer, tracker)
            latents = self._sample(z_cond, settings, timer, tracker)
            mesh = self._decode(latents, settings["resolution"], timer, tracker)
        warnings = list(crop.warnings)
        return Reconstruction(mesh, crop, _usable_copy(latents), settings["seed"], timer.summary(), warnings)

    def transfer_expression(
        self,
        identity_image: ImageSource,
        expression: ImageSource | torch.Tensor,
        seed: int | None = None,
        steps: int | None = None,
        resolution: int | None = None,
        guidance_scale: float | None = None,
        allow_no_face: bool = False,
        progress: ProgressCallback | None = None,
        samples: int | None = None,
    ) -> Reconstruction:
        """The head of `identity_image` (its z_geo, z_app) wearing the expression of `expression`.

        `expression` is a second photo, whose z_exp is sampled with the same seed, or a z_exp
        tensor ([100] or [1, 100], e.g. `Reconstruction.latents.z_exp`). With the same seed the
        identity is exactly the one `__call__` gives for `identity_image`.
        """
        settings = self._settings(seed, steps, resolution, guidance_scale, samples)
        from_photo = not isinstance(expression, torch.Tensor)
        given_z_exp = None if from_photo else _checked_expression_code(expression, self.decoder.config.lat_dim_exp)
        sampling = ["crop", "encode", "diffusion"]
        if from_photo:  # both crops first, so a bad second photo fails before any model work
            sampling = ["crop", "crop", "encode", "diffusion", "encode", "diffusion"]
        tracker = _Progress(progress, sampling + ["extraction", "colour"])
        timer = _Timer()
        crop = self._crop(identity_image, allow_no_face, timer, tracker)
        expression_crop = self._crop(expression, allow_no_face, timer, tracker) if from_photo else None
        with torch.inference_mode():
            identity = self._sample(self._encode(crop, timer, tracker), settings, timer, tracker)
            if expression_crop is not None:
                given_z_exp = self._sample(
                    self._encode(expression_crop, timer, tracker), settings, timer, tracker
                ).z_exp
            latents = HeadLatents(identity.z_geo, given_z_exp, identity.z_app)
            mesh = self._decode(latents, settings["resolution"], timer, tracker)
        warnings = list(crop.warnings)
        if expression_crop is not None:
            warnings += [f"Expression photo: {warning}" for warning in expression_crop.warnings]
        latents = _usable_copy(latents)
        return Reconstruction(mesh, crop, latents, settings["seed"], timer.summary(), warnings, expression_crop)

    # -- stages -------------------------------------------------------------------------------

    def _settings(
        self,
        seed: int | None,
        steps: int | None,
        resolution: int | None,
        guidance_scale: float | None,
        samples: int | None,
    ) -> dict[str, Any]:
        """Fill in defaults and refuse values that cannot work, with a sentence saying why."""
        seed = secrets.randbelow(MAX_SEED + 1) if seed is None else seed
        steps = self.defaults.steps if steps is None else steps
        resolution = self.default_resolution if resolution is None else resolution
        guidance_scale = self.defaults.guidance_scale if guidance_scale is None else guidance_scale
        samples = self.defaults.samples if samples is None else samples
        if not _is_int(seed) or not 0 <= seed <= MAX_SEED:
            raise ValueError(f"The seed must be a whole number from 0 to {MAX_SEED}; got {seed!r}.")
        max_steps = self.diffusion.max_sampling_steps
        if not _is_int(steps) or not 1 <= steps <= max_steps:
            raise ValueError(
                f"The number of diffusion steps must be a whole number from 1 to {max_steps}; got {steps!r}."
            )
        low, high = RESOLUTION_RANGE
        if not _is_int(resolution) or not low <= resolution <= high:
            raise ValueError(f"The mesh resolution must be a whole number from {low} to {high}; got {resolution!r}.")
        if isinstance(guidance_scale, bool) or not isinstance(guidance_scale, (int, float)) or not guidance_scale >= 0:
            raise ValueError(f"The guidance scale must be a number of at least 0; got {guidance_scale!r}.")
        if not _is_int(samples) or not 1 <= samples <= MAX_SAMPLES:
            raise ValueError(
                f"The number of samples averaged must be a whole number from 1 to {MAX_SAMPLES}; got {samples!r}."
            )
        return {
            "seed": int(seed),
            "steps": int(steps),
            "resolution": int(resolution),
            "guidance_scale": float(guidance_scale),
            "samples": int(samples),
        }

    def _crop(self, image: ImageSource, allow_no_face: bool, timer: _Timer, tracker: _Progress) -> FaceCrop:
        tracker.report(0.0)
        with timer.stage("crop"):
            crop = crop_face(image, allow_no_face=allow_no_face)
        tracker.next()
        return crop

    def _encode(self, crop: FaceCrop, timer: _Timer, tracker: _Progress) -> torch.Tensor:
        tracker.report(0.0)
        with timer.stage("encode"):
            z_cond = self.encoder.encode([crop.image])
        tracker.next()
        return z_cond

    def _sample(self, z_cond: torch.Tensor, settings: dict[str, Any], timer: _Timer, tracker: _Progress) -> HeadLatents:
        tracker.report(0.0)
        with timer.stage("diffusion"):
            flat = self.diffusion.sample(
                z_cond,
                num_steps=settings["steps"],
                seed=settings["seed"],
                guidance_scale=settings["guidance_scale"],
                average_of=settings["samples"],
                scheduler=self.defaults.scheduler,
                progress=lambda step, total: tracker.report(step / total),
            )
        tracker.next()
        z_geo, z_exp, z_app = (part[0].float().cpu() for part in unpack(flat))
        return HeadLatents(z_geo, z_exp, z_app)

    def _decode(self, latents: HeadLatents, resolution: int, timer: _Timer, tracker: _Progress) -> trimesh.Trimesh:
        tracker.report(0.0)
        codes = (latents.z_geo, latents.z_exp, latents.z_app)
        head = self.decoder.bind(*(code[None].to(self.device) for code in codes))
        extraction = extract_mesh_with_stats(
            head.point_sdf,
            resolution=resolution,
            color_fn=head.point_colour,
            device=self.device,
        )
        timer.add("extraction", extraction.seconds_sdf + extraction.seconds_mcubes)
        tracker.next()
        timer.add("colour", extraction.seconds_color)
        tracker.next()
        return extraction.mesh


def _usable_copy(latents: HeadLatents) -> HeadLatents:
    """Copies made outside inference mode, so callers may optimise or differentiate through them."""
    return HeadLatents(latents.z_geo.clone(), latents.z_exp.clone(), latents.z_app.clone())


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _checked_expression_code(z_exp: torch.Tensor, size: int) -> torch.Tensor:
    """A z_exp given by the caller ([size] or [1, size]), as a CPU float vector like the sampled ones."""
    code = z_exp[0] if z_exp.dim() == 2 and z_exp.shape[0] == 1 else z_exp
    if code.shape != (size,):
        raise ValueError(f"An expression code must be a tensor of {size} values; got shape {tuple(z_exp.shape)}.")
    if not torch.isfinite(code).all():
        raise ValueError("The expression code holds NaN or infinite values.")
    return code.detach().float().cpu()


def _load_defaults(path: Path) -> PipelineDefaults:
    """Read pipeline.json (missing file: the built-in defaults; unknown keys are ignored)."""
    if not path.is_file():
        return PipelineDefaults()
    raw = json.loads(path.read_text())
    known = {f.name for f in fields(PipelineDefaults)}
    return PipelineDefaults(**{key: value for key, value in raw.items() if key in known})
