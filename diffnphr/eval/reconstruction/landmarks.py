"""The landmark ridge baseline's CPU phase (`eval landmarks`): Face Mesh on renders, ridge to latents."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.ict import load_ict
from diffnphr.eval.reconstruction.renders import CHUNK, default_renderer, eval_renders, render_scenes
from diffnphr.heads.latents import CODEBOOKS_NAME, FITTED_HELDOUT_NAME, load_head_latents
from diffnphr.heads.split import load_head_split

LANDMARK_TRAIN_SEED = 1_700_000_000
logger = logging.getLogger(__name__)


def build_landmark_predictions(
    latents_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    train_count: int = 1000,
    image_size: int = 128,
    frame_size: int = 256,
    seed: int = 0,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    renderer=None,
    landmarks_fn: Callable[[Tensor], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Fit the landmark ridge baseline and store its predictions for the evaluation renders (CPU: needs MediaPipe).

    Renders full frames (`frame_size`², 256 by default: on a 2-core CPU a 512² frame takes ~3 s, a
    256² one ~0.5 s, and Face Mesh traces both) of `train_count` random training heads (training-like scenes) and of
    the evaluation set's first views (the same scenes `eval reconstruction` crops), traces Face
    Mesh on them (`landmarks_fn`, default `baselines.landmarks.face_mesh_landmarks`), fits ridge
    from the Procrustes-normalised landmarks to the normalised codebook latent, and writes the
    evaluation renders' predictions to `out_file` (`baselines.landmarks.save_landmark_predictions`).
    Returns what it did: counts, detection failures, the chosen alpha and the CV errors.
    """
    from diffnphr.baselines.landmarks import (
        face_mesh_landmarks,
        fit_ridge,
        landmark_features,
        mean_shape,
        save_landmark_predictions,
    )

    landmarks_fn = landmarks_fn or face_mesh_landmarks
    device = torch.device("cpu")
    split = load_head_split(latents_dir)
    fitted = load_head_latents(latents_dir, FITTED_HELDOUT_NAME)
    codebooks = load_head_latents(latents_dir, CODEBOOKS_NAME)
    renders = eval_renders(split, fitted.z_exp.shape[1])
    if renderer is None:
        renderer = default_renderer(load_ict(ict_path), device, image_size, backgrounds)
    flat = codebooks.flat()
    slots = codebooks.z_exp.shape[1]
    if not 10 <= train_count <= len(flat):
        raise ValueError(f"train_count must be between 10 and the {len(flat)} training heads; got {train_count}")
    heads = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(len(flat), train_count, replace=False)))

    def trace(identities: Tensor, head_slots: Tensor, seed_of_chunk: Callable[[int], int], what: str) -> np.ndarray:
        found = []
        for start in range(0, len(identities), CHUNK):
            part = slice(start, start + CHUNK)
            scenes = render_scenes(
                renderer, split, identities[part], head_slots[part], seed_of_chunk(start // CHUNK), device
            )
            found.append(landmarks_fn(renderer.render_frames(scenes, frame_size)))
            logger.info("%s: %d/%d frames traced", what, min(start + CHUNK, len(identities)), len(identities))
        return np.concatenate(found)

    train_points = trace(
        codebooks.identities[heads // slots], heads % slots, lambda c: LANDMARK_TRAIN_SEED + c, "training heads"
    )
    eval_points = trace(renders.identities, renders.slots, lambda c: renders.seed(c, 0), "evaluation renders")
    train_ok = ~np.isnan(train_points).any(axis=(1, 2))
    eval_ok = ~np.isnan(eval_points).any(axis=(1, 2))
    if train_ok.sum() < 20:
        raise ValueError(
            f"Face Mesh traced only {int(train_ok.sum())} of {train_count} training renders; "
            "too few to fit the landmark baseline"
        )
    reference = mean_shape(train_points[train_ok])
    mean, std = flat.mean(dim=0), flat.std(dim=0).clamp_min(1e-4)
    targets = ((flat[heads[torch.as_tensor(train_ok)]] - mean) / std).numpy()
    ridge = fit_ridge(landmark_features(train_points[train_ok], reference), targets, seed=seed)
    predicted = torch.zeros(len(renders), flat.shape[1])
    if eval_ok.any():
        predicted[torch.as_tensor(eval_ok)] = torch.as_tensor(
            ridge.predict(landmark_features(eval_points[eval_ok], reference)), dtype=torch.float32
        )
    latents = mean + std * predicted  # renders without landmarks get the mean latent
    details = {
        "train_heads": train_count,
        "train_failures": int((~train_ok).sum()),
        "eval_renders": len(renders),
        "eval_failures": int((~eval_ok).sum()),
        "alpha": ridge.alpha,
        "cv_mse_normalised": {f"{a:g}": e for a, e in ridge.cv_errors.items()},
    }
    path = save_landmark_predictions(out_file, latents, torch.as_tensor(eval_ok), renders.fingerprint(), details)
    return {"file": str(path), "bytes": path.stat().st_size, **details}
