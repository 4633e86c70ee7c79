"""What a reconstruction gives back (`Reconstruction`), the naming of the photo an input error is about, and the
check of a z_exp a caller gives."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from diffnphr.face.images import ImageInputError
from diffnphr.mesh.marching import NoSurfaceError
from diffnphr.nphm.latents import HeadLatents

if TYPE_CHECKING:
    import trimesh

    from diffnphr.face.crop import FaceCrop


@dataclass
class Reconstruction:
    """What one reconstruction gives back.

    `mesh` is in MonoNPHM's frame (+y up, face towards +z; 1 unit = 0.25 m) with RGBA vertex
    colours. `crop` is the face crop the model saw (the identity photo's, for a transfer;
    `expression_crop` then holds the other one). `seed` is the seed actually used, so a result
    can be repeated. `timings` holds seconds per stage: crop, encode, diffusion, extraction,
    colour and total (for a head of a batch, the batch's: its heads went through each stage
    together). `warnings` are sentences worth showing to the person (e.g. a small face).
    """

    mesh: trimesh.Trimesh
    crop: FaceCrop
    latents: HeadLatents
    seed: int
    timings: dict[str, float]
    warnings: list[str] = field(default_factory=list)
    expression_crop: FaceCrop | None = None


@contextmanager
def naming_the_photo(label: str | None) -> Iterator[None]:
    """Errors about a photo (unreadable, no face, no surface in its head) say which photo they are about: `label`
    (None: the error as it is)."""
    try:
        yield
    except (ImageInputError, NoSurfaceError) as error:
        if label is None:
            raise
        raise type(error)(f"{label}: {error}") from error


def photo_label(index: int, count: int, image: object) -> str | None:
    """How an error names photo `index` of `count`: its place, and its file name when it came as a path (None for
    the only photo of a call: there is nothing to tell it from)."""
    if count == 1:
        return None
    label = f"Photo {index + 1} of {count}"
    if isinstance(image, (str, Path)):
        label += f" ({Path(image).name})"
    return label


def usable_copy(latents: HeadLatents) -> HeadLatents:
    """Copies made outside inference mode, so callers may optimise or differentiate through them."""
    return HeadLatents(latents.z_geo.clone(), latents.z_exp.clone(), latents.z_app.clone())


def checked_expression_code(z_exp: torch.Tensor, size: int) -> torch.Tensor:
    """A z_exp given by the caller ([size] or [1, size]), as a CPU float vector like the sampled ones."""
    code = z_exp[0] if z_exp.dim() == 2 and z_exp.shape[0] == 1 else z_exp
    if code.shape != (size,):
        raise ValueError(f"An expression code must be a tensor of {size} values; got shape {tuple(z_exp.shape)}.")
    if not torch.isfinite(code).all():
        raise ValueError("The expression code holds NaN or infinite values.")
    return code.detach().float().cpu()
