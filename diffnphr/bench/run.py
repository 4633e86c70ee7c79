"""The benchmark runner: every row in a fresh spawned process, its peak memory its own."""

from __future__ import annotations

import logging
import multiprocessing
import platform
import resource
import sys
from collections.abc import Callable, Sequence
from queue import Empty
from typing import Any

import torch

from diffnphr.bench.batch import bench_batch, bench_served_batches
from diffnphr.bench.blocks import (
    bench_baseline,
    bench_ddim,
    bench_decoder,
    bench_extraction,
    bench_farl,
    bench_unet_step,
)
from diffnphr.bench.gpu import bench_marching, bench_precision
from diffnphr.bench.pipeline import bench_pipeline
from diffnphr.bench.renders import bench_renders
from diffnphr.bench.served import bench_app, bench_load
from diffnphr.devices import resolve_device

logger = logging.getLogger(__name__)
# minutes of work, or GPU-only: run only when named
OPT_IN = (
    "load",
    "load_16x5",
    "load_16x5_one_at_a_time",
    "served_batches",
    "batch_extraction_together",
    "batch_extraction_head_by_head",
    "pipeline_384",
    "pipeline_512",
    "marching_gpu",
    "precision",
)


def _cases(quick: bool) -> list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]]:
    resolutions = (128,) if quick else (128, 256)
    cases: list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]] = [
        ("baseline", bench_baseline, {}),
        ("decoder_sdf_official", bench_decoder, {"size": "official", "with_rgb": False}),
        ("decoder_sdf_rgb_official", bench_decoder, {"size": "official", "with_rgb": True}),
        ("decoder_sdf_small", bench_decoder, {"size": "small", "with_rgb": False}),
        ("decoder_sdf_rgb_small", bench_decoder, {"size": "small", "with_rgb": True}),
    ]
    for resolution in resolutions:
        for method in ("narrow_band", "dense"):
            cases.append(
                (f"extract_{method}_{resolution}", bench_extraction, {"method": method, "resolution": resolution})
            )
    cases += [
        ("unet_step_batch1", bench_unet_step, {"batch": 1}),
        ("unet_step_batch2", bench_unet_step, {"batch": 2}),
        ("ddim_25_steps", bench_ddim, {"guidance_scale": 1.0}),
        ("ddim_25_steps_guided", bench_ddim, {"guidance_scale": 2.0}),
        ("farl_forward", bench_farl, {}),
    ]
    render_size = 64 if quick else 160  # 160: the encoder's input in the v3 run
    for copies in (1, 4):
        cases.append(
            (f"renders_{render_size}_copies{copies}", bench_renders, {"image_size": render_size, "copies": copies})
        )
    if not quick:
        cases.append(("pipeline_default", bench_pipeline, {"resolution": None}))
    cases.append(("pipeline_128", bench_pipeline, {"resolution": 128}))
    # the rest of the GPU's scaling table (128 and the default 256 above): opt-in
    cases.append(("pipeline_384", bench_pipeline, {"resolution": 384}))
    cases.append(("pipeline_512", bench_pipeline, {"resolution": 512}))
    cases.append(("marching_gpu", bench_marching, {}))  # torch marching cubes on the GPU against PyMCubes
    cases.append(("precision", bench_precision, {}))  # TF32 / bf16 against float32: seconds and Chamfer
    cases.append(("batch", bench_batch, {}))  # heads/s at batch 1, 4, 16 (64³ on a CPU)
    # the two ways of extracting a batch, whichever the device would choose: opt-in, to compare them
    cases.append(("batch_extraction_together", bench_batch, {"batch_extraction": True}))
    cases.append(("batch_extraction_head_by_head", bench_batch, {"batch_extraction": False}))
    cases.append(("app", bench_app, {}))
    cases.append(("load", bench_load, {}))  # minutes of requests: runs only when named (OPT_IN)
    # issue 29's served load: 16 clients × 5 requests, batched (the device's batch size) and one at a time
    cases.append(("load_16x5", bench_load, {"clients": 16, "requests": 5}))
    cases.append(("load_16x5_one_at_a_time", bench_load, {"clients": 16, "requests": 5, "max_batch_size": 1}))
    cases.append(("served_batches", bench_served_batches, {}))  # the same through the batcher, without Gradio
    return cases


def _run_case(fn: Callable[..., dict[str, Any]], device_name: str, quick: bool, kwargs: dict[str, Any], queue) -> None:
    """Child-process body: run one case and put its metrics (or its error) on `queue`."""
    device = torch.device(device_name)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        row = fn(device, quick, **kwargs)
    except Exception as error:  # reported in the table, the other cases still run
        queue.put({"error": f"{type(error).__name__}: {error}"})
        return
    row["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    if device.type == "cuda":
        row["peak_gpu_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    queue.put(row)


def _result_of(process, queue) -> dict[str, Any]:
    """The metrics a case's process put on `queue`, or an error row if it died without any."""
    while True:
        try:
            row = queue.get(timeout=1.0)
            break
        except Empty:
            if not process.is_alive():
                row = {"error": f"the benchmark process died (exit code {process.exitcode}), e.g. out of memory"}
                break
    process.join()
    return row


def run_benchmarks(device: str | None = None, quick: bool = False, only: Sequence[str] | None = None) -> dict[str, Any]:
    """Time every block (decoder, extraction, U-Net, DDIM, FaRL) and whole reconstructions, with peak memory.

    `only` names the cases to run (default all but those in `OPT_IN`, which take minutes or need a GPU: the
    `load` rows (8 clients × 10 requests to the served app; 16 × 5 batched and one at a time), `served_batches`
    (16 × 5 through the batcher, without Gradio), the batch rows with either extraction forced, the pipeline at
    384³ and 512³, `marching_gpu` and `precision`), e.g. just the whole pipeline on a machine with little time.

    Returns {"device": ..., "torch": ..., "threads": ..., "results": [{"name": ..., ...}, ...]}.
    """
    device_name = str(resolve_device(device))
    cases = _cases(quick)
    unknown = sorted(set(only or ()) - {name for name, _, _ in cases})
    if unknown:
        raise ValueError(f"unknown bench cases {', '.join(unknown)}; choose from {', '.join(n for n, _, _ in cases)}")
    context = multiprocessing.get_context("spawn")
    results = []
    for name, fn, kwargs in cases:
        if (only and name not in only) or (not only and name in OPT_IN):
            continue
        logger.info("bench: %s ...", name)
        queue = context.Queue()
        process = context.Process(target=_run_case, args=(fn, device_name, quick, kwargs, queue))
        process.start()
        row = _result_of(process, queue)
        results.append({"name": name, **row})
    described = (
        torch.cuda.get_device_name(0) if device_name.startswith("cuda") else platform.processor() or platform.machine()
    )
    return {
        "device": f"{device_name} ({described})",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "results": results,
    }
