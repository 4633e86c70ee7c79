"""Inference passes over many points on the CPU, side by side on single-threaded workers.

The decoder's CPU work is thousands of small GEMMs and in-place activations per pass (each
ensemble member's rows while they are in the cache). Split over torch's OpenMP threads, every
small op is a fork and a join: fast while the calling thread's OpenMP workers spin, about three
times slower from any thread but the main one (a Gradio worker thread: 7.3 s instead of 2.4 s
for the SDF of a 128³ head on 2 cores) and on a busy machine. So each pass runs whole on one
worker with one torch thread, as many workers as torch has threads, and nothing waits per op.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

Result = TypeVar("Result")
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def map_passes(work: Callable[[torch.Tensor], Result], parts: Sequence[torch.Tensor]) -> list[Result]:
    """`[work(part) for part in parts]`, in order, computed on the workers without autograd.

    For inference only: the workers record no autograd, and run in inference mode when the
    caller does (else under `no_grad`), so the results are tensors of the caller's kind. With one
    torch thread, or a single part, it runs here. An error in any part is raised here.
    """
    pool = _workers()
    if pool is None or len(parts) < 2:
        return [work(part) for part in parts]
    no_autograd = torch.inference_mode if torch.is_inference_mode_enabled() else torch.no_grad

    def run(part: torch.Tensor) -> Result:
        with no_autograd():
            return work(part)

    return list(pool.map(run, parts))


def _forget_workers() -> None:
    """In a forked child the pool's threads do not exist: make a new pool there on first use."""
    global _pool, _pool_lock
    _pool, _pool_lock = None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_workers)


def _workers() -> ThreadPoolExecutor | None:
    """The process's pool, made on first use with one worker per torch thread (None for a single thread)."""
    global _pool
    with _pool_lock:
        if _pool is None and torch.get_num_threads() > 1:
            _pool = ThreadPoolExecutor(
                torch.get_num_threads(),
                thread_name_prefix="diffnphr-cpu",
                initializer=torch.set_num_threads,
                initargs=(1,),
            )
        return _pool
