"""The 65 MonoNPHM-style anchors as ICT vertices, so they follow every identity and expression.

MonoNPHM's anchors are 30 left/right pairs at indices (2j, 2j+1), j = 0..29, then 5 points on
the midline at 60..64 (chin, nasion, nose tip, throat, nose bridge). Here the even member of a
pair is on the subject's right (x < 0), the odd one its mirror image on the left. Ground-truth
anchors of a head are these vertices of its identity with a neutral expression; the same
anchors supervise every expression of that identity, as in MonoNPHM.

The rule, on the mean head (`ICTFaceModel.neutral`), all deterministic:

* candidates are outer-skin vertices (parts face and head_and_neck) inside the canonical box
  (y >= `frame.FLOOR_Y`; the neck below the box floor is never extracted);
* a vertex's mirror is the candidate nearest to it with x negated (the model is symmetric
  to 0.005 cm, so pairs mirror each other up to that);
* midline: Multi-PIE landmarks 8 (chin), 27 (nasion), 30 (nose tip) and 29 (nose bridge), and
  the throat: the midline candidate in front of the neck's centre (z above the neck loop's
  mean) whose height is nearest to `THROAT_DROP` (3 cm) below the chin;
* pairs 0..8 are landmark pairs (`LANDMARK_PAIRS`: eye corners, mouth corners, nose alae,
  brow ends, three jawline points), the right landmark and its mirror;
* pairs 9..29 come from symmetric farthest-point sampling: repeatedly the left-side
  candidate (x > `MIN_PAIR_HALF_WIDTH`) farthest (Euclidean) from every anchor chosen so far,
  together with its mirror. This spreads the rest over scalp, ears, cheeks and neck.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.spatial import cKDTree

from diffnphr.frame import FLOOR_Y

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

ANCHOR_COUNT = 65
PAIR_COUNT = 30
MIDLINE_LANDMARKS = {"chin": 8, "nasion": 27, "nose_tip": 30, "nose_bridge": 29}
MIDLINE_ORDER = ("chin", "nasion", "nose_tip", "throat", "nose_bridge")
LANDMARK_PAIRS = ((36, 45), (39, 42), (48, 54), (31, 35), (17, 26), (21, 22), (0, 16), (4, 12), (6, 10))
THROAT_DROP = 0.12  # canonical units below the chin (3 cm)
MIN_PAIR_HALF_WIDTH = 0.02  # farthest-point pairs stay 5 mm off the midline


def anchor_vertices(model: ICTFaceModel) -> np.ndarray:
    """(65,) ICT vertex indices of the anchors, ordered as MonoNPHM's (module docstring)."""
    positions = model.neutral
    every = np.arange(model.num_vertices)
    outer = np.concatenate([every[model.part_vertices(name)] for name in ("face", "head_and_neck")])
    candidates = outer[positions[outer, 1] >= FLOOR_Y]
    tree = cKDTree(positions[candidates])
    mirror_of = {}

    def mirror(vertex: int) -> int:
        if vertex not in mirror_of:
            _, row = tree.query(positions[vertex] * np.array([-1.0, 1.0, 1.0]))
            mirror_of[vertex] = int(candidates[row])
        return mirror_of[vertex]

    landmarks = model.landmarks_68
    pairs = []
    for first, second in LANDMARK_PAIRS:
        right = int(landmarks[first] if positions[landmarks[first], 0] < 0 else landmarks[second])
        pairs.append((right, mirror(right)))
    midline = {name: int(landmarks[index]) for name, index in MIDLINE_LANDMARKS.items()}
    midline["throat"] = _throat(model, candidates, midline["chin"])

    chosen = [v for pair in pairs for v in pair] + list(midline.values())
    left = candidates[positions[candidates, 0] > MIN_PAIR_HALF_WIDTH]
    distance = np.min(np.linalg.norm(positions[left, None] - positions[chosen][None], axis=-1), axis=1)
    while len(pairs) < PAIR_COUNT:
        new_left = int(left[np.argmax(distance)])
        pair = (mirror(new_left), new_left)
        pairs.append(pair)
        for vertex in pair:
            distance = np.minimum(distance, np.linalg.norm(positions[left] - positions[vertex], axis=1))
    return np.array([v for pair in pairs for v in pair] + [midline[name] for name in MIDLINE_ORDER], dtype=np.int64)


def _throat(model: ICTFaceModel, candidates: np.ndarray, chin: int) -> int:
    positions = model.neutral
    neck_centre = positions[model.neck_boundary_loop].mean(axis=0)
    on_midline = candidates[(np.abs(positions[candidates, 0]) < 1e-6) & (positions[candidates, 2] > neck_centre[2])]
    target = positions[chin, 1] - THROAT_DROP
    return int(on_midline[np.argmin(np.abs(positions[on_midline, 1] - target))])
