"""What one decoder training step samples from each head, and the settings that size it.

`SamplingConfig` says how many points of each kind a head gets and how far off the surface
they lie; `HeadBatch` holds the samples of B heads. `diffnphr.data.sampling.HeadSampler` draws
them; the training losses read them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingConfig:
    """How many samples of each kind one head gets, and the noise scales (canonical units)."""

    surface_points: int = 4096
    face_fraction: float = 0.5
    eye_weight: float = 8.0
    near_points: int = 2048  # shared equally by near_sigmas
    near_sigmas: tuple[float, ...] = (0.004, 0.04)
    uniform_points: int = 512
    correspondences: int = 1024  # shared equally by correspondence_sigmas
    correspondence_sigmas: tuple[float, ...] = (0.002, 0.01)

    def __post_init__(self) -> None:
        counts = (self.surface_points, self.near_points, self.uniform_points, self.correspondences)
        if min(counts) < 0 or self.surface_points == 0:
            raise ValueError(f"sample counts must be non-negative and surface_points positive, got {counts}")
        if not 0.0 <= self.face_fraction <= 1.0:
            raise ValueError(f"face_fraction must lie in [0, 1], got {self.face_fraction}")
        if not self.eye_weight > 0:
            raise ValueError(f"eye_weight must be positive, got {self.eye_weight}")
        if not self.near_sigmas or not self.correspondence_sigmas:
            raise ValueError("near_sigmas and correspondence_sigmas need at least one scale each")


@dataclass(frozen=True)
class HeadBatch:
    """Training samples of B heads; see the module docstring for how each is drawn."""

    surface_points: torch.Tensor  # (B, S, 3) on the posed head
    surface_normals: torch.Tensor  # (B, S, 3) unit, outward
    surface_colours: torch.Tensor  # (B, S, 3) sRGB in [0, 1]
    surface_faces: torch.Tensor  # (B, S) rows of HeadSurface.faces
    surface_barycentric: torch.Tensor  # (B, S, 3)
    surface_on_face: torch.Tensor  # (B, S) bool: the point lies in the face region
    space_points: torch.Tensor  # (B, Q, 3): near points per sigma in order, then uniform ones
    posed_points: torch.Tensor  # (B, C, 3) correspondences on the posed head ...
    neutral_points: torch.Tensor  # (B, C, 3) ... and the same points on its neutral head
    correspondence_faces: torch.Tensor  # (B, C)
    correspondence_barycentric: torch.Tensor  # (B, C, 3)
    correspondence_offsets: torch.Tensor  # (B, C) distance moved along the normals
    anchors: torch.Tensor  # (B, 65, 3) on the neutral head
