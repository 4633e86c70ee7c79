"""Progress and timing of a reconstruction, stage by stage (what the app's bar and details show)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import trimesh

    from diffnphr.mesh.extract import MeshExtraction

ProgressCallback = Callable[[str, float], None]

# What progress reports per stage, and the stage's share of the time (so that the reported
# fraction of the whole call only grows, at an even pace): the seconds measured on 2 CPU cores at
# 128³ (docs/eval/bench_cpu.json: crop 0.05, encode 0.02, diffusion 1.0, extraction 7.7, colour 2.7;
# refine about 0.4 s, docs/RESULTS.md, "Fit to the photo").
STAGE_LABELS = {
    "crop": "Finding and cropping the face",
    "encode": "Embedding the face",
    "diffusion": "Sampling the head latent",
    "refine": "Fitting the head to the photo's landmarks",
    "extraction": "Extracting the surface",
    "colour": "Colouring the mesh",
}
_STAGE_WEIGHTS = {"crop": 0.3, "encode": 0.2, "diffusion": 1.0, "refine": 0.6, "extraction": 7.7, "colour": 2.7}


class StageProgress:
    """Turns stage-by-stage progress into `callback(stage_label, overall_fraction)` calls."""

    def __init__(self, callback: ProgressCallback | None, stages: Sequence[str]) -> None:
        self.callback = callback
        total = sum(_STAGE_WEIGHTS[stage] for stage in stages)
        self.weights = [_STAGE_WEIGHTS[stage] / total for stage in stages]
        self.labels = [STAGE_LABELS[stage] for stage in stages]
        self.index = 0
        self.done = 0.0

    def report(self, fraction_of_stage: float) -> None:
        """Report how far the current stage is (0..1)."""
        if self.callback is not None:
            fraction = self.done + self.weights[self.index] * min(max(fraction_of_stage, 0.0), 1.0)
            self.callback(self.labels[self.index], min(fraction, 1.0))

    def next(self) -> None:
        """Mark the current stage finished and move to the next one."""
        self.report(1.0)
        self.done += self.weights[self.index]
        self.index = min(self.index + 1, len(self.weights) - 1)


class StageTimer:
    """Adds wall-clock seconds per stage name (stages may run more than once, e.g. in a transfer)."""

    def __init__(self, device: torch.device | None = None) -> None:
        self.seconds: dict[str, float] = {}
        self.start = time.perf_counter()
        self.device = device

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the enclosed work as stage `name` (on a GPU, until its queued kernels have finished)."""
        begin = time.perf_counter()
        try:
            yield
        finally:
            if self.device is not None and self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.add(name, time.perf_counter() - begin)

    def add(self, name: str, seconds: float) -> None:
        """Count `seconds` more for stage `name`."""
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    def summary(self) -> dict[str, float]:
        """Seconds per stage, rounded to milliseconds, plus the total."""
        result = {name: round(value, 3) for name, value in self.seconds.items()}
        result["total"] = round(time.perf_counter() - self.start, 3)
        return result


def timed_extraction(
    extract: Callable[[ProgressCallback], MeshExtraction], timer: StageTimer, tracker: StageProgress
) -> trimesh.Trimesh:
    """Run `extract` (a pipeline's `mesh` stage, given the progress callback to report through) as the
    "extraction" and "colour" stages: the tracker moves to colour when the extraction says so, and both
    stages' seconds are timed. Returns the mesh."""
    tracker.report(0.0)
    colouring = False

    def follow(stage: str, fraction: float) -> None:
        nonlocal colouring
        if stage == "colour" and not colouring:
            tracker.next()
            colouring = True
        tracker.report(fraction)

    extraction = extract(follow)
    timer.add("extraction", extraction.seconds_sdf + extraction.seconds_mcubes)
    timer.add("colour", extraction.seconds_color)
    if not colouring:
        tracker.next()
    tracker.next()
    return extraction.mesh
