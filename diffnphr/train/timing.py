"""How much of a training step goes to rendering its batch: renders per second and the renderer's share.

The numbers the issue's throughput target is stated in. On CUDA the clock is read only after the
device has finished its queued work (`torch.cuda.synchronize`), so the render time is the render's
and not the time to enqueue it; two synchronisations per step cost far less than a step.
"""

from __future__ import annotations

import time

import torch


class RenderTiming:
    """Render and whole-step seconds of one training call's steps (the first `warmup` steps left out:
    they include compilation and allocator growth)."""

    def __init__(self, device: torch.device, warmup: int = 2) -> None:
        self.device, self.warmup = device, warmup
        self.seen = self.renders = 0
        self.render_s = self.step_s = 0.0

    def lap(self) -> float:
        """The clock, once the device has finished what was queued on it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def add(self, renders: int, render_s: float, step_s: float) -> None:
        """Count one step: `renders` images over all processes, rendered in `render_s` of its `step_s`."""
        self.seen += 1
        if self.seen > self.warmup:
            self.renders += renders
            self.render_s += render_s
            self.step_s += step_s

    def summary(self) -> dict[str, float]:
        """`renders_per_s` (over all processes, whole steps) and `render_share` of the step time, once measured."""
        if not self.step_s:
            return {}
        return {"renders_per_s": self.renders / self.step_s, "render_share": self.render_s / self.step_s}
