"""`python -m diffnphr bench`: seconds and peak memory of every block on the machine it runs on.

Each measurement runs in a fresh spawned process, so its peak memory is its own: peak RSS of
that process on the CPU (it includes the Python + torch baseline, reported separately as
`baseline`), `torch.cuda.max_memory_allocated` on a GPU. Models carry random weights of the
real sizes: speed depends on shapes, not on values.

Mesh extraction needs a surface, which random decoder weights do not describe. The extraction
rows therefore query the small decoder at every grid node (so the cost per query is real) and
add its output, squashed to ±1e-3, to a head-sized ellipsoid's signed distance (so the narrow
band covers a head-sized surface).
"""

from __future__ import annotations

import multiprocessing
import platform
import resource
import sys
import time
from queue import Empty
from collections.abc import Callable
from typing import IO, Any

import torch

from diffnphr.mesh import BOX_MAX, BOX_MIN

# Ellipsoid semi-axes (canonical units, 1 = 0.25 m): about a head with neck, centred in the box.
_HEAD_RADII = (0.38, 0.52, 0.46)
_HEAD_CENTRE = tuple((lo + hi) / 2 for lo, hi in zip(BOX_MIN, BOX_MAX))


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _random_latents(config: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    z_geo = 0.1 * torch.randn(batch, config.z_geo_dim, generator=generator)
    z_exp = 0.1 * torch.randn(batch, config.lat_dim_exp, generator=generator)
    z_app = 0.1 * torch.randn(batch, config.z_app_dim, generator=generator)
    return z_geo.to(device), z_exp.to(device), z_app.to(device)


def _decoder(size: str, device: torch.device):
    from diffnphr.nphm import MonoNPHM, MonoNPHMConfig

    config = MonoNPHMConfig() if size == "official" else MonoNPHMConfig.small()
    template = torch.randn(config.n_anchors, 3, generator=torch.Generator().manual_seed(0)) * 0.3
    return MonoNPHM(config, template).to(device).eval()


def _bench_decoder(device: torch.device, quick: bool, size: str, with_rgb: bool) -> dict[str, Any]:
    decoder = _decoder(size, device)
    head = decoder.bind(*_random_latents(decoder.config, 1, device))
    n_points = (2**14 if quick else 2**16) if device.type == "cpu" else 2**20
    points = (torch.rand(1, n_points, 3, device=device) - 0.5) * 1.2
    query = head.sdf_and_rgb if with_rgb else head.sdf
    with torch.inference_mode():
        seconds = _timed(lambda: query(points), device, 1 if quick else 3)
    return {"points": n_points, "seconds": round(seconds, 4), "queries_per_s": round(n_points / seconds)}


def _bench_extraction(device: torch.device, quick: bool, method: str, resolution: int) -> dict[str, Any]:
    from diffnphr.mesh import extract_mesh_with_stats

    decoder = _decoder("small", device)
    z_geo, z_exp, z_app = _random_latents(decoder.config, 1, device)
    head = decoder.bind(z_geo, z_exp, z_app)
    centre = torch.tensor(_HEAD_CENTRE, device=device)
    radii = torch.tensor(_HEAD_RADII, device=device)

    def sdf(points: torch.Tensor) -> torch.Tensor:
        scaled = ((points - centre) / radii).norm(dim=-1)
        ellipsoid = (scaled - 1.0) * radii.min()
        return ellipsoid + 1e-3 * torch.tanh(head.point_sdf(points))

    result = extract_mesh_with_stats(sdf, resolution=resolution, method=method, color_fn=head.point_colour, device=device)
    return {
        "resolution": resolution,
        "sdf_queries": result.num_sdf_queries,
        "vertices": len(result.mesh.vertices),
        "seconds_sdf": round(result.seconds_sdf, 3),
        "seconds_mcubes": round(result.seconds_mcubes, 3),
        "seconds_color": round(result.seconds_color, 3),
        "seconds": round(result.seconds_sdf + result.seconds_mcubes + result.seconds_color, 3),
    }


def _diffusion(device: torch.device):
    from diffnphr.diffusion import DiffusionConfig, LatentDiffusion

    return LatentDiffusion(DiffusionConfig()).to(device).eval()


def _bench_unet_step(device: torch.device, quick: bool, batch: int) -> dict[str, Any]:
    model = _diffusion(device)
    length = model.config.sample_length
    x = torch.randn(batch, 1, length, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    cond = torch.randn(batch, model.config.cond_dim, device=device)
    with torch.inference_mode():
        seconds = _timed(lambda: model.unet(x, t, cond), device, 3 if quick else 10)
    return {"batch": batch, "length": length, "seconds": round(seconds, 4)}


def _bench_ddim(device: torch.device, quick: bool, guidance_scale: float) -> dict[str, Any]:
    model = _diffusion(device)
    cond = torch.randn(1, model.config.cond_dim, device=device)
    seconds = _timed(
        lambda: model.sample(cond, num_steps=25, seed=0, guidance_scale=guidance_scale), device, 1 if quick else 3
    )
    return {"steps": 25, "guidance_scale": guidance_scale, "seconds": round(seconds, 3)}


def _bench_farl(device: torch.device, quick: bool) -> dict[str, Any]:
    from diffnphr.encoders import FaceEncoder, farl_vision_config

    encoder = FaceEncoder.from_config(farl_vision_config()).to(device).eval()
    pixels = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        seconds = _timed(lambda: encoder(pixels), device, 2 if quick else 5)
    return {"model": "FaRL ViT-B/16", "batch": 1, "seconds": round(seconds, 4)}


def _bench_baseline(device: torch.device, quick: bool) -> dict[str, Any]:
    torch.zeros(1, device=device)
    return {}


def _cases(quick: bool) -> list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]]:
    resolutions = (128,) if quick else (128, 256)
    cases: list[tuple[str, Callable[..., dict[str, Any]], dict[str, Any]]] = [
        ("baseline", _bench_baseline, {}),
        ("decoder_sdf_official", _bench_decoder, {"size": "official", "with_rgb": False}),
        ("decoder_sdf_rgb_official", _bench_decoder, {"size": "official", "with_rgb": True}),
        ("decoder_sdf_small", _bench_decoder, {"size": "small", "with_rgb": False}),
        ("decoder_sdf_rgb_small", _bench_decoder, {"size": "small", "with_rgb": True}),
    ]
    for resolution in resolutions:
        for method in ("narrow_band", "dense"):
            cases.append((f"extract_{method}_{resolution}", _bench_extraction, {"method": method, "resolution": resolution}))
    cases += [
        ("unet_step_batch1", _bench_unet_step, {"batch": 1}),
        ("unet_step_batch2", _bench_unet_step, {"batch": 2}),
        ("ddim_25_steps", _bench_ddim, {"guidance_scale": 1.0}),
        ("ddim_25_steps_guided", _bench_ddim, {"guidance_scale": 2.0}),
        ("farl_forward", _bench_farl, {}),
    ]
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


def run_benchmarks(device: str | None = None, quick: bool = False, progress: IO[str] | None = None) -> dict[str, Any]:
    """Time every block (decoder, extraction, U-Net, DDIM, FaRL) and report peak memory per block.

    Returns {"device": ..., "torch": ..., "threads": ..., "results": [{"name": ..., ...}, ...]}.
    """
    device_name = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device_name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for, but torch sees no GPU on this machine; use --device cpu.")
    context = multiprocessing.get_context("spawn")
    results = []
    for name, fn, kwargs in _cases(quick):
        if progress is not None:
            print(f"bench: {name} ...", file=progress, flush=True)
        queue = context.Queue()
        process = context.Process(target=_run_case, args=(fn, device_name, quick, kwargs, queue))
        process.start()
        row = _result_of(process, queue)
        results.append({"name": name, **row})
    described = torch.cuda.get_device_name(0) if device_name.startswith("cuda") else platform.processor() or platform.machine()
    return {
        "device": f"{device_name} ({described})",
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "results": results,
    }
