"""Each result as a person sees it beside the head: its details, the status line, and the example photos;
and the memory a finished request hands back."""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from diffnphr.face import FaceCrop
    from diffnphr.pipeline.pipeline import Reconstruction


def run_details(result: Reconstruction) -> dict[str, Any]:
    """What the app shows beside a result: seed, seconds per stage, mesh size, how the face was found, warnings.

    `face` says how the face was found in the photo; for an expression transfer it holds one such block per photo,
    named `identity_photo` and `expression_photo`, and each warning names its photo (`named_warnings`).
    """
    face = _face_facts(result.crop)
    if result.expression_crop is not None:
        face = {"identity_photo": face, "expression_photo": _face_facts(result.expression_crop)}
    return {
        "seed": result.seed,
        "seconds": result.timings,
        "vertices": len(result.mesh.vertices),
        "faces": len(result.mesh.faces),
        "face": face,
        "warnings": named_warnings(result),
    }


def named_warnings(result: Reconstruction) -> list[str]:
    """The result's warnings, each naming its photo in an expression transfer ("Identity photo: …"; the pipeline
    names only the expression photo's)."""
    if result.expression_crop is None:
        return list(result.warnings)
    identity = set(result.crop.warnings)
    return [f"Identity photo: {warning}" if warning in identity else warning for warning in result.warnings]


def _face_facts(crop: FaceCrop) -> dict[str, Any]:
    """Whether a face was found in the photo, how far the photo was turned to find it, and its size in pixels."""
    return {
        "found": not crop.centred_fallback,
        "photo_turned_deg": crop.rotation,
        "head_size_px": None if crop.face_size_px is None else round(crop.face_size_px),
    }


def return_freed_memory() -> None:
    """Hand memory the last request freed back to the operating system (glibc's `malloc_trim`; elsewhere nothing).

    Requests run in Gradio's worker threads, each with its own malloc arena, whose freed blocks glibc
    otherwise keeps: without this the app's peak RSS grew with every request under load.
    """
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def _glibc() -> Any:
    """The C library when it is glibc (it has `malloc_trim`), else None."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "malloc_trim") else None


_LIBC = _glibc()


def done_status(details: dict[str, Any] | None) -> str:
    """The status line after a request that succeeded: its time, and whether it has warnings."""
    seconds = (details or {}).get("seconds", {}).get("total")
    warnings = len((details or {}).get("warnings", []))
    done = f"**Done** in {seconds:.1f} s." if seconds is not None else "**Done.**"
    return done + (f" {warnings} warning(s): see the run details." if warnings else "")


@dataclass(frozen=True)
class ExamplePhotos:
    """The example photos' files: a frontal portrait, and a face for the expression-transfer example."""

    portrait: Path
    expression: Path


def write_example_photos(folder: Path) -> ExamplePhotos:
    """scikit-image's astronaut portrait (NASA, public domain) and its camera-operator photo (CC0) as files."""
    from PIL import Image
    from skimage import data

    portrait, expression = folder / "astronaut.png", folder / "camera_operator.png"
    Image.fromarray(data.astronaut()).save(portrait)
    Image.fromarray(data.camera()).convert("RGB").save(expression)
    return ExamplePhotos(portrait, expression)
