"""Where hair and beards grow on the mean ICT head, and the fixed fields that texture them.

Everything here is computed once, on the mean head, and indexes every head's vertices (all ICT
heads share one topology): which skin vertices may carry scalp hair (`may_carry_hair`: above
the brows at the front, above and behind the ears at the sides, down to the nape at the back;
never the face between brows and chin), the ears and a margin round them (`ear_box`), how far
hair may move a vertex out before it would run through an ear (`room_beside`), where a beard
grows (`beard_field`), and the smooth cosine fields that give hair its lumps, curls and
streaks. `diffnphr.data.hair.HairModel` reads them.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from diffnphr.data.fields import signed_distance_inside, smoothstep

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

AZIMUTH_CENTRE_Z = -0.3
"""The ears' depth: azimuth 0 faces the nose, ±π the back of the head."""
_BROW_CLEARANCE = 0.01  # the scalp starts this far above the highest brow landmark at the front
_FACE_AZIMUTH = math.radians(62)  # the face (brows to chin) lies within this azimuth
_EAR_MARGIN = 0.03  # ears plus this margin carry no hair


def may_carry_hair(positions: np.ndarray, azimuth: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Which skin vertices (mean head) can carry scalp hair: scalp, temples, sideburns, nape; not
    the face below the brows."""
    y, side = positions[:, 1], np.abs(azimuth)
    brow_top = landmarks[17:27, 1].max()
    front = side < math.radians(45)
    temple = (side >= math.radians(45)) & (side < _FACE_AZIMUTH)
    beside = (side >= _FACE_AZIMUTH) & (side < math.radians(100))
    back = side >= math.radians(100)
    carries = (front & (y > brow_top + _BROW_CLEARANCE)) | (temple & (y > brow_top - 0.03))
    return carries | (beside & (y > -0.02)) | (back & (y > -0.45))


def beard_field(model: ICTFaceModel, positions: np.ndarray, azimuth: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(N,) in [0, 1]: where a beard grows on the mean head's skin vertices: the moustache under
    the nose, the cheeks below a line from the sideburns down to above the mouth corners, jaw,
    chin and under the jaw, never on the lips, soft at its edges."""
    x, y, z = np.abs(positions[:, 0]), positions[:, 1], positions[:, 2]
    corner_x, corner_y = np.abs(landmarks[48, 0]), landmarks[48, 1]
    jaw_x = np.abs(landmarks[0:17, 0]).max()
    cheek = corner_y + 0.06 + (landmarks[2, 1] - corner_y - 0.06) * np.clip((x - corner_x) / (jaw_x - corner_x), 0, 1)
    moustache = landmarks[33, 1] - 0.012
    upper = np.where(x < corner_x, moustache, cheek)
    chin = landmarks[8, 1]
    lip_distance = np.clip(-signed_distance_inside(positions[:, :2], landmarks[48:60, :2]), 0.0, None)
    field = smoothstep(upper + 0.015, upper - 0.01, y) * smoothstep(chin - 0.16, chin - 0.1, y)
    field *= smoothstep(0.004, 0.012, lip_distance) * (np.abs(azimuth) < math.radians(85))
    return field * smoothstep(AZIMUTH_CENTRE_Z + 0.05, AZIMUTH_CENTRE_Z + 0.12, z)  # in front of the ears


def room_beside(rows: np.ndarray, ear: np.ndarray) -> np.ndarray:
    """(N,) the most each row may move out: its distance to the nearest ear vertex less 5 mm
    (no cap far from the ears), so hair and beard never run through an ear."""
    if len(ear) == 0:
        return np.full(len(rows), np.inf)
    nearest = np.full(len(rows), np.inf)
    for start in range(0, len(ear), 512):
        chunk = ear[start : start + 512]
        nearest = np.minimum(nearest, np.linalg.norm(rows[:, None] - chunk[None], axis=-1).min(axis=1))
    return np.clip(nearest - 0.02, 0.0, None)


def ear_box(positions: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(V,) bool: the ears plus a margin on the mean head: the skin that sticks out sideways beyond
    the jaw, between the mouth's and the brows' height."""
    x, y, z = np.abs(positions[:, 0]), positions[:, 1], positions[:, 2]
    jaw_width = np.abs(landmarks[0:17, 0]).max()
    ear = (x > jaw_width + 0.025) & (y > landmarks[57, 1]) & (y < landmarks[19, 1])
    low, high = positions[ear].min(axis=0) - _EAR_MARGIN, positions[ear].max(axis=0) + _EAR_MARGIN
    return (x > jaw_width - 0.035) & (y > low[1]) & (y < high[1]) & (z > low[2]) & (z < high[2])


def cosine_features(points: np.ndarray, count: int, shortest: float, longest: float, seed: int) -> np.ndarray:
    """(N, count) fixed smooth fields cos(k . p + phase) with wavelengths in [shortest, longest] units."""
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(count, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = np.exp(rng.uniform(np.log(shortest), np.log(longest), count))
    phases = rng.uniform(0, 2 * math.pi, count)
    return np.cos(points @ (directions * (2 * math.pi / wavelengths)[:, None]).T + phases)


def streak_features(azimuth: np.ndarray, height: np.ndarray, count: int) -> np.ndarray:
    """(N, count) fixed streak fields: fast round the head (6-30 cycles per radian), slow downwards."""
    rng = np.random.default_rng(23)
    around = rng.uniform(6.0, 30.0, count)  # cycles per radian of azimuth
    down = rng.uniform(0.5, 2.5, count)  # cycles per unit of height
    phases = rng.uniform(0, 2 * math.pi, count)
    return np.cos(2 * math.pi * (azimuth[:, None] * around + height[:, None] * down) + phases) / math.sqrt(count / 2)
