"""What a server accepts: limits by device, and untrusted request values read into the pipeline's settings.

The app takes values from its widgets and from `gradio_client` callers, who may send anything
JSON allows: strings, None, infinities, fractions where a whole number belongs. `read_request`
turns them into the pipeline's keyword settings or refuses the first bad one with a
`RequestError` whose sentence names the parameter and its allowed range. Limits depend on the
device (`ServingLimits.for_device`): on a CPU the mesh resolution stops where a request still
finishes in about a minute, so one person cannot hold the queue for everyone else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from diffnphr.pipeline.settings import MAX_SAMPLES, MAX_SEED

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


REQUEST_PARAMETERS = (
    "seed", "randomize_seed", "steps", "guidance_scale", "resolution", "samples", "allow_no_face", "refine",
)  # fmt: skip
OPTIONAL_PARAMETERS = {"refine": False}
"""Parameters a request may leave out (added after the API's first callers), with the value they then take."""


def read_request(limits: ServingLimits, **values: Any) -> dict[str, Any]:
    """The pipeline settings (`seed` None when randomised, `refine`) and `allow_no_face` for one request's raw values
    (`REQUEST_PARAMETERS`; `OPTIONAL_PARAMETERS` may be left out). Raises `RequestError` for the first value that cannot be used."""
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
    values = {**OPTIONAL_PARAMETERS, **values}
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
        "refine": lambda v: _flag("refine", "The refinement choice", v),
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
