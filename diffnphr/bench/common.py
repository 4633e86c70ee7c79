"""What every benchmark row shares: timing with GPU synchronisation, and the example face photo."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def face_photo() -> tuple[Any, str | None]:
    """The app's example portrait, or a grey square and why crop timing is left out."""
    from PIL import Image

    try:
        import mediapipe  # noqa: F401
        from skimage import data
    except ImportError as error:
        return Image.new("RGB", (512, 512), (128, 128, 128)), f"not timed: {error.name} is not installed"
    return Image.fromarray(data.astronaut()), None


def pipeline_input() -> tuple[Any, str | None]:
    """What the rows that call the whole pipeline reconstruct: the example portrait (cropped inside the call, so the
    crop is timed), or where MediaPipe (or scikit-image) is missing, the centre square of `face_photo` as a ready
    crop and the note saying the crop is not timed (a GPU image without MediaPipe)."""
    from diffnphr.face.crop import centre_crop

    photo, crop_note = face_photo()
    return (photo, None) if crop_note is None else (centre_crop(photo), crop_note)


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock seconds cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
