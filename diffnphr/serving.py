"""Serving: what a server accepts (limits by device, untrusted request values read into settings), and the
files and details of each result.

The app takes values from its widgets and from `gradio_client` callers, who may send anything
JSON allows: strings, None, infinities, fractions where a whole number belongs. `read_request`
turns them into the pipeline's keyword settings or refuses the first bad one with a
`RequestError` whose sentence names the parameter and its allowed range. Limits depend on the
device (`ServingLimits.for_device`): on a CPU the mesh resolution stops where a request still
finishes in about a minute, so one person cannot hold the queue for everyone else.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from diffnphr.mesh.export import EXPORT_FORMATS, export_mesh
from diffnphr.pipeline.settings import MAX_SAMPLES, MAX_SEED

if TYPE_CHECKING:
    from diffnphr.pipeline.pipeline import Reconstruction

CPU_MAX_RESOLUTION = 256  # 15 s in the pipeline on 2 CPU cores (docs/RESULTS.md): well under a minute
GPU_MAX_RESOLUTION = 512
MIN_RESOLUTION = 32
MAX_STEPS = 100
MAX_GUIDANCE = 10.0


class RequestError(ValueError):
    """A request value that cannot be used; `parameter` names it (the argument's name in the API)."""

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(message)
        self.parameter = parameter


@dataclass(frozen=True)
class ServingLimits:
    """The ranges a server accepts for each setting, shown on the app's sliders and enforced for API callers."""

    max_resolution: int
    min_resolution: int = MIN_RESOLUTION
    max_steps: int = MAX_STEPS
    max_guidance: float = MAX_GUIDANCE
    max_samples: int = MAX_SAMPLES
    device_name: str = "CPU"

    def describe(self, default_resolution: int, queue_size: int) -> str:
        """One line for the page saying what this server runs on and accepts."""
        return (
            f"This server runs the model on a {self.device_name}; it meshes at {default_resolution}³ by default "
            f"and at most {self.max_resolution}³, one request at a time, with up to {queue_size} waiting."
        )

    @classmethod
    def for_device(cls, device_type: str) -> ServingLimits:
        """The limits of a server whose models run on `device_type` ("cpu" or "cuda")."""
        if device_type == "cuda":
            return cls(max_resolution=GPU_MAX_RESOLUTION, device_name="GPU")
        return cls(max_resolution=CPU_MAX_RESOLUTION, device_name="CPU")


REQUEST_PARAMETERS = ("seed", "randomize_seed", "steps", "guidance_scale", "resolution", "samples", "allow_no_face")


def read_request(limits: ServingLimits, **values: Any) -> dict[str, Any]:
    """The pipeline settings (`seed` None when randomised) and `allow_no_face` for one request's raw values
    (`REQUEST_PARAMETERS`). Raises `RequestError` for the first value that cannot be used."""
    read, problems = _read_each(limits, values)
    if problems:
        parameter, message = next(iter(problems.items()))
        raise RequestError(parameter, message)
    return {"seed": None if read.pop("randomize_seed") else read["seed"], **read}


def request_problems(limits: ServingLimits, **values: Any) -> dict[str, str]:
    """Per parameter, the sentence saying why its value cannot be used (only the bad ones, in API order)."""
    return _read_each(limits, values)[1]


def _read_each(limits: ServingLimits, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """Every parameter read once: the values that could be read, and a sentence for each that could not. The
    seed is not read when the seed is randomised (its value is then unused)."""
    if set(values) != set(REQUEST_PARAMETERS):
        raise TypeError(f"a request has exactly {', '.join(REQUEST_PARAMETERS)}; got {', '.join(values)}")
    readers, read, problems = _readers(limits), {}, {}
    for name in ("randomize_seed", *(name for name in REQUEST_PARAMETERS if name != "randomize_seed")):
        if name == "seed" and read.get("randomize_seed"):
            read["seed"] = None
            continue
        try:
            read[name] = readers[name](values[name])
        except RequestError as error:
            problems[name] = str(error)
    return read, {name: problems[name] for name in REQUEST_PARAMETERS if name in problems}


def _readers(limits: ServingLimits) -> dict[str, Any]:
    return {
        "seed": lambda v: _whole("seed", "The seed", v, 0, MAX_SEED),
        "randomize_seed": lambda v: _flag("randomize_seed", "Randomize seed", v),
        "steps": lambda v: _whole("steps", "The number of DDIM steps", v, 1, limits.max_steps),
        "guidance_scale": lambda v: _number("guidance_scale", "The guidance scale", v, 0.0, limits.max_guidance),
        "resolution": lambda v: _whole(
            "resolution",
            f"The mesh resolution (on this {limits.device_name} server)",
            v,
            limits.min_resolution,
            limits.max_resolution,
        ),
        "samples": lambda v: _whole("samples", "The number of samples averaged", v, 1, limits.max_samples),
        "allow_no_face": lambda v: _flag("allow_no_face", "The centre-crop choice", v),
    }


def _number(parameter: str, what: str, value: Any, low: float, high: float) -> float:
    """A finite number in [low, high] from an int, float or numeric string."""
    sentence = f"{what} must be a number from {low:g} to {high:g}; got {_shown(value)}."
    if isinstance(value, bool) or value is None:
        raise RequestError(parameter, sentence)
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            raise RequestError(parameter, sentence) from None
    if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
        raise RequestError(parameter, sentence)
    if not low <= value <= high:
        raise RequestError(parameter, sentence)
    return float(value)


def _whole(parameter: str, what: str, value: Any, low: int, high: int) -> int:
    """A whole number in [low, high]; 12.0 counts as 12, 12.5 does not (it is never truncated)."""
    sentence = f"{what} must be a whole number from {low} to {high}; got {_shown(value)}."
    try:
        number = _number(parameter, what, value, float(low), float(high))
    except RequestError:
        raise RequestError(parameter, sentence) from None
    if number != int(number):
        raise RequestError(parameter, sentence)
    return int(number)


def _flag(parameter: str, what: str, value: Any) -> bool:
    """A yes/no choice: a bool (or None, meaning no)."""
    if value is None:
        return False
    if not isinstance(value, (bool, np.bool_)):
        raise RequestError(parameter, f"{what} must be true or false; got {_shown(value)}.")
    return bool(value)


def _shown(value: Any) -> str:
    """A request value as the sentence shows it: short, and never a path or a long blob."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class OutputFolders:
    """Per-session folders for result files, removed when the session ends or grows old."""

    def __init__(self, root: Path, max_age_s: float) -> None:
        self.root, self.max_age_s = root, max_age_s

    def new_run(self, session: str | None) -> Path:
        """A fresh folder for one result of `session` (results older than `max_age_s`, of any session, are swept)."""
        self._remove_older_than(self.max_age_s)
        folder = self.root / (session or "anonymous") / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def release(self, folder: Path, after_s: float = 60.0) -> None:
        """Remove a result folder `after_s` seconds from now: by then Gradio has copied the files it serves
        into its own cache, so API users (who end no browser session) leave nothing behind either."""
        timer = threading.Timer(after_s, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True})
        timer.daemon = True
        timer.start()

    def end_session(self, session: str | None) -> None:
        """Remove everything a session wrote (Gradio keeps its own copies of what it served)."""
        if session:
            shutil.rmtree(self.root / session, ignore_errors=True)

    def _remove_older_than(self, seconds: float) -> None:
        cutoff = time.time() - seconds
        for run in self.root.glob("*/*"):
            try:
                expired = run.stat().st_mtime < cutoff
            except FileNotFoundError:  # its session just ended
                continue
            if expired:
                shutil.rmtree(run, ignore_errors=True)


class RequestCancelled(Exception):
    """The client that asked for the running request is gone (page closed, connection lost, or cancelled)."""


class ClientWatch:
    """Stops a running request whose client has gone, so it frees the worker for the next one in the queue.

    `running()` lists (session, alive) for every job the server's queue is running now: Gradio
    marks a job not alive when its client's event stream closes, and drops it on a cancel (while
    the worker thread, which it cannot stop, would run on beside the next job). The watch is armed
    only if its session had a live job when it was made: work run outside the queue is never
    stopped. `check()` is cheap; the pipeline's progress callback calls it at every step.
    """

    def __init__(self, running: Callable[[], Iterable[tuple[str, bool]]], session: str) -> None:
        self._running, self.session = running, session
        self.armed = self._still_wanted()
        self.started = time.monotonic()

    def _still_wanted(self) -> bool:
        return any(alive and session == self.session for session, alive in self._running())

    def check(self) -> None:
        """Raise `RequestCancelled` if the request's client is gone."""
        if self.armed and not self._still_wanted():
            raise RequestCancelled(
                f"after {time.monotonic() - self.started:.1f} s: the client that asked for it went away"
            )


def export_downloads(result: Reconstruction, folder: Path, stem: str) -> list[str]:
    """Write the mesh in every download format; the GLB comes first (it feeds the viewer)."""
    name = f"{stem}_seed{result.seed}"
    return [str(export_mesh(result.mesh, folder / f"{name}.{fmt}")) for fmt in EXPORT_FORMATS]


def run_details(result: Reconstruction) -> dict[str, Any]:
    """What the app shows beside a result: seed, seconds per stage, mesh size, how the face was found, warnings."""
    crop = result.crop
    return {
        "seed": result.seed,
        "seconds": result.timings,
        "vertices": len(result.mesh.vertices),
        "faces": len(result.mesh.faces),
        "face": {
            "found": not crop.centred_fallback,
            "photo_turned_deg": crop.rotation,
            "head_size_px": None if crop.face_size_px is None else round(crop.face_size_px),
        },
        "warnings": result.warnings,
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
