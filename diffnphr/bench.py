"""`python -m diffnphr bench`: seconds and peak memory of every block on the machine it runs on.

Each measurement runs in a fresh spawned process, so its peak memory is its own: peak RSS of
that process on the CPU (it includes the Python + torch baseline, reported separately as
`baseline`), `torch.cuda.max_memory_allocated` on a GPU. Models carry random weights of the
real sizes: speed depends on shapes, not on values.

Mesh extraction needs a surface, which random decoder weights do not describe. The extraction
rows therefore query the small decoder at every grid node (so the cost per query is real) and
add its output, squashed to ±1e-3, to a head-sized ellipsoid's signed distance (so the narrow
band covers a head-sized surface).

The `pipeline_*` rows time one whole reconstruction stage by stage (crop, encode, diffusion,
extraction, colour) as `HeadReconstructionPipeline` runs them: after a warm-up call, the median
of 3 timed calls (1 with quick). They use the repo's `weights/` when it holds all three
blocks; otherwise the trained decoder with a randomly initialised encoder
(`weights/encoder/config.json`, else the project's small FaRL-layout tower) and diffusion model (`DiffusionConfig()`): their speed depends on shapes only, but their
latent is no head, so the decoder then meshes its first training head instead (`weights` in the
row says which).

The `app` row starts `app.py` as people run it and reconstructs the example portrait through
`gradio_client` at the app's defaults: seconds per request and the app process's peak RSS.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import torch

from diffnphr.devices import resolve_device
from diffnphr.frame import BOX_CENTRE

logger = logging.getLogger(__name__)

# The image encoder the project trains when `weights/encoder/` does not exist yet (issue 5).
_SMALL_ENCODER = dict(
    hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, image_size=128, patch_size=16
)

# Ellipsoid semi-axes (canonical units, 1 = 0.25 m): about a head with neck, centred in the box.
_HEAD_RADII = (0.38, 0.52, 0.46)


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of `repeats` calls of `fn` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        _synchronize(device)
        start = time.perf_counter()
        fn()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def _random_latents(config: Any, batch: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(0)
    z_geo = 0.1 * torch.randn(batch, config.z_geo_dim, generator=generator)
    z_exp = 0.1 * torch.randn(batch, config.lat_dim_exp, generator=generator)
    z_app = 0.1 * torch.randn(batch, config.z_app_dim, generator=generator)
    return z_geo.to(device), z_exp.to(device), z_app.to(device)


def _decoder(size: str, device: torch.device):
    from diffnphr.nphm.config import MonoNPHMConfig
    from diffnphr.nphm.decoder import MonoNPHM

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
    centre = torch.tensor(BOX_CENTRE, device=device)
    radii = torch.tensor(_HEAD_RADII, device=device)

    def sdf(points: torch.Tensor) -> torch.Tensor:
        scaled = ((points - centre) / radii).norm(dim=-1)
        ellipsoid = (scaled - 1.0) * radii.min()
        return ellipsoid + 1e-3 * torch.tanh(head.point_sdf(points))

    result = extract_mesh_with_stats(
        sdf, resolution=resolution, method=method, color_fn=head.point_colour, device=device
    )
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
    from diffnphr.diffusion.config import DiffusionConfig
    from diffnphr.diffusion.model import LatentDiffusion

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
    from diffnphr.encoders.farl import FaceEncoder, farl_vision_config

    encoder = FaceEncoder.from_config(farl_vision_config()).to(device).eval()
    pixels = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        seconds = _timed(lambda: encoder(pixels), device, 2 if quick else 5)
    return {"model": "FaRL ViT-B/16", "batch": 1, "seconds": round(seconds, 4)}


def _pipeline(device: torch.device) -> tuple[Any, str]:
    """The pipeline of the repo's weights, with random stand-ins for missing blocks, and which it is."""
    from transformers import CLIPVisionConfig

    from diffnphr.diffusion.config import DiffusionConfig
    from diffnphr.diffusion.model import LatentDiffusion
    from diffnphr.encoders.farl import FaceEncoder, farl_vision_config
    from diffnphr.nphm.decoder import MonoNPHM
    from diffnphr.pipeline import REPO_WEIGHTS_DIR, HeadReconstructionPipeline

    folders = [REPO_WEIGHTS_DIR / name for name in ("encoder", "diffusion", "decoder")]
    if all(folder.is_dir() for folder in folders):
        return HeadReconstructionPipeline.from_pretrained(REPO_WEIGHTS_DIR, device=device), "trained"
    if (folders[0] / "config.json").is_file():
        config = CLIPVisionConfig.from_pretrained(folders[0])
    else:
        config = farl_vision_config(**_SMALL_ENCODER)
    pipeline = HeadReconstructionPipeline(
        FaceEncoder.from_config(config).to(device),
        LatentDiffusion(DiffusionConfig()).to(device),
        MonoNPHM.from_pretrained(folders[2], device=device),
    )
    return pipeline, "trained decoder, random encoder and diffusion"


def _bench_pipeline(device: torch.device, quick: bool, resolution: int | None) -> dict[str, Any]:
    """Seconds per stage of a reconstruction, through the pipeline's own public stages (crop, encode,
    sample_latents, decode + mesh): after a warm-up call, the timed call with the median total of 3 (1 when
    quick): a shared machine's speed drifts from call to call and over minutes, so one call is not a figure
    to quote."""
    from diffnphr.heads.latents import CODEBOOKS_NAME, load_head_latents
    from diffnphr.nphm.latents import HeadLatents, unpack
    from diffnphr.pipeline import REPO_WEIGHTS_DIR

    pipeline, weights = _pipeline(device)
    settings = pipeline.settings(seed=0, resolution=resolution or pipeline.defaults.resolution)
    photo, crop_note = _face_photo()
    stand_in = None
    if weights != "trained":  # a random diffusion model samples no head: mesh a training head instead
        flat = load_head_latents(REPO_WEIGHTS_DIR / "decoder_latents", CODEBOOKS_NAME).flat()[0]
        stand_in = HeadLatents(*unpack(flat))

    def reconstruct() -> dict[str, Any]:
        seconds: dict[str, float] = {}

        def timed(stage: str, work: Callable[[], Any]) -> Any:
            start = time.perf_counter()
            value = work()
            _synchronize(device)
            seconds[stage] = time.perf_counter() - start
            return value

        if crop_note is None:
            crop = timed("crop", lambda: pipeline.crop(photo))
        else:
            crop = _UncroppedPhoto(photo)
        z_cond = timed("encode", lambda: pipeline.encode(crop))
        latents = timed("diffusion", lambda: pipeline.sample_latents(z_cond, settings))
        extraction = pipeline.mesh(pipeline.decode(stand_in or latents), settings.resolution)
        seconds["extraction"] = extraction.seconds_sdf + extraction.seconds_mcubes
        seconds["colour"] = extraction.seconds_color
        seconds = {name: round(value, 3) for name, value in seconds.items()}
        seconds["total"] = round(sum(seconds.values()), 3)
        return {
            "seconds": seconds,
            "extraction_sdf_s": round(extraction.seconds_sdf, 3),
            "extraction_mcubes_s": round(extraction.seconds_mcubes, 3),
            "sdf_queries": extraction.num_sdf_queries,
            "vertices": len(extraction.mesh.vertices),
        }

    first = reconstruct()
    calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call["seconds"]["total"])
    row = calls[len(calls) // 2]
    return {
        "weights": weights,
        "resolution": settings.resolution,
        "steps": settings.steps,
        "guidance_scale": settings.guidance_scale,
        "samples": settings.samples,
        **row,
        "timed_totals": [call["seconds"]["total"] for call in calls],
        "first_call_total": first["seconds"]["total"],
        **({"crop": crop_note} if crop_note else {}),
    }


@dataclass
class _UncroppedPhoto:
    """A photo handed to the encoder as it is, where MediaPipe is missing (the crop is then not timed)."""

    image: Any


def _bench_app(device: torch.device, quick: bool) -> dict[str, Any]:
    """The app as people reach it: `app.py` in its own process, reconstructions of the example
    portrait through `gradio_client` at the app's defaults (a warm-up call, then the median of 3,
    1 when quick), and that process's peak RSS: the figure the ≤ 3 GB goal is about, Gradio's
    server and queue included (the other rows measure the pipeline without them)."""
    from gradio_client import handle_file

    app_file = Path(__file__).resolve().parents[1] / "app.py"
    if not app_file.is_file():
        raise FileNotFoundError(f"the app row needs the repository's app.py, not found at {app_file}")
    photo, crop_note = _face_photo()
    if crop_note is not None:
        raise RuntimeError(f"the app row needs a face photo and MediaPipe: {crop_note}")
    with tempfile.TemporaryDirectory(prefix="diffnphr-bench-app-") as folder:
        photo_path = Path(folder) / "portrait.png"
        photo.save(photo_path)
        with socket.socket() as probe:  # a free port for this run
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        log_path = Path(folder) / "app.log"
        with log_path.open("w") as log:
            app = subprocess.Popen(
                [sys.executable, str(app_file), "--device", device.type], env=env, stdout=log, stderr=log
            )
        try:
            started = time.perf_counter()
            client = _connect(f"http://127.0.0.1:{port}/", app, log_path, started)
            ready_s = time.perf_counter() - started

            def reconstruct() -> tuple[float, dict[str, Any]]:
                start = time.perf_counter()
                *_, details = client.predict(handle_file(str(photo_path)), 0, False, api_name="/reconstruct")
                return time.perf_counter() - start, details

            first_s, _ = reconstruct()
            calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call[0])
            wall_s, details = calls[len(calls) // 2]
        finally:
            app.terminate()
            app.wait(timeout=60)
    return {
        "vertices": details["vertices"],
        "request_s": round(wall_s, 3),
        "pipeline_seconds": details["seconds"],
        "timed_requests_s": [round(call[0], 3) for call in calls],
        "first_request_s": round(first_s, 3),
        "ready_s": round(ready_s, 1),
        "app_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    }


def _connect(url: str, app: subprocess.Popen, log_path: Path, started: float, timeout_s: float = 300.0) -> Any:
    """A `gradio_client.Client` of the app at `url` once it serves, or an error with the app's last words."""
    from gradio_client import Client

    while True:
        if app.poll() is not None:
            raise RuntimeError(f"app.py exited ({app.returncode}) before serving: {log_path.read_text()[-800:]}")
        try:
            return Client(url, verbose=False)
        except Exception as error:
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"app.py did not serve within {timeout_s:.0f} s") from error
            time.sleep(1.0)


def _face_photo() -> tuple[Any, str | None]:
    """The app's example portrait, or a grey square and why crop timing is left out."""
    from PIL import Image

    try:
        import mediapipe  # noqa: F401
        from skimage import data
    except ImportError as error:
        return Image.new("RGB", (512, 512), (128, 128, 128)), f"not timed: {error.name} is not installed"
    return Image.fromarray(data.astronaut()), None


def _synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that wall-clock seconds cover it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


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
            cases.append(
                (f"extract_{method}_{resolution}", _bench_extraction, {"method": method, "resolution": resolution})
            )
    cases += [
        ("unet_step_batch1", _bench_unet_step, {"batch": 1}),
        ("unet_step_batch2", _bench_unet_step, {"batch": 2}),
        ("ddim_25_steps", _bench_ddim, {"guidance_scale": 1.0}),
        ("ddim_25_steps_guided", _bench_ddim, {"guidance_scale": 2.0}),
        ("farl_forward", _bench_farl, {}),
    ]
    if not quick:
        cases.append(("pipeline_default", _bench_pipeline, {"resolution": None}))
    cases.append(("pipeline_128", _bench_pipeline, {"resolution": 128}))
    cases.append(("app", _bench_app, {}))
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

    `only` names the cases to run (default all), e.g. just the whole pipeline on a machine with
    little time to spare.

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
        if only and name not in only:
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
