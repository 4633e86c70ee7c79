"""The `batch` rows: heads per second when several photos go through one pipeline call (issue 29, item 3).

Each batch size runs `pipeline([photo] * heads, settings)` with the example portrait and one
seed per head (0, 1, ...): a warm-up call, then the call with the median time of 3 (1 when
quick). On a CPU at 64³ (so that 16 heads finish in a bench run), on a GPU at the pipeline's
default resolution. The row also says how far head 0 of the largest batch lies from the same
head reconstructed alone (the same photo and seed): batching must not move the mesh. Besides the
wall-clock seconds, the process's CPU seconds per head (all its threads): on a machine shared with
other work, the work a head costs, which the wall clock there does not show.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from diffnphr.bench.common import face_photo, synchronize
from diffnphr.bench.pipeline import bench_pipeline_models

CPU_RESOLUTION = 64
BATCH_SIZES = (1, 4, 16)
QUICK_BATCH_SIZES = (1, 4)


def bench_batch(
    device: torch.device,
    quick: bool,
    batch_extraction: bool | None = None,
    resolution: int | None = None,
    batch_sizes: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Heads per second at each batch size (`BATCH_SIZES`; `QUICK_BATCH_SIZES` when quick), with the seconds per
    stage of the timed call and, on a GPU, its peak memory. `batch_extraction` as `ExecutionOptions` (None: the
    pipeline's own choice for the device)."""
    from diffnphr.mesh.extract import NoSurfaceError
    from diffnphr.pipeline import ExecutionOptions

    pipeline, weights = bench_pipeline_models(device)
    if weights != "trained":
        raise RuntimeError(
            f"the batch rows need trained weights in weights/ (a random diffusion gives no head): {weights}"
        )
    pipeline.execution = ExecutionOptions(batch_extraction=batch_extraction)
    if resolution is None:
        resolution = CPU_RESOLUTION if device.type == "cpu" else pipeline.defaults.resolution
    photo, crop_note = face_photo()
    if crop_note is not None:
        raise RuntimeError(f"the batch rows need a face photo and MediaPipe: {crop_note}")
    rows, meshes = [], {}
    for heads in batch_sizes or (QUICK_BATCH_SIZES if quick else BATCH_SIZES):
        settings = [pipeline.settings(seed=seed, resolution=resolution) for seed in range(heads)]
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def reconstruct(settings: list = settings, heads: int = heads) -> tuple[float, list, float]:
            synchronize(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                results = pipeline([photo] * heads, settings)
            except NoSurfaceError as error:
                raise RuntimeError(f"a head of the batch had no surface: {error}") from error
            synchronize(device)
            return time.perf_counter() - start, results, time.process_time() - cpu_start

        first_s, *_ = reconstruct()
        calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call[0])
        seconds, results, cpu_seconds = calls[len(calls) // 2]
        meshes[heads] = results[0].mesh
        row = {
            "heads": heads,
            "seconds": round(seconds, 3),
            "heads_per_s": round(heads / seconds, 3),
            "cpu_s_per_head": round(cpu_seconds / heads, 3),
            "seconds_per_stage": results[0].timings,
            "timed_calls_s": [round(call[0], 3) for call in calls],
            "first_call_s": round(first_s, 3),
        }
        if device.type == "cuda":
            row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
        rows.append(row)
    alone, together = meshes[min(meshes)], meshes[max(meshes)]
    return {
        "weights": weights,
        "resolution": resolution,
        "steps": pipeline.defaults.steps,
        "samples": pipeline.defaults.samples,
        "extraction": "together" if pipeline.execution.batches_extraction(device) else "head by head",
        "batches": rows,
        "head0_offset_from_alone_mm": _largest_offset_mm(alone, together),
    }


def _largest_offset_mm(alone: Any, together: Any) -> float | None:
    """The largest distance between corresponding vertices of two meshes of one head, in mm (None if they differ in
    size: then the meshes are not the same)."""
    from diffnphr.frame import MM_PER_UNIT

    if alone.vertices.shape != together.vertices.shape or not np.array_equal(alone.faces, together.faces):
        return None
    return float(np.abs(alone.vertices - together.vertices).max() * MM_PER_UNIT)
