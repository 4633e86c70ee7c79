"""How well the trained decoder reproduces ICT heads: surface metrics in mm and side-by-side renders.

For (a) training heads decoded from their codebook latents and (b) held-out heads decoded from
latents fitted with the decoder frozen (`python -m diffnphr fit`), each head is extracted with
marching cubes and compared with its ground truth by `diffnphr.eval.metrics.head_and_face_metrics`.

Ground truth and the comparison are `diffnphr.eval.heads`'s. Beside every head the ground truth
is also compared with itself sampled with another seed: the floor that point sampling alone puts
under the metrics at that point count.
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.ict import load_ict
from diffnphr.devices import resolve_device
from diffnphr.eval.heads import GroundTruthHeads, compare_head, decode_mesh
from diffnphr.eval.metrics import REPORTED
from diffnphr.frame import FLOOR_Y
from diffnphr.heads.latents import CODEBOOKS_NAME, FITTED_HELDOUT_NAME, SplitLatents, load_head_latents
from diffnphr.heads.split import load_head_split
from diffnphr.nphm.decoder import MonoNPHM

SPLITS = ("train", "heldout")


def evaluate_decoder(
    decoder_dir: str | os.PathLike,
    latents_dir: str | os.PathLike,
    *,
    which: Sequence[str] = SPLITS,
    fitted_dir: str | os.PathLike | None = None,
    count: int = 16,
    expressions: int | None = None,
    resolution: int = 256,
    points: int = 200_000,
    device: str | torch.device | None = None,
    seed: int = 0,
    ict_path: str | os.PathLike | None = None,
    renders_dir: str | os.PathLike | None = None,
    renders: int = 3,
) -> dict[str, Any]:
    """Metrics of decoded heads against their ground truth, per split, with the sampling floor.

    `decoder_dir` is a decoder weights folder, `latents_dir` the exported decoder_latents/
    (split + "codebooks" latents); `fitted_dir` holds "fitted_heldout" latents from
    `python -m diffnphr fit` (the held-out split is skipped, with a note, without it). The first
    `count` identities of each split with their first `expressions` slots (default all those
    with latents; slot 0 neutral) are decoded at `resolution` and sampled with `points` points
    per side. With `renders_dir`, PNGs of the first `renders` heads per split are written there
    (ground truth | reconstruction, front and 45° yaw). Returns per split: summary (mean and
    median per metric for "head", "face", "floor_head", "floor_face"), per-head metrics, notes.
    """
    unknown = set(which) - set(SPLITS)
    if unknown or not which:
        raise ValueError(f"which must name one or more of {', '.join(SPLITS)}; got {tuple(which)}")
    if count < 1 or points < 1 or (expressions is not None and expressions < 1):
        raise ValueError(f"count, points and expressions must be positive; got {count}, {points}, {expressions}")
    device = resolve_device(device)
    split = load_head_split(latents_dir)
    model = MonoNPHM.from_pretrained(decoder_dir, device=device).eval()
    truth_heads = GroundTruthHeads(load_ict(ict_path), device)
    settings = {
        "resolution": resolution,
        "points_per_side": points,
        "count": count,
        "seed": seed,
        "device": str(device),
        "floor_y": FLOOR_Y,
    }
    report: dict[str, Any] = {"settings": settings}
    for name in which:
        latents, note = _split_latents(name, latents_dir, fitted_dir)
        if latents is None:
            report[name] = {"skipped": note}
            continue
        slots = latents.z_exp.shape[1] if expressions is None else min(expressions, latents.z_exp.shape[1])
        heads = []
        for row in range(min(count, len(latents.identities))):
            identity = int(latents.identities[row])
            for slot in range(slots):
                truth = truth_heads.mesh(split, identity, slot)
                pictured = renders_dir is not None and row < renders and slot in (0, slots - 1)
                mesh = decode_mesh(
                    model,
                    latents.z_geo[row],
                    latents.z_exp[row, slot],
                    latents.z_app[row],
                    resolution,
                    colours=pictured,
                )
                metrics = compare_head(mesh.vertices, mesh.faces, truth, points, seed + 7919 * identity + slot)
                heads.append({"identity": identity, "slot": slot, **metrics})
                if pictured:
                    path = Path(renders_dir) / f"{name}_identity{identity:04d}_slot{slot}.png"
                    write_comparison(path, truth, mesh)
        report[name] = {"summary": _summary(heads), "heads": heads, "notes": note}
    return report


def write_comparison(path: str | os.PathLike, truth: dict[str, Tensor], mesh) -> Path:
    """PNG of ground truth | reconstruction, front (top row) and 45° yaw (bottom row)."""
    from PIL import Image

    from diffnphr.render import render_mesh

    rows = []
    for yaw in (0.0, 45.0):
        gt = render_mesh(truth["vertices"], truth["faces"], truth["colours"], yaw_deg=yaw, size=384)
        colours = mesh.visual.vertex_colors if mesh.visual.kind == "vertex" else None
        pred = render_mesh(
            np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces), colours, yaw_deg=yaw, size=384
        )
        rows.append(np.concatenate([gt, pred], axis=1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def _split_latents(name: str, latents_dir, fitted_dir) -> tuple[SplitLatents | None, str]:
    if name == "train":
        return load_head_latents(latents_dir, CODEBOOKS_NAME), "training identities, codebook latents"
    if fitted_dir is None:
        return None, (
            "no fitted latents given (fitted_dir): fit them first with "
            "`python -m diffnphr fit --out DIR` and pass that folder"
        )
    try:
        return load_head_latents(
            fitted_dir, FITTED_HELDOUT_NAME
        ), "held-out identities, latents fitted with the decoder frozen"
    except FileNotFoundError as error:
        return None, f"skipped: {error}"


def _summary(heads: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    summary = {}
    for part in ("head", "face", "floor_head", "floor_face"):
        summary[part] = {}
        for key in REPORTED:
            values = [head[part][key] for head in heads]
            summary[part][key] = {"mean": statistics.fmean(values), "median": statistics.median(values)}
    return summary


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text table of an `evaluate_decoder` report: mean (median) per split and region, floor beside."""
    header = ["split", "region", "Chamfer-L1 mm", "normal cons.", "F@1mm", "F@2.5mm", "F@5mm"]
    lines = ["  ".join(f"{h:>15}" for h in header)]
    for name in SPLITS:
        part = report.get(name)
        if part is None:
            continue
        if "skipped" in part:
            lines.append(f"{name:>15}  skipped: {part['skipped']}")
            continue
        for region in ("head", "face", "floor_head", "floor_face"):
            cells = [f"{s['mean']:.3f} ({s['median']:.3f})" for s in (part["summary"][region][k] for k in REPORTED)]
            lines.append("  ".join(f"{c:>15}" for c in [name, region, *cells]))
        lines.append(f"{'':>15}  {len(part['heads'])} heads; floor = ground truth vs itself resampled")
    return "\n".join(lines)
