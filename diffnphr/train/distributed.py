"""Training on several processes (one per GPU) with `torch.distributed`: what a trainer needs to know and do.

Launch any trainer under `torchrun --nproc-per-node N python -m diffnphr ...`: `distributed_context`
reads torchrun's environment (`RANK`, `WORLD_SIZE`, `LOCAL_RANK`, with `MASTER_ADDR` /
`MASTER_PORT`), starts the process group (NCCL on CUDA, gloo on the CPU) and puts each process on
its own GPU (`cuda:LOCAL_RANK`); without that environment it is one process, as before. The rules:

* every trained module sits inside one module whose forward computes the loss, wrapped in
  `DistributedDataParallel` (`wrap`), so gradients are averaged over the processes before each
  optimiser step and every process takes the same step;
* buffers (BatchNorm statistics) are broadcast from rank 0 after each step (`broadcast_buffers`),
  so every process holds the same weights, buffers and averages all the time;
* each process renders its own share of the batch from its own seeds: the run counts the per-process
  batches drawn so far (`draws`, kept in the checkpoint), and process `r` of `W` at the `k`-th step of
  a call that resumed after `draws0` draws uses draw index `draws0 + k·W + r` (`draw_index`): no two
  processes and no two steps share a seed, whatever world sizes a run was trained at, and a run
  resumed at any world size continues the count;
* only rank 0 writes checkpoints and logs (`train.loop.run_training`), and every process agrees on
  whether to take another step (`all_agree`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from torch.nn.parallel import DistributedDataParallel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a run: its rank, the world size, its device (`world_size` 1: no process group)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        """Whether several processes train together (a process group is running)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Whether this process writes the run's files (rank 0)."""
        return self.rank == 0

    def draw_index(self, draws_before: int, steps_this_call: int) -> int:
        """The draw (seed) index of this process's batch at the `steps_this_call`-th step of a call that resumed
        after `draws_before` draws (module docstring)."""
        return draws_before + steps_this_call * self.world_size + self.rank

    def share(self, batch_size: int) -> int:
        """This process's part of a batch of `batch_size` over all processes (which must divide it)."""
        if batch_size % self.world_size:
            raise ValueError(
                f"batch_size {batch_size} does not split evenly over {self.world_size} processes; "
                "choose a multiple of the world size."
            )
        return batch_size // self.world_size

    def all_agree(self, flag: bool, device: torch.device) -> bool:
        """True only when `flag` is true on every process (each process must call it at the same point)."""
        if not self.enabled:
            return flag
        value = torch.tensor([1 if flag else 0], device=device, dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())

    def average(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """Scalar tensors averaged over the processes, under the same names (one all-reduce)."""
        if not self.enabled or not values:
            return values
        names = list(values)
        stacked = torch.stack([values[name].detach().float().reshape(()) for name in names])
        dist.all_reduce(stacked)
        stacked /= self.world_size
        return dict(zip(names, stacked.unbind()))

    def barrier(self) -> None:
        """Wait until every process reaches this point."""
        if self.enabled:
            dist.barrier()


SINGLE_PROCESS = DistributedContext()


def _device_for(context: DistributedContext, device: torch.device) -> torch.device:
    """This process's own GPU when training on CUDA with several processes, else `device`."""
    if context.enabled and device.type == "cuda":
        torch.cuda.set_device(context.local_rank)
        return torch.device("cuda", context.local_rank)
    return device


@contextmanager
def distributed_context(device: torch.device) -> Iterator[tuple[DistributedContext, torch.device]]:
    """This process's context and device for the enclosed training (module docstring).

    Uses a process group that is already running (and leaves it running); else starts one from
    torchrun's environment when `WORLD_SIZE` > 1 and ends it on the way out; else one process.
    """
    if dist.is_available() and dist.is_initialized():
        context = DistributedContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
        yield context, _device_for(context, device)
        return
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        yield SINGLE_PROCESS, device
        return
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if name not in os.environ]
    if missing:
        raise ValueError(
            f"WORLD_SIZE is {world_size} but {', '.join(missing)} is not set; launch with torchrun "
            "(torchrun --nproc-per-node N python -m diffnphr ...)."
        )
    context = DistributedContext(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", 0)))
    device = _device_for(context, device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, rank=context.rank, world_size=world_size, device_id=_nccl_device(device))
    logger.info("process %d of %d on %s (%s)", context.rank, world_size, device, backend)
    try:
        yield context, device
    finally:
        dist.destroy_process_group()


def _nccl_device(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def wrap(module: nn.Module, context: DistributedContext, device: torch.device) -> nn.Module:
    """`module` in `DistributedDataParallel` when several processes train (parameters then start as rank 0's),
    else `module` itself. Buffers are not broadcast at each forward: `broadcast_buffers` does it after each step."""
    if not context.enabled:
        return module
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=device_ids, broadcast_buffers=False)


def broadcast_buffers(modules: list[nn.Module], context: DistributedContext) -> None:
    """Give every process rank 0's buffers of `modules` (one broadcast per dtype and device)."""
    if not context.enabled:
        return
    groups: dict[tuple[torch.dtype, torch.device], list[Tensor]] = {}
    seen: set[int] = set()
    for module in modules:
        for buffer in module.buffers():
            if id(buffer) not in seen:
                seen.add(id(buffer))
                groups.setdefault((buffer.dtype, buffer.device), []).append(buffer)
    for buffers in groups.values():
        flat = _flatten_dense_tensors(buffers)
        dist.broadcast(flat, src=0)
        for buffer, value in zip(buffers, _unflatten_dense_tensors(flat, buffers)):
            buffer.copy_(value)
