"""`python -m diffnphr bench`: seconds and peak memory of every block on the machine it runs on.

Each measurement runs in a fresh spawned process, so its peak memory is its own: peak RSS of
that process on the CPU (it includes the Python + torch baseline, reported separately as
`baseline`), `torch.cuda.max_memory_allocated` on a GPU. Models carry random weights of the
real sizes: speed depends on shapes, not on values.

Rows by module: `blocks` (decoder, extraction, U-Net, DDIM, FaRL with random weights of the real
sizes), `pipeline` (one whole reconstruction stage by stage through the pipeline's own stages:
after a warm-up call, the median of 3 timed calls, 1 with quick), `batch` (heads per second with
several photos in one pipeline call, at batch 1, 4 and 16), `served` (the app through `gradio_client`: request time and peak RSS, and the app under load, batched and
one at a time), `gpu` (torch marching cubes on the GPU against PyMCubes; TF32 and bf16 against float32), `renders` (training batches
of fresh heads: renders/s).

`run_benchmarks` is imported on first use, so a row's module (e.g. `diffnphr.bench.renders` on a
training machine without the app's mesh and serving packages) imports without the others.
"""

from typing import Any

__all__ = ["run_benchmarks"]


def __getattr__(name: str) -> Any:
    """`run_benchmarks`, imported when first asked for (module docstring)."""
    if name == "run_benchmarks":
        from diffnphr.bench.run import run_benchmarks

        return run_benchmarks
    raise AttributeError(f"module 'diffnphr.bench' has no attribute {name!r}")
