"""Benchmark rows of single blocks with random weights of the real sizes: decoder, extraction, U-Net, DDIM, FaRL.

Mesh extraction needs a surface, which random decoder weights do not describe. The extraction
rows therefore query the small decoder at every grid node (so the cost per query is real) and
add its output, squashed to ±1e-3, to a head-sized ellipsoid's signed distance (so the narrow
band covers a head-sized surface).
"""

from __future__ import annotations

from typing import Any

import torch

from diffnphr.bench.common import timed
from diffnphr.frame import BOX_CENTRE

# Ellipsoid semi-axes (canonical units, 1 = 0.25 m): about a head with neck, centred in the box.
_HEAD_RADII = (0.38, 0.52, 0.46)


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


def bench_decoder(device: torch.device, quick: bool, size: str, with_rgb: bool) -> dict[str, Any]:
    decoder = _decoder(size, device)
    head = decoder.bind(*_random_latents(decoder.config, 1, device))
    n_points = (2**14 if quick else 2**16) if device.type == "cpu" else 2**20
    points = (torch.rand(1, n_points, 3, device=device) - 0.5) * 1.2
    query = head.sdf_and_rgb if with_rgb else head.sdf
    with torch.inference_mode():
        seconds = timed(lambda: query(points), device, 1 if quick else 3)
    return {"points": n_points, "seconds": round(seconds, 4), "queries_per_s": round(n_points / seconds)}


def bench_extraction(device: torch.device, quick: bool, method: str, resolution: int) -> dict[str, Any]:
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


def bench_unet_step(device: torch.device, quick: bool, batch: int) -> dict[str, Any]:
    model = _diffusion(device)
    length = model.config.sample_length
    x = torch.randn(batch, 1, length, device=device)
    t = torch.full((batch,), 500, device=device, dtype=torch.long)
    cond = torch.randn(batch, model.config.cond_dim, device=device)
    with torch.inference_mode():
        seconds = timed(lambda: model.unet(x, t, cond), device, 3 if quick else 10)
    return {"batch": batch, "length": length, "seconds": round(seconds, 4)}


def bench_ddim(device: torch.device, quick: bool, guidance_scale: float) -> dict[str, Any]:
    model = _diffusion(device)
    cond = torch.randn(1, model.config.cond_dim, device=device)
    seconds = timed(
        lambda: model.sample(cond, num_steps=25, seed=0, guidance_scale=guidance_scale), device, 1 if quick else 3
    )
    return {"steps": 25, "guidance_scale": guidance_scale, "seconds": round(seconds, 3)}


def bench_farl(device: torch.device, quick: bool) -> dict[str, Any]:
    from diffnphr.encoders.farl import FaceEncoder, farl_vision_config

    encoder = FaceEncoder.from_config(farl_vision_config()).to(device).eval()
    pixels = torch.randn(1, 3, 224, 224, device=device)
    with torch.inference_mode():
        seconds = timed(lambda: encoder(pixels), device, 2 if quick else 5)
    return {"model": "FaRL ViT-B/16", "batch": 1, "seconds": round(seconds, 4)}


def bench_baseline(device: torch.device, quick: bool) -> dict[str, Any]:
    torch.zeros(1, device=device)
    return {}
