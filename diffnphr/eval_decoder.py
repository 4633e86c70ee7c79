"""How well the trained decoder reproduces ICT heads: surface metrics in mm and side-by-side renders.

For (a) training heads decoded from their codebook latents and (b) held-out heads decoded from
latents fitted with the decoder frozen (`python -m diffnphr fit`), each head is extracted with
marching cubes and compared with its ground truth by `diffnphr.eval.head_and_face_metrics`.

Ground truth is the decoder's own training surface (`diffnphr.data.heads`): the skin and the
eyeballs, only the triangles exposed on that head, in the canonical frame. Both surfaces are
cropped to y ≥ -0.5, the extraction box's floor (`diffnphr.data.ict`: the neck below it is
never extracted), by sampling each whole surface and keeping the points above the floor: the
kept points are uniform by area on the cropped surface. The face region is the ICT `face`
part. Beside every head the ground truth is also compared with itself sampled with another
seed: the floor that point sampling alone puts under the metrics at that point count.
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

from diffnphr.data.appearance import appearance_basis, vertex_colours
from diffnphr.data.heads import exposed_faces
from diffnphr.data.ict import CANONICAL_BOX_MIN, ICTFaceModel, load_ict
from diffnphr.data.sampling import HeadSampler
from diffnphr.eval import SurfaceSamples, head_and_face_metrics, sample_surface
from diffnphr.nphm import MonoNPHM
from diffnphr.train.decoder import CODEBOOKS_NAME, resolve_device
from diffnphr.train.head_latents import FITTED_HELDOUT_NAME, HeadLatents, load_head_latents
from diffnphr.train.split import HeadSplit, load_head_split

SPLITS = ("train", "heldout")
FLOOR_Y = float(CANONICAL_BOX_MIN[1])
REPORTED = ("chamfer_l1_mm", "normal_consistency", "f_score_1mm", "f_score_2.5mm", "f_score_5mm")


class GroundTruthHeads:
    """Ground-truth training surfaces (exposed skin + eyeballs) of ICT heads, with face labels and colours."""

    def __init__(self, model: ICTFaceModel, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._sampler = HeadSampler(model, self.device)
        surface = self._sampler.surface
        self._faces = torch.as_tensor(surface.faces, device=self.device)
        self._face_region = torch.as_tensor(surface.face_region, device=self.device)
        self._tests = [
            (torch.as_tensor(q, device=self.device), torch.as_tensor(s, device=self.device))
            for q, s in surface.exposure_tests
        ]
        self._cap_loop = torch.as_tensor(surface.cap_loop_rows, device=self.device)
        self._appearance = appearance_basis(model).rows(surface.vertex_ids).to(self.device)

    def mesh(
        self, split: HeadSplit, identity: int, slot: int, expression_identity: int | None = None
    ) -> dict[str, Tensor]:
        """The head of split row `identity` with expression `slot`: vertices (N+1, 3), faces (F', 3)
        of its exposed triangles, face_region (F',) bool, colours (N+1, 3) sRGB in [0, 1].
        With `expression_identity`, the expression is that row's slot instead (expression transfer)."""
        coefficients = split.identity_coefficients[identity][None].to(self.device)
        expression_row = identity if expression_identity is None else expression_identity
        weights = split.expression_weights[expression_row, slot][None].to(self.device)
        vertices = self._sampler.head_vertices(coefficients, weights)
        exposed = exposed_faces(vertices, self._faces, self._tests)[0]
        colours = vertex_colours(self._appearance, split.appearance(torch.tensor([identity])).to(self.device))
        colours = torch.cat([colours, colours[:, self._cap_loop].mean(dim=1, keepdim=True)], dim=1)
        return {
            "vertices": vertices[0],
            "faces": self._faces[exposed],
            "face_region": self._face_region[exposed],
            "colours": colours[0].clamp(0, 1),
        }


def decode_mesh(
    model: MonoNPHM, z_geo: Tensor, z_exp: Tensor, z_app: Tensor, resolution: int = 256, colours: bool = True
):
    """The decoder's head for one latent triple (1-D codes) as a trimesh, on the model's device;
    with `colours`, the decoded vertex colours too (only pictures need them)."""
    from diffnphr.mesh import extract_mesh

    device = next(model.parameters()).device
    with torch.inference_mode():
        head = model.bind(z_geo[None].to(device), z_exp[None].to(device), z_app[None].to(device))
        return extract_mesh(
            head.point_sdf, resolution=resolution, device=device, color_fn=head.point_colour if colours else None
        )


def sample_above_floor(
    vertices: Tensor, faces: Tensor, count: int, seed: int, floor_y: float = FLOOR_Y
) -> SurfaceSamples:
    """`count` points uniform by area on the part of a mesh at y ≥ floor_y (face_index into `faces`)."""
    kept = (vertices[faces.long(), 1] >= floor_y).any(dim=1).nonzero().squeeze(1)
    if len(kept) == 0:
        raise ValueError(f"the mesh lies entirely below y = {floor_y}: nothing to compare")
    drawn = count
    for attempt in range(8):
        samples = sample_surface(vertices, faces[kept], int(drawn * 1.1) + 256, seed + attempt)
        above = (samples.points[:, 1] >= floor_y).nonzero().squeeze(1)
        if len(above) >= count:
            above = above[:count]
            return SurfaceSamples(samples.points[above], samples.normals[above], kept[samples.face_index[above]])
        drawn = int(drawn * count / max(len(above), 1)) + 1
    raise ValueError(f"could not draw {count} points above y = {floor_y}: the surface there is (almost) empty")


def compare_head(
    pred_vertices: Tensor, pred_faces: Tensor, truth: dict[str, Tensor], points: int, seed: int, with_floor: bool = True
) -> dict[str, dict[str, float]]:
    """Head and face metrics (`diffnphr.eval`) of a predicted mesh against a `GroundTruthHeads.mesh`,
    both cropped to y ≥ -0.5, `points` samples per side; with `with_floor`, also "floor_head" and
    "floor_face": the ground truth against itself resampled with another seed."""
    device = truth["vertices"].device
    gt = sample_above_floor(truth["vertices"], truth["faces"], points, seed)
    pred = sample_above_floor(
        torch.as_tensor(pred_vertices, dtype=torch.float32, device=device),
        torch.as_tensor(pred_faces, device=device),
        points,
        seed + 1000,
    )
    metrics = head_and_face_metrics(pred, gt, truth["face_region"])
    if with_floor:
        again = sample_above_floor(truth["vertices"], truth["faces"], points, seed + 2000)
        floor = head_and_face_metrics(again, gt, truth["face_region"])
        metrics.update({"floor_head": floor["head"], "floor_face": floor["face"]})
    return metrics


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


def _split_latents(name: str, latents_dir, fitted_dir) -> tuple[HeadLatents | None, str]:
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
