"""The refinement stage: a sampled head and its photo's Face Mesh landmarks in, the head with the photo's
expression out.

`Refiner.refine` inverts the factor map at the sampled latent (`inversion`: the head's ICT identity
and expression), fits ICT's model at Face Mesh's points to the crop's 478 landmarks from there
(`fit`), and moves z_exp by the factor map's change between the starting and the fitted
expression; z_geo and z_app are kept. A crop without landmarks (a centre crop, or Face Mesh
found nothing) is passed through with a warning, never an error. `Refiner.with_expression` is
the same last step for expression weights a person chose (the app's sliders).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffnphr.nphm.factor_map import FactorMap
from diffnphr.nphm.latents import HeadLatents
from diffnphr.refine.fit import FitSettings, fit_landmarks
from diffnphr.refine.inversion import InversionSettings, invert_expression, invert_identity
from diffnphr.refine.landmark_model import DEFAULT_MODEL_FILE, LandmarkModel

if TYPE_CHECKING:
    from diffnphr.face.crop import FaceCrop

logger = logging.getLogger(__name__)

FACTOR_MAP_FOLDER = "factor_map"
EXPRESSION_CONTROLS: dict[str, tuple[str, ...]] = {
    "jaw_open": ("jawOpen",),
    "smile": ("mouthSmile_L", "mouthSmile_R"),
    "blink": ("eyeBlink_L", "eyeBlink_R"),
    "pucker": ("mouthPucker",),
    "brows_up": ("browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R"),
}
"""The few expressions a person sets by hand (the app's sliders), each the ICT weights it drives together."""
NO_LANDMARKS_WARNING = (
    "The facial landmarks could not be traced in this photo, so the head was not refined to them "
    "(its expression is the model's guess)."
)


@dataclass(frozen=True)
class RefineSettings:
    """The refinement's two steps' settings."""

    fit: FitSettings = field(default_factory=FitSettings)
    inversion: InversionSettings = field(default_factory=InversionSettings)


@dataclass(frozen=True)
class Refinement:
    """One refinement's outcome: the refined latents, the ICT expression weights (E,) it started from and ended
    at, the mean landmark distances (px of the crop) before and after, its seconds, and a warning when it was
    skipped (then `latents` are the given ones and the distances None)."""

    latents: HeadLatents
    start_expression: Tensor | None
    expression: Tensor | None
    start_error_px: float | None
    error_px: float | None
    seconds: float
    warning: str | None = None


@contextmanager
def single_thread() -> Iterator[None]:
    """Torch on one thread meanwhile: the fit's hundreds of tiny steps ran 0.1 s on one thread and 5-10 s on two
    of the 2-core CPU under load (thread hand-offs cost more than the work)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def control_weights(**values: float) -> dict[str, float]:
    """The ICT expression weights of the `EXPRESSION_CONTROLS` given by name (e.g. `smile=0.6`), each in [0, 1]."""
    unknown = sorted(set(values) - set(EXPRESSION_CONTROLS))
    if unknown:
        raise ValueError(f"Unknown expression control {', '.join(unknown)}; known: {', '.join(EXPRESSION_CONTROLS)}.")
    return {name: float(value) for control, value in values.items() for name in EXPRESSION_CONTROLS[control]}


class Refiner:
    """Fits sampled heads to their photos' landmarks (module docstring); build once per pipeline."""

    def __init__(
        self, factor_map: FactorMap, model: LandmarkModel | None = None, settings: RefineSettings | None = None
    ) -> None:
        self.factor_map = factor_map.cpu().eval().requires_grad_(False)
        self.model = model or LandmarkModel.load()
        self.settings = settings or RefineSettings()
        if self.factor_map.config.expression_dim != len(self.model.expression_names):
            raise ValueError(
                f"the factor map reads {self.factor_map.config.expression_dim} expression weights, "
                f"the landmark model has {len(self.model.expression_names)}"
            )

    @classmethod
    def from_weights(
        cls, root: str | os.PathLike, model_file: str | os.PathLike = DEFAULT_MODEL_FILE
    ) -> Refiner | None:
        """The refiner of a pipeline weights folder: its `factor_map/` with the landmark model, or None when the
        folder has no factor map (refinement is then unavailable, and said so)."""
        folder = Path(root) / FACTOR_MAP_FOLDER
        if not folder.is_dir():
            logger.info("no %s in %s: refinement to the photo's landmarks is unavailable", FACTOR_MAP_FOLDER, root)
            return None
        return cls(FactorMap.from_pretrained(folder, device="cpu"), LandmarkModel.load(model_file))

    @property
    def expression_names(self) -> tuple[str, ...]:
        """The ICT expression weights' names, in the factor map's order."""
        return self.model.expression_names

    def head_expression(self, latents: HeadLatents) -> Tensor:
        """The ICT expression weights (E,) a head's z_exp stands for (`inversion.invert_expression`)."""
        with torch.inference_mode(False), single_thread():
            return invert_expression(self.factor_map, latents.z_exp.clone().cpu(), self.settings.inversion)

    def refine(self, latents: HeadLatents, crop: FaceCrop) -> Refinement:
        """The head of `latents` with the expression of the photo `crop` was cut from (module docstring)."""
        start = time.perf_counter()
        if crop.landmarks is None:
            return Refinement(latents, None, None, None, None, time.perf_counter() - start, NO_LANDMARKS_WARNING)
        with torch.inference_mode(False), single_thread():
            z_geo, z_exp = latents.z_geo.clone().cpu(), latents.z_exp.clone().cpu()
            identity = invert_identity(
                self.factor_map, z_geo, self.model.identity_modes.shape[0], self.settings.inversion
            )
            start_expression = invert_expression(self.factor_map, z_exp, self.settings.inversion)
            fit = fit_landmarks(
                self.model,
                torch.as_tensor(crop.landmarks),
                identity,
                start_expression,
                self.settings.fit,
                image_size=float(crop.image.width),
            )
            refined = self._moved(latents, z_exp, start_expression, fit.expression)
        seconds = time.perf_counter() - start
        logger.info("refined to the landmarks in %.2f s: %.2f -> %.2f px", seconds, fit.start_error_px, fit.error_px)
        return Refinement(refined, start_expression, fit.expression, fit.start_error_px, fit.error_px, seconds)

    def with_expression(self, latents: HeadLatents, weights: dict[str, float]) -> HeadLatents:
        """The same head with the named ICT expression weights (each in [0, 1]) set, the others as the head has
        them: z_exp moved by the factor map's change between the two expressions."""
        unknown = sorted(set(weights) - set(self.expression_names))
        if unknown:
            raise ValueError(f"Unknown expression {', '.join(unknown)}; known: {', '.join(self.expression_names)}.")
        bad = [name for name, value in weights.items() if not 0.0 <= float(value) <= 1.0]
        if bad:
            raise ValueError(f"Expression values must lie from 0 to 1; {', '.join(bad)} do not.")
        with torch.inference_mode(False), single_thread():
            z_exp = latents.z_exp.clone().cpu()
            start = invert_expression(self.factor_map, z_exp, self.settings.inversion)
            target = start.clone()
            for name, value in weights.items():
                target[self.expression_names.index(name)] = float(value)
            return self._moved(latents, z_exp, start, target)

    def _moved(self, latents: HeadLatents, z_exp: Tensor, start: Tensor, target: Tensor) -> HeadLatents:
        with torch.no_grad():
            change = self.factor_map.expression(target[None]) - self.factor_map.expression(start[None])
        moved = (z_exp + change[0]).to(latents.z_exp.device, latents.z_exp.dtype)
        return HeadLatents(latents.z_geo.clone(), moved, latents.z_app.clone())
