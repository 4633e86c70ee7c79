"""The JSON-lines training log every trainer of diffnphr writes into its run folder."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from torch import Tensor

LOG_FILE = "train_log.jsonl"  # a training run's log, in its run folder


class TrainingLog:
    """A run's `train_log.jsonl`: appends JSON lines, and averages loss terms between lines (one host sync per line)."""

    def __init__(self, path: Path):
        self.path = path
        self.sums: dict[str, Tensor] = {}
        self.count = 0
        self.since = time.monotonic()

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (an event, or a flushed average) as a JSON line."""
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")

    def add(self, terms: dict[str, Tensor], loss: Tensor) -> None:
        """Accumulate one step's loss terms on their device (no host sync)."""
        for name, value in {**terms, "loss": loss}.items():
            self.sums[name] = self.sums.get(name, 0.0) + value.detach()
        self.count += 1

    def flush(self, step: int, extra: dict[str, Any]) -> dict[str, Any]:
        """Write the averages since the last flush, steps/s and `extra`; return the record.

        A loss that has become NaN or infinite stops training with a `RuntimeError` naming the step.
        """
        now = time.monotonic()
        record = {"step": step, **{k: float(v) / self.count for k, v in self.sums.items()}}
        record["steps_per_s"] = self.count / (now - self.since)
        record.update(extra)
        self.write(record)
        self.sums, self.count, self.since = {}, 0, now
        if not math.isfinite(record["loss"]):
            raise RuntimeError(f"The training loss became {record['loss']} at step {step}; see {self.path}.")
        return record
