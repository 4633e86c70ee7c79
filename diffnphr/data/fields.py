"""Small numeric helpers the procedural head models share: a smooth step, 2D distances to outlines."""

from __future__ import annotations

import numpy as np


def smoothstep(edge0, edge1, x):
    """0 below edge0, 1 above edge1, Hermite-smooth between (as GLSL's smoothstep), for torch
    tensors and numpy arrays alike (the edges may be arrays too)."""
    t = ((x - edge0) / (edge1 - edge0)).clip(0.0, 1.0)
    return t * t * (3 - 2 * t)


def polyline_distance(points: np.ndarray, polyline: np.ndarray) -> np.ndarray:
    """Distance from 2D points (N, 2) to an open polyline (M, 2)."""
    start, end = polyline[:-1], polyline[1:]
    segment = end - start
    t = np.clip(np.einsum("nmc,mc->nm", points[:, None] - start[None], segment) / np.sum(segment**2, axis=1), 0.0, 1.0)
    closest = start[None] + t[..., None] * segment[None]
    return np.linalg.norm(points[:, None] - closest, axis=-1).min(axis=1)


def signed_distance_inside(points: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Distance from 2D points (N, 2) to a closed polygon's (M, 2) outline, positive inside it."""
    closed = np.concatenate([polygon, polygon[:1]])
    distance = polyline_distance(points, closed)
    start, end = closed[:-1], closed[1:]
    crosses = (start[None, :, 1] > points[:, None, 1]) != (end[None, :, 1] > points[:, None, 1])
    x_at = start[None, :, 0] + (points[:, None, 1] - start[None, :, 1]) * (end[None, :, 0] - start[None, :, 0]) / (
        end[None, :, 1] - start[None, :, 1] + 1e-300
    )
    inside = np.sum(crosses & (points[:, None, 0] < x_at), axis=1) % 2 == 1
    return np.where(inside, distance, -distance)
