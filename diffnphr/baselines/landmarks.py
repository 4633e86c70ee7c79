"""Landmark baseline: a ridge model from MediaPipe Face Mesh landmarks to the MonoNPHM latent.

The evaluation's answer to "does the image encoder see more than the landmarks do?". Face Mesh
points (478, x and y in crop pixels) are normalised by 2D similarity Procrustes to the training
mean shape (translation, rotation and scale removed, no reflection; `landmark_signal.md` found
MediaPipe's z adds nothing), standardised, and mapped linearly to the normalised latent, with the
ridge penalty chosen by K-fold cross-validation. MediaPipe runs on the CPU machine only, so the
predictions for the evaluation renders are stored in a small file (`save_landmark_predictions`)
that `eval reconstruction` reads on the GPU machine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

DEFAULT_ALPHAS = tuple(10.0**k for k in range(-2, 6))
PROCRUSTES_ITERATIONS = 10


def align_shapes(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Shapes (N, P, 2) moved by the 2D similarity (no reflection) that best fits each to `reference` (P, 2).

    Least squares over translation, rotation and scale: with points as complex numbers and both
    centred, the best similarity is one complex factor, (x^H y) / (x^H x). Any similarity applied
    to a shape beforehand is undone exactly, which is what makes the features pose-free.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 3 or points.shape[2] != 2 or points.shape[1:] != np.shape(reference):
        raise ValueError(f"shapes must be (N, P, 2) matching the reference {np.shape(reference)}; got {points.shape}")
    z = points[..., 0] + 1j * points[..., 1]
    z = z - z.mean(axis=1, keepdims=True)
    target = np.asarray(reference, np.float64) @ np.array([1.0, 1j])
    target = target - target.mean()
    norms = (np.abs(z) ** 2).sum(axis=1)
    if (norms <= 1e-12).any():
        raise ValueError("a landmark shape has all its points in one place, so it cannot be aligned")
    factor = (np.conj(z) * target).sum(axis=1) / norms
    aligned = factor[:, None] * z
    return np.stack([aligned.real, aligned.imag], axis=-1)


def mean_shape(points: np.ndarray, iterations: int = PROCRUSTES_ITERATIONS) -> np.ndarray:
    """Generalised Procrustes mean (P, 2) of shapes (N, P, 2): centred, unit norm, upright like the first shape."""
    points = np.asarray(points, np.float64)
    reference = _unit_shape(points[0])
    for _ in range(iterations):
        reference = _unit_shape(align_shapes(points, reference).mean(axis=0))
    return reference


def landmark_features(points: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Flat pose-free features (N, 2P): `align_shapes` to the training mean shape `reference`."""
    return align_shapes(points, reference).reshape(len(points), -1)


def _unit_shape(shape: np.ndarray) -> np.ndarray:
    centred = shape - shape.mean(axis=0)
    return centred / np.linalg.norm(centred)


@dataclass(frozen=True)
class RidgeModel:
    """Standardised features -> targets, linear: `predict(x) = ((x - mean) / std) @ weights + bias`."""

    feature_mean: np.ndarray
    feature_std: np.ndarray
    weights: np.ndarray
    bias: np.ndarray
    alpha: float
    cv_errors: dict[float, float]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Targets (N, T) for features (N, F)."""
        return ((features - self.feature_mean) / self.feature_std) @ self.weights + self.bias


def fit_ridge(
    features: np.ndarray, targets: np.ndarray, alphas: Sequence[float] = DEFAULT_ALPHAS, folds: int = 5, seed: int = 0
) -> RidgeModel:
    """Ridge regression with the penalty picked by `folds`-fold CV (mean squared error over all targets).

    Features are standardised with the training statistics; the bias is the targets' mean. One
    SVD per fold serves every alpha. `cv_errors` maps each alpha to its CV error.
    """
    features, targets = np.asarray(features, np.float64), np.asarray(targets, np.float64)
    if features.ndim != 2 or targets.ndim != 2 or len(features) != len(targets):
        raise ValueError(
            f"features (N, F) and targets (N, T) must have the same N; got {features.shape}, {targets.shape}"
        )
    if len(features) < 2 * folds or folds < 2:
        raise ValueError(
            f"ridge CV needs at least 2 folds and 2 examples per fold; got {len(features)} examples, {folds} folds"
        )
    if not alphas or min(alphas) <= 0:
        raise ValueError(f"ridge penalties must be positive; got {tuple(alphas)}")
    order = np.random.default_rng(seed).permutation(len(features))
    errors = {float(alpha): 0.0 for alpha in alphas}
    for fold in np.array_split(order, folds):
        train = np.setdiff1d(order, fold)
        solver = _RidgeSolver(features[train], targets[train])
        for alpha in alphas:
            residual = solver.predict(features[fold], alpha) - targets[fold]
            errors[float(alpha)] += float((residual**2).sum()) / targets.size
    best = min(errors, key=errors.get)
    solver = _RidgeSolver(features, targets)
    return RidgeModel(solver.mean, solver.std, solver.weights(best), solver.bias, best, errors)


class _RidgeSolver:
    """The SVD of standardised features, from which the ridge solution for any alpha is cheap."""

    def __init__(self, features: np.ndarray, targets: np.ndarray) -> None:
        self.mean = features.mean(axis=0)
        self.std = np.maximum(features.std(axis=0), 1e-8)
        self.bias = targets.mean(axis=0)
        u, self.singular, self.vt = np.linalg.svd((features - self.mean) / self.std, full_matrices=False)
        self.projected = u.T @ (targets - self.bias)

    def weights(self, alpha: float) -> np.ndarray:
        shrink = self.singular / (self.singular**2 + alpha)
        return self.vt.T @ (shrink[:, None] * self.projected)

    def predict(self, features: np.ndarray, alpha: float) -> np.ndarray:
        shrink = self.singular / (self.singular**2 + alpha)
        rotated = ((features - self.mean) / self.std) @ self.vt.T
        return (rotated * shrink) @ self.projected + self.bias


def face_mesh_landmarks(frames: Tensor) -> np.ndarray:
    """Face Mesh's 478 points (B, 478, 2) of each frame (B, 3, H, W) in [0, 1]; NaN where no face was traced.

    Goes through `diffnphr.face.crop_face`, the app's own detection and crop, so the baseline sees
    what the app sees; the points are in crop pixels, a similarity of the frame's, which the
    Procrustes step removes.
    """
    from diffnphr.face import NoFaceError, crop_face

    pixels = (frames.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    found = np.full((len(pixels), 478, 2), np.nan)
    for index, image in enumerate(pixels):
        try:
            crop = crop_face(image)
        except NoFaceError:
            continue
        if crop.landmarks is not None:
            found[index] = crop.landmarks
    return found


def save_landmark_predictions(
    path: str | os.PathLike, latents: Tensor, detected: Tensor, fingerprint: str, details: dict
) -> Path:
    """Write the evaluation renders' predicted latents (fp16), which were detected, the eval-set fingerprint and `details`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(
        {
            "latents": latents.detach().to(torch.float16).contiguous().cpu(),
            "detected": detected.to(torch.uint8).contiguous().cpu(),
        },
        str(path),
        metadata={"fingerprint": fingerprint, "details": json.dumps(details)},
    )
    return path


def load_landmark_predictions(path: str | os.PathLike, fingerprint: str) -> tuple[Tensor, Tensor, dict]:
    """Latents (N, 4456) float32, detected (N,) bool and details of a `save_landmark_predictions` file.

    Raises ValueError when the file was made for another evaluation set (its fingerprint differs).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"There is no landmark prediction file at {path}; make it with `python -m diffnphr eval landmarks`."
        )
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{path} holds landmark predictions for another evaluation set "
                f"(fingerprint {metadata.get('fingerprint')}, expected {fingerprint}); remake it."
            )
        latents, detected = handle.get_tensor("latents").float(), handle.get_tensor("detected").bool()
    return latents, detected, json.loads(metadata.get("details", "{}"))
