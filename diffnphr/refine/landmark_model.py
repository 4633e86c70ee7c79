"""ICT-FaceKit's linear head model at MediaPipe Face Mesh's 478 points: what the refinement projects.

Each Face Mesh point is a fixed barycentric point of an ICT triangle (`vertex_ids`, `weights`;
built from renders by `python -m diffnphr eval correspondence`, `diffnphr.eval.correspondence`).
The file `facemesh_ict.npz` beside this module holds the model restricted to those points —
neutral positions, identity modes and expression modes in the canonical frame — so the app
needs no ICT archive at run time. Its ICT-FaceKit licence note (MIT) travels in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

LANDMARK_COUNT = 478
DEFAULT_MODEL_FILE = Path(__file__).with_name("facemesh_ict.npz")
FORMAT_VERSION = 1


@dataclass(frozen=True)
class LandmarkModel:
    """The ICT model at the 478 Face Mesh points (module docstring); arrays in canonical units."""

    neutral: Tensor  # (P, 3)
    identity_modes: Tensor  # (I, P, 3), scaled by each mode's std like ICTFaceModel's
    expression_modes: Tensor  # (E, P, 3), for weights in [0, 1]
    expression_names: tuple[str, ...]
    vertex_ids: np.ndarray  # (P, 3) ICT vertices of each point's triangle
    weights: np.ndarray  # (P, 3) barycentric weights
    licence: str
    expression_gains: Tensor | None = None  # (E,) Face Mesh's motion over the model's per expression (1: not measured)

    @property
    def gains(self) -> Tensor:
        """(E,) the expressions' gains (`expression_gains`, ones when none were measured)."""
        if self.expression_gains is None:
            return torch.ones(len(self.expression_names))
        return self.expression_gains

    @property
    def seen_expression_modes(self) -> Tensor:
        """(E, P, 3) the expression modes as Face Mesh sees them: each scaled by its gain."""
        return self.expression_modes * self.gains[:, None, None]

    def with_gains(self, gains: dict[str, float]) -> LandmarkModel:
        """The same model with the named expressions' gains set (the others 1)."""
        values = torch.ones(len(self.expression_names))
        for name, gain in gains.items():
            values[self.expression_index(name)] = float(gain)
        return replace(self, expression_gains=values)

    def points(self, identity: Tensor, expression: Tensor) -> Tensor:
        """(B, P, 3) canonical points of B heads, as Face Mesh sees them (`seen_expression_modes`), from identity
        coefficients (B, I) and expression weights (B, E)."""
        offsets = torch.einsum("bi,ipc->bpc", identity, self.identity_modes)
        return self.neutral + offsets + torch.einsum("be,epc->bpc", expression, self.seen_expression_modes)

    def expression_index(self, name: str) -> int:
        """Position of a named blendshape in `expression_modes`."""
        if name not in self.expression_names:
            raise ValueError(f"unknown ICT expression {name!r}; known: {', '.join(self.expression_names)}")
        return self.expression_names.index(name)

    def save(self, path: str | os.PathLike) -> Path:
        """Write the model (float32, compressed) with its licence note."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            format_version=np.int64(FORMAT_VERSION),
            neutral=self.neutral.numpy(),
            identity_modes=self.identity_modes.numpy(),
            expression_modes=self.expression_modes.numpy(),
            expression_names=np.array(self.expression_names),
            vertex_ids=self.vertex_ids,
            weights=self.weights,
            licence=np.array(self.licence),
            expression_gains=self.gains.numpy(),
        )
        return path

    @classmethod
    def load(cls, path: str | os.PathLike = DEFAULT_MODEL_FILE) -> LandmarkModel:
        """Read a file `save` wrote; a missing or foreign file is a clear error."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(
                f"The Face Mesh landmark model {path} is missing; build it with "
                "`python -m diffnphr eval correspondence --out PATH` (needs the ICT-FaceKit archive)."
            )
        with np.load(path) as data:
            if int(data["format_version"]) != FORMAT_VERSION:
                raise ValueError(f"{path} has format {int(data['format_version'])}; this code reads {FORMAT_VERSION}")
            model = cls(
                torch.as_tensor(data["neutral"]),
                torch.as_tensor(data["identity_modes"]),
                torch.as_tensor(data["expression_modes"]),
                tuple(str(n) for n in data["expression_names"]),
                data["vertex_ids"],
                data["weights"],
                str(data["licence"]),
                torch.as_tensor(data["expression_gains"]),
            )
        if model.neutral.shape != (LANDMARK_COUNT, 3):
            raise ValueError(f"{path} holds {model.neutral.shape[0]} points, not Face Mesh's {LANDMARK_COUNT}")
        return model
