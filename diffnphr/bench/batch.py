"""The `batch` rows: heads per second when several photos go through one pipeline call (issue 29, item 3).

Each batch size runs `pipeline([photo] * heads, settings)` with the example portrait and one
seed per head (0, 1, ...): a warm-up call, then the call with the median time of 3 (1 when
quick). Without MediaPipe (a GPU image) the photo's centre square goes in as a ready crop, so the
crop is not timed (`crop` in the row says so). On a CPU at 64³ (so that 16 heads finish in a bench run), on a GPU at the pipeline's
default resolution. The row also says how far head 0 of the largest batch lies from the same
head reconstructed alone (the same photo and seed): batching must not move the mesh. Besides the
wall-clock seconds, the process's CPU seconds per head (all its threads): on a machine shared with
other work, the work a head costs, which the wall clock there does not show.

The `served_batches` row is the serving side of the same (issue 29, item 4) without Gradio:
`clients` threads each send `requests` reconstructions one after another through the app's own
`RequestBatcher` and `reconstruction_batches`, once batched (the device's batch size, or 8) and
once one at a time (each request behind a lock, as Gradio's queue with one worker runs them);
latency p50 / p95 and throughput of both, beside the seconds of one request alone.
"""

from __future__ import annotations

import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from diffnphr.bench.common import pipeline_input, synchronize
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
    photo, crop_note = pipeline_input()
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
        **({"crop": crop_note} if crop_note else {}),
    }


def _largest_offset_mm(alone: Any, together: Any) -> float | None:
    """The largest distance between corresponding vertices of two meshes of one head, in mm (None if they differ in
    size: then the meshes are not the same)."""
    from diffnphr.frame import MM_PER_UNIT

    if alone.vertices.shape != together.vertices.shape or not np.array_equal(alone.faces, together.faces):
        return None
    return float(np.abs(alone.vertices - together.vertices).max() * MM_PER_UNIT)


def bench_served_batches(
    device: torch.device,
    quick: bool,
    clients: int = 16,
    requests: int = 5,
    max_batch_size: int | None = None,
    resolution: int | None = None,
) -> dict[str, Any]:
    """16 clients × 5 requests (4 × 2 when quick) through the app's batcher, batched (up to `max_batch_size`, None:
    a GPU server's 8) and one at a time, in one run: latency p50 / p95 and requests per second of each, the batch
    sizes that formed, and one request's seconds alone (median of 3 after a warm-up). On a CPU at 64³, on a GPU at
    the default resolution (unless `resolution`); the crop as in the batch row."""
    from diffnphr.serving.batching import BatchingOptions, ReconstructionRequest, RequestBatcher, reconstruction_batches

    pipeline, weights = bench_pipeline_models(device)
    if weights != "trained":
        raise RuntimeError(f"this row needs trained weights in weights/ (a random diffusion gives no head): {weights}")
    clients, requests = (4, 2) if quick else (clients, requests)
    if resolution is None:
        resolution = CPU_RESOLUTION if device.type == "cpu" else pipeline.defaults.resolution
    photo, crop_note = pipeline_input()
    batching = BatchingOptions.for_device("cuda", max_batch_size)  # the GPU server's batches, on either device
    run_batch, batch_sizes = reconstruction_batches(pipeline), []

    def counted(jobs: list[ReconstructionRequest], progress: Any) -> list[Any]:
        batch_sizes.append(len(jobs))
        return run_batch(jobs, progress)

    def request(index: int) -> ReconstructionRequest:
        return ReconstructionRequest(photo, pipeline.settings(seed=index, resolution=resolution))

    def one(job: ReconstructionRequest) -> None:
        outcome = run_batch([job], lambda stage, fraction: None)[0]
        if isinstance(outcome, BaseException):
            raise outcome

    def alone() -> float:
        synchronize(device)
        start = time.perf_counter()
        one(request(0))
        synchronize(device)
        return time.perf_counter() - start

    alone()
    single_s = sorted(alone() for _ in range(3))[1]
    batcher = RequestBatcher(counted, batching)
    lock = threading.Lock()

    def one_at_a_time(job: ReconstructionRequest) -> None:
        with lock:
            one(job)

    rows = {
        "batched": _load(batcher.submit, request, clients, requests),
        "one_at_a_time": _load(one_at_a_time, request, clients, requests),
    }
    batcher.close()
    return {
        "weights": weights,
        "resolution": resolution,
        "clients": clients,
        "requests_each": requests,
        "max_batch_size": batching.max_batch_size,
        "window_s": batching.window_s,
        "single_request_s": round(single_s, 3),
        **rows,
        "batch_sizes": {size: batch_sizes.count(size) for size in sorted(set(batch_sizes))},
        "batched_p95_over_single": round(rows["batched"]["latency_p95_s"] / single_s, 2),
        "throughput_batched_over_one_at_a_time": round(
            rows["batched"]["requests_per_s"] / rows["one_at_a_time"]["requests_per_s"], 2
        ),
        **({"crop": crop_note} if crop_note else {}),
    }


def _load(send: Any, request: Any, clients: int, requests: int) -> dict[str, Any]:
    """`clients` threads, each sending `requests` requests one after another through `send`: latency p50 / p95 (s),
    requests per second over the whole run."""
    barrier = threading.Barrier(clients)

    def client(index: int) -> list[float]:
        barrier.wait()
        seconds = []
        for number in range(requests):
            start = time.perf_counter()
            send(request(index * requests + number))
            seconds.append(time.perf_counter() - start)
        return seconds

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        latencies = sorted(seconds for user in pool.map(client, range(clients)) for seconds in user)
    wall_s = time.perf_counter() - started
    return {
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[round(0.95 * (len(latencies) - 1))], 3),
        "requests_per_s": round(len(latencies) / wall_s, 3),
        "wall_s": round(wall_s, 2),
    }
