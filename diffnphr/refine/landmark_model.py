"""ICT-FaceKit's linear head model at MediaPipe Face Mesh's 478 points: what the refinement projects.

Each Face Mesh point is a fixed barycentric point of an ICT triangle (`vertex_ids`, `weights`;
built from renders by `python -m diffnphr eval correspondence`, `diffnphr.eval.correspondence`).
The file `facemesh_ict.npz` beside this module holds the model restricted to those points —
neutral positions, identity modes and expression modes in the canonical frame — so the app
needs no ICT archive at run time. Its ICT-FaceKit licence note (MIT) travels in the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

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

    @classmethod
    def from_ict(cls, model: ICTFaceModel, vertex_ids: np.ndarray, weights: np.ndarray, licence: str) -> LandmarkModel:
        """The ICT model sampled at barycentric points (`vertex_ids`, `weights`, each (P, 3))."""
        w = torch.as_tensor(weights, dtype=torch.float32)

        def sampled(array: np.ndarray) -> Tensor:
            return (torch.as_tensor(array[..., vertex_ids, :], dtype=torch.float32) * w[..., None]).sum(dim=-2)

        return cls(
            sampled(model.neutral),
            sampled(model.identity_modes),
            sampled(model.expression_modes),
            tuple(model.expression_names),
            np.asarray(vertex_ids, np.int64),
            np.asarray(weights, np.float32),
            licence,
        )

    def points(self, identity: Tensor, expression: Tensor) -> Tensor:
        """(B, P, 3) canonical points of B heads from identity coefficients (B, I) and expression weights (B, E)."""
        offsets = torch.einsum("bi,ipc->bpc", identity, self.identity_modes)
        return self.neutral + offsets + torch.einsum("be,epc->bpc", expression, self.expression_modes)

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
            )
        if model.neutral.shape != (LANDMARK_COUNT, 3):
            raise ValueError(f"{path} holds {model.neutral.shape[0]} points, not Face Mesh's {LANDMARK_COUNT}")
        return model
