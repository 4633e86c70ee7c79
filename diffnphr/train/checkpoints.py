"""Checkpoints of a training run that travel between short GPU commands.

A checkpoint is a folder `checkpoint-<step>` in the run folder holding

* `tensors-*.safetensors`: every tensor needed to continue (weights, codebooks, RNG states),
  in shards of at most 15 MB so each file fits the 16 MiB that comes back from the GPU machine;
* `optimizer.pt`: the optimisers' moments (`torch.save`, read back with `weights_only=True`).
  It is large and optional: a run resumed without it restarts the moments (the trainer then
  warms its learning rates up again), so only the other files need to travel;
* `state.json`: the step and any JSON-able facts; written last, so a folder without it is an
  interrupted save and is ignored.

Folders are written under a temporary name and renamed, and only the newest `keep` are kept.
`slim_checkpoint` makes a run folder light enough to carry to the next GPU command: the newest
checkpoint alone, its floating-point tensors in half precision, no optimiser moments; with
`averages_only`, of each weight that has a moving average (`ema.<name>`) only the average, and
`load_checkpoint` then gives the weights their averages back (the run resumes from the averaged
weights, which halves what travels).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "state.json"
OPTIMIZER_FILE = "optimizer.pt"
TENSORS_PATTERN = "tensors{suffix}.safetensors"
MAX_SHARD_SIZE = "15MB"
AVERAGE_PREFIX = "ema."  # a weight's moving average is stored as AVERAGE_PREFIX + its name
LIVE_FROM_AVERAGES = "live_from_averages"  # state key: the weights were dropped for their averages


@dataclass
class Checkpoint:
    """What a checkpoint folder holds: its tensors, the optimiser states (None if absent) and the state."""

    path: Path
    tensors: dict[str, Tensor]
    optimizers: dict[str, Any] | None
    state: dict[str, Any]

    @property
    def step(self) -> int:
        """The training step at which it was saved."""
        return int(self.state["step"])


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    tensors: dict[str, Tensor],
    optimizers: dict[str, Any],
    state: dict[str, Any],
    keep: int = 2,
) -> Path:
    """Write `checkpoint-<step>` (module docstring) and delete all but the newest `keep` checkpoints."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    run_dir = Path(run_dir)
    final = run_dir / f"{CHECKPOINT_PREFIX}{step:08d}"
    partial = run_dir / f".{final.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    cpu = {name: tensor.detach().to("cpu").contiguous() for name, tensor in tensors.items()}
    split = split_torch_state_dict_into_shards(cpu, filename_pattern=TENSORS_PATTERN, max_shard_size=MAX_SHARD_SIZE)
    for filename, names in split.filename_to_tensors.items():
        save_file({name: cpu[name] for name in names}, str(partial / filename))
    torch.save(optimizers, partial / OPTIMIZER_FILE)
    (partial / STATE_FILE).write_text(json.dumps({**state, "step": int(step)}, indent=1) + "\n")
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return final


def list_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders of a run, oldest first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / STATE_FILE).is_file()]
    return sorted(found, key=lambda p: int(json.loads((p / STATE_FILE).read_text())["step"]))


def newest_checkpoint(run_dir: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint | None:
    """The run's newest complete checkpoint (None for a new run); creates the run folder if needed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    found = list_checkpoints(run_dir)
    return load_checkpoint(found[-1], device) if found else None


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Read a checkpoint folder; tensors and optimiser states land on `device`."""
    path = Path(path)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (it has no {STATE_FILE}).")
    tensors: dict[str, Tensor] = {}
    for shard in sorted(path.glob("tensors*.safetensors")):
        tensors.update(load_file(str(shard), device=str(device)))
    optimizers = None
    if (path / OPTIMIZER_FILE).is_file():
        optimizers = torch.load(path / OPTIMIZER_FILE, map_location=device, weights_only=True)
    state = json.loads((path / STATE_FILE).read_text())
    if state.get(LIVE_FROM_AVERAGES):
        averaged = {name[len(AVERAGE_PREFIX) :]: value for name, value in tensors.items() if _is_average(name)}
        tensors.update({name: value.clone() for name, value in averaged.items() if name not in tensors})
    return Checkpoint(path, tensors, optimizers, state)


def _is_average(name: str) -> bool:
    """Whether a checkpoint tensor is a weight's moving average."""
    return name.startswith(AVERAGE_PREFIX)


def slim_checkpoint(
    run_dir: str | os.PathLike, dtype: torch.dtype = torch.float16, averages_only: bool = False
) -> Path:
    """Keep only a run's newest checkpoint, its floating-point tensors stored as `dtype` (they load
    back into float32 modules), without `optimizer.pt`; returns its folder. For carrying a run to
    the next short GPU command: resumed, it restarts the optimiser moments with a warm-up.

    `averages_only` also drops every weight that has a moving average (module docstring): about
    half the size, for runs whose weights and averages would not travel together."""
    found = list_checkpoints(run_dir)
    if not found:
        raise FileNotFoundError(f"{run_dir} holds no checkpoint to slim.")
    newest = found[-1]
    for old in found[:-1]:
        shutil.rmtree(old)
    shards = sorted(newest.glob(TENSORS_PATTERN.format(suffix="*")))
    averaged = set()
    if averages_only:
        averaged = {name[len(AVERAGE_PREFIX) :] for shard in shards for name in _names(shard) if _is_average(name)}
    for shard in shards:
        tensors = {k: v for k, v in load_file(str(shard)).items() if k not in averaged}
        save_file({k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}, str(shard))
    (newest / OPTIMIZER_FILE).unlink(missing_ok=True)
    if averaged:
        state = json.loads((newest / STATE_FILE).read_text())
        (newest / STATE_FILE).write_text(json.dumps({**state, LIVE_FROM_AVERAGES: True}, indent=1) + "\n")
    return newest


def _names(shard: Path) -> list[str]:
    """The tensor names a safetensors shard holds (its header alone is read)."""
    with safe_open(str(shard), framework="pt") as handle:
        return list(handle.keys())
