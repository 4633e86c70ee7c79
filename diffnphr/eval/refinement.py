"""`eval refinement`: does fitting to the photo's landmarks bring the head's expression closer to the truth?

Held-out renders (the evaluation set of `eval reconstruction`, `eval_renders`: every held-out
identity's neutral slot and two expressive ones, in order; here as whole 512² frames, like a
photo) go through the pipeline's own stages — crop, encode, diffusion (seed 0) — and then the
refiner with each fit variant. Each head's expression is read in ICT's terms by inverting the
factor map at its z_exp (`Refiner.head_expression`, the same measurement for every arm), and
its expression error is the mean distance, in mm, between its expression displacement
(weights × ICT expression modes) and the true one over the expression-driven region (the ICT
skin vertices some expression moves by at least `REGION_MM`). The displacement is added to the
head's own identity the same way for every arm, so no alignment is needed. Arms: the sample
unrefined, each refined variant, and the always-neutral head (and, as a diagnosis, each variant's
fitted ICT weights themselves, before the factor map carries them into z_exp); raw means with 95 % intervals
and the paired differences to the unrefined head. The landmark reprojection error (mean px in
the 512 crop) of the starting head under its best pose and of the fitted head is reported too,
on the renders and on scikit-image's astronaut photo.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import asdict
from typing import Any

import numpy as np
import torch

from diffnphr.refine.fit import DEFAULT_PRIORS, SMILE_AND_PUCKER, FitSettings

logger = logging.getLogger(__name__)

REGION_MM = 1.0
REFINE_EVAL_SEED = 1_280_000_000
BROWS = ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "browDown_L", "browDown_R")
VARIANTS: dict[str, FitSettings] = {
    "default": FitSettings(),
    "with smile and pucker": FitSettings(priors={**DEFAULT_PRIORS, **SMILE_AND_PUCKER}),
    "with brows": FitSettings(priors={**DEFAULT_PRIORS, **dict.fromkeys(BROWS, 0.2)}),
}
"""The fit variants `eval refinement` compares (the pipeline uses "default")."""


def evaluate_refinement(
    weights: str | os.PathLike,
    latents_dir: str | os.PathLike,
    *,
    count: int = 24,
    frame_size: int = 512,
    variants: dict[str, FitSettings] | None = None,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """The report of the module docstring on the first `count` evaluation renders, for each fit variant."""
    from diffnphr.data.ict import load_ict
    from diffnphr.eval.reconstruction.renders import default_renderer, eval_renders, render_scenes
    from diffnphr.face import NoFaceError
    from diffnphr.frame import MM_PER_UNIT
    from diffnphr.heads.split import load_head_split
    from diffnphr.pipeline import HeadReconstructionPipeline
    from diffnphr.refine.refiner import Refiner, RefineSettings

    variants = variants or VARIANTS
    pipeline = HeadReconstructionPipeline.from_pretrained(weights, device="cpu")
    if pipeline.refiner is None:
        raise ValueError(f"The weights {weights} have no factor_map/, so there is no refinement to measure.")
    refiners = {
        name: Refiner(pipeline.refiner.factor_map, pipeline.refiner.model, RefineSettings(fit=fit))
        for name, fit in variants.items()
    }
    model = load_ict(ict_path)
    split = load_head_split(latents_dir)
    renders = eval_renders(split, split.expressions_per_identity)
    if not 1 <= count <= len(renders):
        raise ValueError(f"count must lie from 1 to {len(renders)}, got {count}")
    renderer = default_renderer(model, torch.device("cpu"), 128, backgrounds)
    modes, region = _expression_region(model, MM_PER_UNIT)
    settings = pipeline.settings(seed=0)
    errors: dict[str, list[float]] = {"unrefined": [], "neutral": [], **{name: [] for name in variants}}
    errors.update({f"{name}: fitted ICT weights": [] for name in variants})
    reprojection: dict[str, list[float]] = {"start": [], **{name: [] for name in variants}}
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    missed, start = 0, time.perf_counter()
    for first in range(0, count, 4):
        rows = torch.arange(first, min(first + 4, count))
        identities, slots = renders.identities[rows], renders.slots[rows]
        scenes = render_scenes(renderer, split, identities, slots, REFINE_EVAL_SEED + first, torch.device("cpu"))
        frames = renderer.render_frames(scenes, frame_size)
        for offset, frame in enumerate(frames):
            pixels = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
            try:
                crop = pipeline.crop(pixels)
            except NoFaceError:
                missed += 1
                continue
            if crop.landmarks is None:
                missed += 1
                continue
            truth = split.expression_weights[identities[offset], slots[offset]].float()
            latents = pipeline.sample_latents(pipeline.encode(crop), settings)
            sampled = pipeline.refiner.head_expression(latents)
            errors["unrefined"].append(_error(sampled, truth, modes, region))
            errors["neutral"].append(_error(torch.zeros_like(truth), truth, modes, region))
            for name, refiner in refiners.items():
                outcome = refiner.refine(latents, crop)
                refined = refiner.head_expression(outcome.latents)
                errors[name].append(_error(refined, truth, modes, region))
                errors[f"{name}: fitted ICT weights"].append(_error(outcome.expression, truth, modes, region))
                reprojection[name].append(outcome.error_px)
                seconds[name].append(outcome.seconds)
            reprojection["start"].append(outcome.start_error_px)
        logger.info(
            "eval refinement: %d/%d renders (%.0f s)", min(first + 4, count), count, time.perf_counter() - start
        )
    if not errors["unrefined"]:
        raise ValueError("Face Mesh traced none of the renders, so nothing was measured")
    return {
        "renders": count,
        "traced": len(errors["unrefined"]),
        "missed": missed,
        "region_vertices": int(region.sum()),
        "expression_error_mm": {name: _interval(values) for name, values in errors.items()},
        "paired_vs_unrefined_mm": {
            name: _paired(values, errors["unrefined"]) for name, values in errors.items() if name != "unrefined"
        },
        "reprojection_px": {name: _interval(values) for name, values in reprojection.items()},
        "refine_seconds": {name: _interval(values) for name, values in seconds.items()},
        "astronaut_reprojection_px": _astronaut(pipeline, refiners),
        "variants": {name: asdict(fit) for name, fit in variants.items()},
        "seconds": round(time.perf_counter() - start, 1),
    }


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    lines = [f"renders {report['renders']}, traced {report['traced']}, expression region {report['region_vertices']}"]
    for name, value in report["expression_error_mm"].items():
        paired = report["paired_vs_unrefined_mm"].get(name)
        extra = (
            ""
            if paired is None
            else f"   paired {paired['mean']:+.3f} ± {paired['ci95']:.3f} ({paired['relative']:+.1%})"
        )
        lines.append(f"expression error {name:>14}: {value['mean']:.3f} ± {value['ci95']:.3f} mm{extra}")
    for name, value in report["reprojection_px"].items():
        lines.append(f"landmark reprojection {name:>14}: {value['mean']:.2f} ± {value['ci95']:.2f} px")
    for name, value in report["refine_seconds"].items():
        lines.append(f"refine seconds {name:>14}: {value['mean']:.2f} ± {value['ci95']:.2f}")
    for name, value in report["astronaut_reprojection_px"].items():
        lines.append(f"astronaut reprojection {name}: {value:.2f} px")
    return "\n".join(lines)


def _expression_region(model, mm_per_unit: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The skin's expression modes (E, V, 3) and the vertices some mode moves by at least `REGION_MM`."""
    skin = np.concatenate([np.arange(*model.part_vertex_range[model.part_names.index(p)]) for p in model.skin_parts])
    modes = torch.as_tensor(model.expression_modes[:, skin])
    region = modes.norm(dim=2).amax(dim=0) * mm_per_unit >= REGION_MM
    return modes[:, region] * mm_per_unit, region


def _error(weights: torch.Tensor, truth: torch.Tensor, modes: torch.Tensor, region: torch.Tensor) -> float:
    """Mean distance (mm) between two expressions' displacements over the region (`modes` already restricted)."""
    return float(torch.einsum("e,evc->vc", weights - truth, modes).norm(dim=1).mean())


def _interval(values: list[float]) -> dict[str, float]:
    array = np.asarray(values, np.float64)
    half = 1.96 * array.std(ddof=1) / math.sqrt(len(array)) if len(array) > 1 else float("nan")
    return {"mean": float(array.mean()), "ci95": float(half), "n": len(array)}


def _paired(values: list[float], baseline: list[float]) -> dict[str, float]:
    difference = np.asarray(values) - np.asarray(baseline)
    summary = _interval(difference.tolist())
    summary["relative"] = float(difference.mean() / np.mean(baseline))
    return summary


def _astronaut(pipeline, refiners) -> dict[str, float]:
    """Landmark reprojection (px) on scikit-image's astronaut (public domain): start, and each variant's fit."""
    from skimage import data

    crop = pipeline.crop(data.astronaut())
    latents = pipeline.sample_latents(pipeline.encode(crop), pipeline.settings(seed=0))
    found: dict[str, float] = {}
    for name, refiner in refiners.items():
        outcome = refiner.refine(latents, crop)
        found["start"] = outcome.start_error_px
        found[name] = outcome.error_px
    return found
