"""Figures of `eval reconstruction`: renders beside reconstructions and ground truth, and the steps chart."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.eval.reconstruction.methods import BASELINES, DIFFUSION_STEPS, GUIDANCE_SCALES
from diffnphr.eval.reconstruction.renders import CHUNK, DIFFUSION_SEED, render_scenes
from diffnphr.eval.reconstruction.report import headline

if TYPE_CHECKING:
    from diffnphr.eval.reconstruction.work import Work


def write_figures(directory: Path, report: dict[str, Any], work: Work, count: int, resolution: int) -> dict[str, Any]:
    """Side-by-side PNGs (frame | crop | reconstruction front, 45° | ground truth front, 45°) of the first
    `count` evaluation renders at the default diffusion setting, the astronaut portrait through the
    app's pipeline, and the steps-vs-Chamfer chart; returns the paths written and notes."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    models = work.models
    for index in range(count):
        chunk = work.renders.chunk_of(index)
        rows = work.renders.chunk_rows(chunk)
        scenes = render_scenes(
            models.renderer,
            work.split,
            work.renders.identities[rows],
            work.renders.slots[rows],
            work.renders.seed(chunk, 0),
            models.device,
        )
        at = index - chunk * CHUNK
        frame = models.renderer.render_frames(scenes)[at]
        crop = models.renderer.render_crops(scenes)[at]
        mesh = work.mesh(work.latent(work.default, index), colours=True)
        truth = work.truth(index)
        panels = [
            _image_panel(frame),
            _image_panel(crop),
            *_mesh_panels(mesh.vertices, mesh.faces, mesh.visual.vertex_colors),
            *_mesh_panels(truth["vertices"], truth["faces"], truth["colours"]),
        ]
        identity, slot = int(work.renders.identities[index]), int(work.renders.slots[index])
        path = directory / f"reconstruction_identity{identity:04d}_slot{slot}.png"
        Image.fromarray(np.concatenate(panels, axis=1)).save(path)
        written.append(str(path))
    try:
        written.append(str(_astronaut_figure(directory, models.pipeline, resolution)))
    except ImportError as error:
        notes.append(f"astronaut figure skipped: {error} (it needs scikit-image and MediaPipe, i.e. the CPU machine)")
    written.append(str(steps_chart(report, directory / "steps_vs_chamfer.png")))
    return {"written": written, "notes": notes}


PANEL = 256


def _image_panel(image: Tensor) -> np.ndarray:
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.asarray(Image.fromarray(pixels).resize((PANEL, PANEL), Image.Resampling.BICUBIC))


def _mesh_panels(vertices, faces, colours) -> list[np.ndarray]:
    from diffnphr.render import render_mesh

    vertices = torch.as_tensor(
        np.asarray(vertices) if not isinstance(vertices, Tensor) else vertices, dtype=torch.float32
    )
    faces = faces if isinstance(faces, Tensor) else np.asarray(faces)
    return [render_mesh(vertices, faces, colours, yaw_deg=yaw, size=PANEL) for yaw in (0.0, 45.0)]


def _astronaut_figure(directory: Path, pipeline, resolution: int) -> Path:
    """photo | crop | reconstruction front, 45° for scikit-image's astronaut (NASA, public domain)."""
    import mediapipe  # noqa: F401  (the crop needs it; fail early and clearly without it)
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    result = pipeline(photo, seed=DIFFUSION_SEED, resolution=resolution)
    panels = [
        np.asarray(photo.resize((PANEL, PANEL))),
        np.asarray(result.crop.image.resize((PANEL, PANEL))),
        *_mesh_panels(result.mesh.vertices, result.mesh.faces, result.mesh.visual.vertex_colors),
    ]
    path = directory / "reconstruction_astronaut.png"
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return path


def steps_chart(report: dict[str, Any], path: Path) -> Path:
    """A line chart (PNG, PIL only) of mean head Chamfer against DDIM steps per guidance scale, baselines dashed,
    the default setting (samples averaged) as a square at its steps."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 420, 60
    curve = [row for row in report["steps_curve"] if row["chamfer_l1_mm"] is not None]
    baselines = {
        m: headline(report["methods"][m])["chamfer_l1_mm"]
        for m in (*(method.name for method in BASELINES), "decoder_fit")
        if m in report["methods"] and report["methods"][m].get("head")
    }
    default = report["goal"]["method"]
    default_steps, default_samples = report["default_setting"]["steps"], report["default_setting"]["samples"]
    default_value = (
        headline(report["methods"][default])["chamfer_l1_mm"]
        if default in report["methods"] and default_steps in DIFFUSION_STEPS
        else None
    )
    values = [row["chamfer_l1_mm"] for row in curve] + list(baselines.values())
    values += [default_value] if default_value is not None else []
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if not values:
        draw.text((margin, height // 2), "no finished results yet", fill="black")
        image.save(path)
        return path
    low, high = 0.0, max(values) * 1.1
    steps = list(DIFFUSION_STEPS)

    def x(step: int) -> float:
        return margin + (width - 2 * margin) * steps.index(step) / max(len(steps) - 1, 1)

    def y(value: float) -> float:
        return height - margin - (height - 2 * margin) * (value - low) / (high - low)

    draw.line([(margin, margin), (margin, height - margin), (width - margin, height - margin)], fill="black")
    for step in steps:
        draw.text((x(step) - 6, height - margin + 8), str(step), fill="black")
    for tick in np.linspace(low, high, 5):
        draw.text((8, y(tick) - 6), f"{tick:.1f}", fill="black")
    draw.text((width // 2 - 60, height - 24), "DDIM steps", fill="black")
    draw.text((8, 12), "mean head Chamfer-L1 (mm)", fill="black")
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for n, guidance in enumerate(GUIDANCE_SCALES):
        points = [(x(r["steps"]), y(r["chamfer_l1_mm"])) for r in curve if r["guidance"] == guidance]
        if len(points) > 1:
            draw.line(points, fill=palette[n], width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=palette[n])
        draw.text((width - margin - 130, margin + 16 * n), f"diffusion, guidance {guidance:g}", fill=palette[n])
    for n, (name, value) in enumerate(baselines.items()):
        for start in range(margin, width - margin, 16):
            draw.line([(start, y(value)), (min(start + 8, width - margin), y(value))], fill="#777777", width=2)
        draw.text((margin + 6 + 120 * n, y(value) - 14), name, fill="#555555")
    if default_value is not None:
        px, py = x(default_steps), y(default_value)
        draw.rectangle([px - 5, py - 5, px + 5, py + 5], fill=palette[2])
        draw.text((px + 10, py + 4), f"default ({default_samples} averaged)", fill=palette[2])
    image.save(path)
    return path
