"""The landmark fit: ICT's linear model at Face Mesh's points, posed under a weak-perspective camera, moved to
the photo's 478 landmarks.

Unknowns: a rotation (axis-angle), a scale and an image translation (the camera; crops are small
enough in depth for weak perspective), the fitted expression weights (a chosen few, in [0, 1];
the others stay at the starting head's) and, when asked, the identity coefficients. The loss is
the mean squared landmark distance in units of `sigma_px`, each landmark weighted (the face oval's
points slide along the cheek as the head turns, so they count less), plus squared pulls of every
fitted value toward the starting head's (per-expression priors). The pose starts from the best
affine camera of the starting head, then pose alone is fitted, then pose and the unknowns
together: Adam with the weights clamped to [0, 1] after each step.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.refine.landmark_model import LandmarkModel

FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176, 149,
    150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)  # fmt: skip
"""Face Mesh's face-oval contour (`mp.solutions.face_mesh.FACEMESH_FACE_OVAL`), in order."""

DEFAULT_PRIORS: dict[str, float] = {"jawOpen": 0.2, "eyeBlink_L": 0.2, "eyeBlink_R": 0.2}
"""The expression weights the fit moves, each with its pull toward the starting head's value. Jaw and blinks only:
fitting the smile too raised the expression error on held-out renders by half, the pucker by 5 % (docs/RESULTS.md,
"Fit to the photo")."""
SMILE_AND_PUCKER = {"mouthSmile_L": 0.2, "mouthSmile_R": 0.2, "mouthPucker": 0.2}


@dataclass(frozen=True)
class FitSettings:
    """What the landmark fit moves and how hard (module docstring)."""

    priors: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_PRIORS))
    fit_identity: bool = False
    identity_prior: float = 1.0  # per N(0, 1) coefficient
    sigma_px: float = 2.0  # landmark noise, in pixels of a 512 crop
    oval_weight: float = 0.3
    pose_steps: int = 60
    steps: int = 150
    learning_rate: float = 0.02

    def __post_init__(self) -> None:
        if not self.priors and not self.fit_identity:
            raise ValueError("FitSettings must fit at least one expression weight or the identity")
        if min(self.priors.values(), default=0.0) < 0 or self.identity_prior < 0:
            raise ValueError("FitSettings priors must be non-negative")
        if not (self.sigma_px > 0 and self.learning_rate > 0 and self.pose_steps >= 0 and self.steps >= 1):
            raise ValueError("FitSettings needs a positive sigma_px and learning rate and at least one step")


@dataclass(frozen=True)
class Pose:
    """A weak-perspective camera: axis-angle rotation (3,), scale (pixels per canonical unit), translation (2,)."""

    rotation: Tensor
    scale: Tensor
    translation: Tensor


@dataclass(frozen=True)
class LandmarkFit:
    """The fit's answer: expression weights (E,), identity (I,), the pose, and the mean landmark distance (px)
    of the starting head under its best pose and of the fitted head."""

    expression: Tensor
    identity: Tensor
    pose: Pose
    start_error_px: float
    error_px: float


def project(points: Tensor, pose: Pose) -> Tensor:
    """(B, P, 2) image points (x right, y down) of canonical points (B, P, 3) under `pose`."""
    rotated = points @ _rotation_matrix(pose.rotation).T
    flipped = torch.stack([rotated[..., 0], -rotated[..., 1]], dim=-1)
    return pose.scale * flipped + pose.translation


def fit_landmarks(
    model: LandmarkModel,
    landmarks: Tensor,
    identity: Tensor,
    expression: Tensor,
    settings: FitSettings | None = None,
    image_size: float = 512.0,
) -> LandmarkFit:
    """Fit `model` to `landmarks` (478, 2) in pixels of an `image_size` crop, starting from (and pulled toward) the
    head of `identity` (I,) and `expression` (E,) weights (module docstring)."""
    settings = settings or FitSettings()
    landmarks = landmarks.detach().float()
    if landmarks.shape != model.neutral[:, :2].shape or not torch.isfinite(landmarks).all():
        raise ValueError(f"landmarks must be finite, of shape {tuple(model.neutral[:, :2].shape)}")
    unit = image_size / 512.0 * settings.sigma_px
    weight = torch.ones(len(landmarks))
    weight[list(FACE_OVAL)] = settings.oval_weight
    weight = weight / weight.sum()
    rows = torch.tensor([model.expression_index(name) for name in settings.priors], dtype=torch.long)
    priors = torch.tensor(list(settings.priors.values()))
    start_identity, start_expression = identity.detach().float(), expression.detach().float()
    with torch.inference_mode(False), torch.enable_grad():
        first = _initial_pose(model.points(start_identity[None], start_expression[None])[0], landmarks)
        # Adam sees the pose in even units: the rotation in radians, the scale as a log, the shift in head units.
        rotation = first.rotation.clone().requires_grad_(True)
        log_scale, shift = torch.zeros(1, requires_grad=True), torch.zeros(2, requires_grad=True)

        def pose() -> Pose:
            return Pose(rotation, first.scale * log_scale.exp(), first.translation + first.scale * shift)

        fitted = start_expression[rows].clone().requires_grad_(True)
        shape = start_identity.clone().requires_grad_(settings.fit_identity)
        # The points are linear in the unknowns: a fixed part plus the fitted weights' modes (and the identity's).
        base = model.points(start_identity[None], start_expression.index_fill(0, rows, 0.0)[None])[0]
        expression_modes = model.seen_expression_modes[rows].reshape(len(rows), -1)
        identity_modes = model.identity_modes.reshape(len(start_identity), -1)

        def points() -> Tensor:
            moved = fitted @ expression_modes
            if settings.fit_identity:
                moved = moved + (shape - start_identity) @ identity_modes
            return base + moved.view(base.shape)

        def data_term() -> Tensor:
            residual = (project(points(), pose()) - landmarks) / unit
            return (weight * residual.pow(2).sum(dim=1)).sum()

        pose_values = [rotation, log_scale, shift]
        _adam(pose_values, data_term, settings.pose_steps, settings.learning_rate)
        with torch.no_grad():
            start_error = _mean_distance(project(points(), pose()), landmarks)

        def loss() -> Tensor:
            total = data_term() + (priors * (fitted - start_expression[rows]).pow(2)).sum()
            if settings.fit_identity:
                total = total + settings.identity_prior * (shape - start_identity).pow(2).mean()
            return total

        unknowns = [*pose_values, fitted] + ([shape] if settings.fit_identity else [])
        _adam(unknowns, loss, settings.steps, settings.learning_rate, clamp=fitted)
        with torch.no_grad():
            fitted_pose = pose()
            final_pose = Pose(
                fitted_pose.rotation.detach(), fitted_pose.scale.detach(), fitted_pose.translation.detach()
            )
            error = _mean_distance(project(points(), final_pose), landmarks)
            expression_out = start_expression.index_put((rows,), fitted.detach())
    return LandmarkFit(expression_out, shape.detach(), final_pose, start_error, error)


def _adam(values: list[Tensor], loss_fn, steps: int, rate: float, clamp: Tensor | None = None) -> None:
    """`steps` Adam steps on `values`; `clamp` (one of them) is kept in [0, 1]."""
    if steps == 0:
        return
    optimiser = torch.optim.Adam(values, lr=rate)
    for _ in range(steps):
        optimiser.zero_grad()
        loss_fn().backward()
        optimiser.step()
        if clamp is not None:
            with torch.no_grad():
                clamp.clamp_(0.0, 1.0)


def _initial_pose(points: Tensor, landmarks: Tensor) -> Pose:
    """The weak-perspective pose nearest to the best affine camera from canonical `points` (P, 3) to `landmarks`."""
    image = torch.stack([landmarks[:, 0], -landmarks[:, 1]], dim=1)
    centred_points, centred_image = points - points.mean(dim=0), image - image.mean(dim=0)
    affine = torch.linalg.lstsq(centred_points, centred_image).solution.T  # (2, 3)
    u, singular, vh = torch.linalg.svd(affine, full_matrices=False)
    rows = u @ vh  # the nearest pair of orthonormal rows
    third = torch.linalg.cross(rows[0], rows[1])
    rotation = torch.stack([rows[0], rows[1], third])
    if torch.det(rotation) < 0:
        rotation = torch.stack([rows[0], rows[1], -third])
    scale = singular.mean()
    axis_angle = _axis_angle(rotation)
    pose = Pose(axis_angle, scale.reshape(1), torch.zeros(2))
    offset = (landmarks - project(points, pose)).mean(dim=0)
    return Pose(axis_angle, scale.reshape(1), offset)


def _rotation_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula, differentiable (a tiny angle is padded away from zero)."""
    angle = axis_angle.norm().clamp_min(1e-8)
    k = axis_angle / angle
    cross = torch.stack(
        [
            torch.stack([torch.zeros(()), -k[2], k[1]]),
            torch.stack([k[2], torch.zeros(()), -k[0]]),
            torch.stack([-k[1], k[0], torch.zeros(())]),
        ]
    )
    return torch.eye(3) + torch.sin(angle) * cross + (1 - torch.cos(angle)) * cross @ cross


def _axis_angle(rotation: Tensor) -> Tensor:
    """The axis-angle vector of a rotation matrix (angles below π)."""
    cos = ((rotation.trace() - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.arccos(cos)
    if angle < 1e-6:
        return torch.full((3,), 1e-6)
    vector = torch.stack(
        [rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]]
    )
    return vector / (2 * torch.sin(angle)) * angle


def _mean_distance(projected: Tensor, landmarks: Tensor) -> float:
    return float((projected - landmarks).norm(dim=1).mean())
