"""The `pipeline_*` rows: one whole reconstruction through the pipeline's own public stages.

They use the repo's `weights/` when it holds all three blocks; otherwise the trained decoder
with a randomly initialised encoder (`weights/encoder/config.json`, else the project's small
FaRL-layout tower) and diffusion model (`DiffusionConfig()`): their speed depends on shapes only,
but their latent is no head, so the decoder then meshes its first training head instead
(`weights` in the row says which).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from diffnphr.bench.common import face_photo, synchronize

# The image encoder the project trains when `weights/encoder/` does not exist yet (issue 5).
_SMALL_ENCODER = dict(
    hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, image_size=128, patch_size=16
)


def bench_pipeline_models(device: torch.device) -> tuple[Any, str]:
    """The pipeline of the repo's weights, with random stand-ins for missing blocks, and which it is."""
    from transformers import CLIPVisionConfig

    from diffnphr.diffusion.config import DiffusionConfig
    from diffnphr.diffusion.model import LatentDiffusion
    from diffnphr.encoders.farl import FaceEncoder, farl_vision_config
    from diffnphr.nphm.decoder import MonoNPHM
    from diffnphr.pipeline import REPO_WEIGHTS_DIR, HeadReconstructionPipeline

    folders = [REPO_WEIGHTS_DIR / name for name in ("encoder", "diffusion", "decoder")]
    if all(folder.is_dir() for folder in folders):
        return HeadReconstructionPipeline.from_pretrained(REPO_WEIGHTS_DIR, device=device), "trained"
    if (folders[0] / "config.json").is_file():
        config = CLIPVisionConfig.from_pretrained(folders[0])
    else:
        config = farl_vision_config(**_SMALL_ENCODER)
    pipeline = HeadReconstructionPipeline(
        FaceEncoder.from_config(config).to(device),
        LatentDiffusion(DiffusionConfig()).to(device),
        MonoNPHM.from_pretrained(folders[2], device=device),
    )
    return pipeline, "trained decoder, random encoder and diffusion"


def bench_pipeline(device: torch.device, quick: bool, resolution: int | None) -> dict[str, Any]:
    """Seconds per stage of a reconstruction, through the pipeline's own public stages (crop, encode,
    sample_latents, decode + mesh): after a warm-up call, the timed call with the median total of 3 (1 when
    quick): a shared machine's speed drifts from call to call and over minutes, so one call is not a figure
    to quote."""
    from diffnphr.heads.latents import CODEBOOKS_NAME, load_head_latents
    from diffnphr.nphm.latents import HeadLatents, unpack
    from diffnphr.pipeline import REPO_WEIGHTS_DIR

    pipeline, weights = bench_pipeline_models(device)
    settings = pipeline.settings(seed=0, resolution=resolution or pipeline.defaults.resolution)
    photo, crop_note = face_photo()
    stand_in = None
    if weights != "trained":  # a random diffusion model samples no head: mesh a training head instead
        flat = load_head_latents(REPO_WEIGHTS_DIR / "decoder_latents", CODEBOOKS_NAME).flat()[0]
        stand_in = HeadLatents(*unpack(flat))

    def reconstruct() -> dict[str, Any]:
        seconds: dict[str, float] = {}

        def timed(stage: str, work: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            value = work()
            synchronize(device)
            seconds[stage] = time.perf_counter() - start
            return value

        if crop_note is None:
            crop = timed("crop", lambda: pipeline.crop(photo))
        else:
            crop = _UncroppedPhoto(photo)
        z_cond = timed("encode", lambda: pipeline.encode(crop))
        latents = timed("diffusion", lambda: pipeline.sample_latents(z_cond, settings))
        extraction = pipeline.mesh(pipeline.decode(stand_in or latents), settings.resolution)
        seconds["extraction"] = extraction.seconds_sdf + extraction.seconds_mcubes
        seconds["colour"] = extraction.seconds_color
        seconds = {name: round(value, 3) for name, value in seconds.items()}
        seconds["total"] = round(sum(seconds.values()), 3)
        return {
            "seconds": seconds,
            "extraction_sdf_s": round(extraction.seconds_sdf, 3),
            "extraction_mcubes_s": round(extraction.seconds_mcubes, 3),
            "sdf_queries": extraction.num_sdf_queries,
            "vertices": len(extraction.mesh.vertices),
        }

    first = reconstruct()
    calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call["seconds"]["total"])
    row = calls[len(calls) // 2]
    return {
        "weights": weights,
        "resolution": settings.resolution,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "samples": settings.samples,
        **row,
        "timed_totals": [call["seconds"]["total"] for call in calls],
        "first_call_total": first["seconds"]["total"],
        **({"crop": crop_note} if crop_note else {}),
    }


@dataclass
class _UncroppedPhoto:
    """A photo handed to the encoder as it is, where MediaPipe is missing (the crop is then not timed)."""

    image: Any
