"""Where MediaPipe Face Mesh's 478 points lie on the ICT head: built from renders, written for `diffnphr.refine`.

`python -m diffnphr eval correspondence` renders neutral ICT heads with short hair or none (random identities,
poses within ±25° yaw, ±10° pitch, ±8° roll, the training renderer's lights and skins), traces Face
Mesh on each frame through the app's own crop (`face.crop_face`), and back-projects every point
through the rasterised head: the triangle under it and the point's barycentric position in the
projected triangle. That gives, per render, a point on that head's surface, carried to the mean
head by the same (triangle, barycentric). The median of those points over the renders, snapped
to the nearest point of the mean head's surface, is the landmark's correspondence. It absorbs
Face Mesh's average bias on these heads (a landmark whose traced position sits a little inside
the lip line gets that place), which is what the fit needs: the model's projected points are
then what Face Mesh would report for the model's head.

The written file (`refine.landmark_model.LandmarkModel`) holds the ICT model restricted to those
478 points (neutral, identity and expression modes, float32; ICT-FaceKit is MIT-licensed, the
note travels in the file), so the app needs no ICT archive at run time.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffnphr.refine.landmark_model import LANDMARK_COUNT, LandmarkModel

if TYPE_CHECKING:
    from torch import Tensor

    from diffnphr.data.ict import ICTFaceModel

logger = logging.getLogger(__name__)

CORRESPONDENCE_SEED = 2_800_000_000
CALIBRATED = (
    "jawOpen", "mouthSmile_L", "mouthSmile_R", "eyeBlink_L", "eyeBlink_R", "mouthPucker", "mouthFunnel",
    "browInnerUp_L", "browInnerUp_R", "browOuterUp_L", "browOuterUp_R", "browDown_L", "browDown_R",
    "eyeWide_L", "eyeWide_R", "eyeSquint_L", "eyeSquint_R", "mouthClose",
)  # fmt: skip
"""The expressions whose Face Mesh gain is measured (the others keep a gain of 1)."""
GAIN_WEIGHT = 0.8
SHORT_HAIR = ("bald", "buzz", "short")
"""The hair styles of the renders: nothing over the face that Face Mesh would trace instead of the skin."""
ICT_LICENCE_NOTE = (
    "Derived from ICT-FaceKit (https://github.com/ICT-VGL/ICT-FaceKit), Copyright (c) 2020 University of "
    "Southern California Institute for Creative Technologies, MIT License: the neutral head, identity and "
    "expression modes of ICT-FaceKit Light sampled at 478 surface points (barycentric in its triangles)."
)


@dataclass(frozen=True)
class CorrespondenceReport:
    """What `build_correspondence` did: renders traced, how far each render's points lie from the chosen ones,
    and the measured gain of every calibrated expression (Face Mesh's landmark motion over the model's)."""

    renders: int
    traced: int
    median_spread_mm: float  # median over landmarks of the median distance of per-render points to the chosen one
    p90_spread_mm: float
    gains: dict[str, float]
    seconds: float


class _Heads:
    """Seeded heads with short hair (or none) on the correspondence's renderer, rendered and traced by rows."""

    def __init__(self, model: ICTFaceModel, count: int, seed: int) -> None:
        from diffnphr.data.appearance import appearance_params
        from diffnphr.data.hair_styles import HAIR_KINDS, sample_hair_styles
        from diffnphr.data.renders import HeadRenderer
        from diffnphr.data.scenes import RenderConfig

        config = RenderConfig(yaw_deg=25.0, pitch_deg=10.0, roll_deg=8.0, head_fraction=(0.55, 0.8), augment=None)
        self.model, self.renderer, self.seed = model, HeadRenderer(model, "cpu", config), seed
        rng = np.random.default_rng(seed)
        self.identity = torch.as_tensor(
            rng.standard_normal((count, model.identity_modes.shape[0])), dtype=torch.float32
        )
        self.appearance = appearance_params(rng.integers(0, 2**62, count).tolist())
        pool = sample_hair_styles(8 * count, torch.Generator().manual_seed(seed))
        short = torch.isin(pool.kind, torch.tensor([HAIR_KINDS.index(k) for k in SHORT_HAIR]))
        self.hair = pool.select(torch.nonzero(short).squeeze(1)[:count])

    def render(self, heads: Tensor, expression: Tensor, seed: int, frame_size: int):
        """Frames, head projections (frame pixels), inverse depths and triangles of heads (rows) in one pose each
        drawn from `seed` (the same rows and seed give the same poses whatever the expression)."""
        scenes = self.renderer.sample_scenes(
            self.identity[heads], expression, self.appearance.select(heads), seed, self.hair.select(heads)
        )
        frames = self.renderer.render_frames(scenes, frame_size)
        points, inverse_depth, faces = self.renderer.head_projection(scenes)
        return frames, points * frame_size, inverse_depth, faces


def build_correspondence(
    out_file: str | os.PathLike,
    *,
    renders: int = 48,
    gain_heads: int = 4,
    frame_size: int = 512,
    ict_path: str | os.PathLike | None = None,
) -> CorrespondenceReport:
    """Build the Face Mesh -> ICT correspondence from `renders` renders (module docstring), measure the gains of
    `CALIBRATED` on `gain_heads` heads (`_expression_gains`) and write the landmark model."""
    import time

    from diffnphr.data.ict import load_ict
    from diffnphr.frame import MM_PER_UNIT
    from diffnphr.render import rasterise

    start = time.perf_counter()
    model = load_ict(ict_path)
    heads = _Heads(model, renders, CORRESPONDENCE_SEED)
    neutral = torch.as_tensor(model.neutral)
    samples = np.full((renders, LANDMARK_COUNT, 3), np.nan)
    for first in range(0, renders, 4):
        rows = torch.arange(first, min(first + 4, renders))
        expression = torch.zeros(len(rows), len(model.expression_names))
        frames, screen, inverse_depth, faces = heads.render(rows, expression, CORRESPONDENCE_SEED + first, frame_size)
        triangles, _ = rasterise(screen, inverse_depth, faces, frame_size)
        for offset, frame in enumerate(frames):
            traced = _traced_points(frame)
            if traced is not None:
                samples[first + offset] = _back_project(
                    traced, screen[offset], triangles[offset], faces, neutral, frame_size
                )
        logger.info("correspondence: %d/%d renders traced", min(first + 4, renders), renders)
    traced_renders = int(np.isfinite(samples[:, 0, 0]).sum())
    if traced_renders == 0:
        raise ValueError("Face Mesh traced none of the renders, so no correspondence can be built")
    chosen = np.nanmedian(samples, axis=0)
    spread = np.nanmedian(np.linalg.norm(samples - chosen, axis=2), axis=0) * MM_PER_UNIT
    vertex_ids, weights = _on_surface(chosen, model.neutral, faces.numpy())
    landmark_model = sampled_model(model, vertex_ids, weights)
    gains = _expression_gains(heads, landmark_model, gain_heads, frame_size)
    landmark_model = landmark_model.with_gains(gains)
    landmark_model.save(out_file)
    report = CorrespondenceReport(
        renders,
        traced_renders,
        float(np.median(spread)),
        float(np.percentile(spread, 90)),
        gains,
        time.perf_counter() - start,
    )
    logger.info("correspondence written to %s: %s", Path(out_file), report)
    return report


def sampled_model(model: ICTFaceModel, vertex_ids: np.ndarray, weights: np.ndarray) -> LandmarkModel:
    """The ICT model sampled at barycentric points (`vertex_ids`, `weights`, each (P, 3)), with its licence note."""
    w = torch.as_tensor(weights, dtype=torch.float32)

    def sampled(array: np.ndarray) -> Tensor:
        return (torch.as_tensor(array[..., vertex_ids, :], dtype=torch.float32) * w[..., None]).sum(dim=-2)

    return LandmarkModel(
        sampled(model.neutral),
        sampled(model.identity_modes),
        sampled(model.expression_modes),
        tuple(model.expression_names),
        np.asarray(vertex_ids, np.int64),
        np.asarray(weights, np.float32),
        ICT_LICENCE_NOTE,
    )


def _expression_gains(heads: _Heads, landmark_model: LandmarkModel, count: int, frame_size: int) -> dict[str, float]:
    """Per calibrated expression, how far Face Mesh's points move against how far the model's projected points
    move (least squares over landmarks and heads): each head rendered neutral and with each expression at
    `GAIN_WEIGHT`, in one pose. Face Mesh under-reports some motions (a closed eye stays half open to it), and
    the fit, seeing the model's motion scaled by the gain, then reads the expression's true weight."""
    names = landmark_model.expression_names
    vertex_ids, weights = torch.as_tensor(landmark_model.vertex_ids), torch.as_tensor(landmark_model.weights)
    expression = torch.zeros(len(CALIBRATED) + 1, len(names))
    for row, name in enumerate(CALIBRATED, start=1):
        expression[row, names.index(name)] = GAIN_WEIGHT
    observed_dot, model_dot = torch.zeros(len(CALIBRATED)), torch.zeros(len(CALIBRATED))
    for head in range(count):
        rows = torch.full((len(expression),), head, dtype=torch.long)
        traced, projected = [], []
        for first in range(0, len(expression), 4):
            part = slice(first, first + 4)
            seed = CORRESPONDENCE_SEED + 10_000 + head
            frames, screen, _, _ = heads.render(rows[part], expression[part], seed, frame_size)
            for offset, frame in enumerate(frames):
                found = _traced_points(frame)
                traced.append(None if found is None else torch.as_tensor(found, dtype=torch.float32))
                projected.append((screen[offset][vertex_ids] * weights[..., None]).sum(dim=1))
        if traced[0] is None:
            continue
        for index in range(len(CALIBRATED)):
            if traced[index + 1] is None:
                continue
            seen, modelled = traced[index + 1] - traced[0], projected[index + 1] - projected[0]
            observed_dot[index] += (seen * modelled).sum()
            model_dot[index] += modelled.pow(2).sum()
        logger.info("expression gains: head %d/%d traced", head + 1, count)
    return {
        name: float((observed_dot[i] / model_dot[i]).clamp(0.1, 1.5)) if model_dot[i] > 0 else 1.0
        for i, name in enumerate(CALIBRATED)
    }


def _on_surface(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The nearest surface point of each of `points` (P, 3) on the mesh, as (P, 3) triangle vertices and
    barycentric weights: the triangles round each point's 8 nearest mesh vertices are searched."""
    import trimesh
    from scipy.spatial import cKDTree

    used = np.unique(faces)
    _, near = cKDTree(vertices[used]).query(points, k=8)
    near = used[near]
    incident = [[] for _ in range(len(vertices))]
    for row, face in enumerate(faces):
        for vertex in face:
            incident[vertex].append(row)
    vertex_ids, weights = np.zeros((len(points), 3), np.int64), np.zeros((len(points), 3))
    for index, point in enumerate(points):
        candidates = np.unique([row for vertex in near[index] for row in incident[vertex]])
        corners = vertices[faces[candidates]]
        closest = trimesh.triangles.closest_point(corners, np.repeat(point[None], len(candidates), axis=0))
        best = int(np.argmin(np.linalg.norm(closest - point, axis=1)))
        vertex_ids[index] = faces[candidates[best]]
        found = trimesh.triangles.points_to_barycentric(corners[best : best + 1], closest[best : best + 1])[0]
        weights[index] = found.clip(0, 1) / found.clip(0, 1).sum()
    return vertex_ids, weights


def _traced_points(frame: torch.Tensor) -> np.ndarray | None:
    """Face Mesh's 478 points in frame pixels, through the app's crop, or None when it finds no face."""
    from diffnphr.face import NoFaceError, crop_face

    pixels = (frame.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    try:
        crop = crop_face(pixels)
    except NoFaceError:
        return None
    if crop.landmarks is None:
        return None
    return crop.square.to_image(crop.landmarks, crop.image.width)


def _back_project(
    traced: np.ndarray,
    screen: torch.Tensor,
    triangles: torch.Tensor,
    faces: torch.Tensor,
    neutral: torch.Tensor,
    frame_size: int,
) -> np.ndarray:
    """Each traced point (P, 2) on the mean head (P, 3): the visible triangle under it and its barycentric place
    in that triangle as projected (NaN where no head triangle is under the point)."""
    found = np.full((len(traced), 3), np.nan)
    pixel = np.floor(traced).astype(int)
    inside = (pixel >= 0).all(axis=1) & (pixel < frame_size).all(axis=1)
    for index in np.flatnonzero(inside):
        triangle = int(triangles[pixel[index, 1] * frame_size + pixel[index, 0]])
        if triangle < 0:
            continue
        corners = faces[triangle]
        a, b, c = screen[corners].double().numpy()
        matrix = np.array([b - a, c - a]).T
        if abs(np.linalg.det(matrix)) < 1e-9:
            continue
        u, v = np.linalg.solve(matrix, traced[index] - a)
        weights = np.clip([1 - u - v, u, v], 0, 1)
        found[index] = (weights / weights.sum()) @ neutral[corners].double().numpy()
    return found
