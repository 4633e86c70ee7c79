"""The time-boxed, resumable training loop every trainer runs, and its seeding.

A trainer (`Trainee`) owns its models, data and optimisers and knows how to take one step, how to
validate and how to save a checkpoint; `run_training` owns everything around that: the time
box of one GPU command (`TimeBox`), log lines every `log_every` steps (`TrainingLog`, plus a
`logging` line with the rate and the time left), validation every `validate_every` steps,
checkpoints every `checkpoint_every` steps and always one at the end. One place decides when a
call stops and what is saved, and so holds distributed training's rules (`diffnphr.train.distributed`):
every process takes a step only when all of them can, the logged losses are averaged over the
processes, and only rank 0 validates, logs and writes checkpoints (the others wait for each
checkpoint to be complete).

Randomness is explicit: a trainer draws its batches from `torch.Generator`s seeded from its
config (`step_generator` gives each step its own, so a resumed run draws what an uninterrupted
one would), and initialises its modules inside `seeded`, which leaves torch's global generator
as it found it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch
from torch import Tensor

from diffnphr.train.distributed import SINGLE_PROCESS

if TYPE_CHECKING:
    from diffnphr.train.distributed import DistributedContext
    from diffnphr.train.log import TrainingLog

logger = logging.getLogger(__name__)


class TimeBox:
    """The time budget of one training call: whether another step and the final checkpoint still fit.

    A call stops after `stop_after_steps` steps, or when two more steps (a running average of
    their duration, log and validation work included) plus one checkpoint would pass
    `budget_s` seconds counted from `started`.
    """

    def __init__(self, budget_s: float, started: float, stop_after_steps: int | None = None) -> None:
        if not budget_s > 0:
            raise ValueError(f"time_budget_s must be positive, got {budget_s}.")
        self.budget_s, self.started, self.stop_after_steps = budget_s, started, stop_after_steps
        self.steps, self.step_s, self.save_s = 0, 0.0, 10.0

    def allows_step(self) -> bool:
        """Whether one more step fits."""
        if self.stop_after_steps is not None and self.steps >= self.stop_after_steps:
            return False
        return self.elapsed_s() + 2 * self.step_s + self.save_s <= self.budget_s

    def elapsed_s(self) -> float:
        """Seconds since this call started."""
        return time.monotonic() - self.started

    def stepped(self, seconds: float) -> None:
        """Count a step that took `seconds`."""
        self.steps += 1
        self.step_s = seconds if self.steps == 1 else 0.9 * self.step_s + 0.1 * seconds

    def saved(self, seconds: float) -> None:
        """Note how long a checkpoint took (the next one is budgeted with a margin)."""
        self.save_s = 1.5 * seconds + 1.0


@dataclass(frozen=True)
class LoopSchedule:
    """When a run stops, logs, validates (None: never) and checkpoints, in steps."""

    total_steps: int
    log_every: int
    checkpoint_every: int
    validate_every: int | None = None


@dataclass
class StepResult:
    """One step's loss terms and total (on the device: averaged by the log), and what its log line adds."""

    terms: dict[str, Tensor]
    loss: Tensor
    logged: dict[str, Any] = field(default_factory=dict)


class Trainee(Protocol):
    """What a trainer gives the loop."""

    def train_step(self, step: int) -> StepResult:
        """Take optimisation step `step` (0-based) on a fresh batch."""

    def validate(self) -> dict[str, float]:
        """Losses on fixed validation data, for the log."""

    def save(self, step: int) -> Path:
        """Write the checkpoint of the run at `step`; returns its folder."""


@dataclass
class LoopOutcome:
    """Where a call of `run_training` stopped: the step, the log records it wrote and the last checkpoint."""

    step: int
    records: list[dict[str, Any]]
    checkpoint: Path | None  # None on processes other than rank 0, which write none


def run_training(
    trainee: Trainee,
    schedule: LoopSchedule,
    budget: TimeBox,
    log: TrainingLog,
    step: int,
    last_checkpoint: Path | None,
    distributed: DistributedContext = SINGLE_PROCESS,
    device: torch.device | str = "cpu",
) -> LoopOutcome:
    """Train from `step` until `schedule.total_steps` or the end of `budget`, and leave a checkpoint.

    `last_checkpoint` is the checkpoint the run resumed from (None for a new run): a call that
    takes no step saves nothing new. With several processes (`distributed`; `device` is where
    they exchange their flags and losses) every process calls this with the same arguments and
    the rules of the module docstring apply.
    """
    first_step, records, has_checkpoint = step, [], last_checkpoint is not None
    main = distributed.is_main

    def save() -> None:
        nonlocal last_checkpoint, has_checkpoint
        tick = time.monotonic()
        if main:
            last_checkpoint = trainee.save(step)
        distributed.barrier()
        has_checkpoint = True
        budget.saved(time.monotonic() - tick)

    while step < schedule.total_steps and distributed.all_agree(budget.allows_step(), torch.device(device)):
        tick = time.monotonic()
        result = trainee.train_step(step)
        step += 1
        terms = distributed.average({**result.terms, "loss": result.loss})
        loss = terms.pop("loss")
        log.add(terms, loss)
        last = step == schedule.total_steps
        validation = {}
        if main and schedule.validate_every and (step % schedule.validate_every == 0 or last):
            validation = trainee.validate()
        if main and (step % schedule.log_every == 0 or last or validation):
            record = log.flush(step, {**result.logged, "elapsed_s": budget.elapsed_s(), **validation})
            records.append(record)
            _log_progress(record, schedule.total_steps, step - first_step, budget)
        budget.stepped(time.monotonic() - tick)
        if step % schedule.checkpoint_every == 0:
            save()
    if not has_checkpoint or (step != first_step and step % schedule.checkpoint_every != 0):
        save()
    return LoopOutcome(step, records, last_checkpoint if main else None)


def _log_progress(record: dict[str, Any], total_steps: int, steps_this_call: int, budget: TimeBox) -> None:
    """One `logging` line: step, loss, rate and the time left for the run and for this call."""
    rate = steps_this_call / max(budget.elapsed_s(), 1e-9)
    step = record["step"]
    run_left = (total_steps - step) / rate if rate > 0 else float("inf")
    call_left = max(budget.budget_s - budget.elapsed_s(), 0.0)
    if budget.stop_after_steps is not None:
        call_left = min(call_left, (budget.stop_after_steps - budget.steps - 1) / rate if rate > 0 else 0.0)
    logger.info(
        "step %d/%d (%.0f %%): loss %.4g, %.2f steps/s; run done in about %s, this call stops in about %s",
        step,
        total_steps,
        100.0 * step / total_steps,
        record["loss"],
        rate,
        _duration(run_left),
        _duration(min(call_left, run_left)),
    )


def _duration(seconds: float) -> str:
    """`1 h 05 min`, `4 min 10 s` or `12 s`."""
    if seconds == float("inf"):
        return "an unknown time"
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    if seconds >= 60:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds} s"


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the enclosed module initialisation from `seed`, leaving torch's global CPU generator as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """The generator of one training step's random draws on `device` (a function of seed and step only)."""
    return torch.Generator(device).manual_seed(seed * 1_000_003 + step)
