"""The one canonical frame every part of diffnphr works in: MonoNPHM's.

Axes: +y up, +z forward (the nose), +x the subject's left; 1 unit = 0.25 m (FLAME × 4).
Meshes are extracted in the box `BOX_MIN`..`BOX_MAX` (MonoNPHM's) and exported in this frame
unrotated, which is glTF's (+Y up, the front faces +Z). ICT-FaceKit's centimetres map into it by
`x / CM_PER_UNIT + ICT_TO_CANONICAL_OFFSET` (`diffnphr.data.ict` says why that offset).
"""

from __future__ import annotations

import numpy as np

CM_PER_UNIT = 25.0
MM_PER_UNIT = 10.0 * CM_PER_UNIT

BOX_MIN: tuple[float, float, float] = (-0.55, -0.5, -0.95)
BOX_MAX: tuple[float, float, float] = (0.55, 0.75, 0.4)
FLOOR_Y = BOX_MIN[1]  # the box floor cuts the neck; evaluation compares surfaces above it
# The box fits a 1.4-unit square around this centre (the previews' framing).
BOX_CENTRE: tuple[float, float, float] = tuple((low + high) / 2 for low, high in zip(BOX_MIN, BOX_MAX))

ICT_TO_CANONICAL_OFFSET = np.array([0.0, 0.08, -0.35], dtype=np.float32)
