"""How well the trained decoder and its factor map reproduce held-out heads: metrics in mm and renders.

For the held-out identities of the decoder's split (new identities, hair styles, expressions
and colours: the decoder trained on fresh random heads, none of them these), each head is
decoded from (a) its factor-map latent ("mapped", what the encoder's targets are), (b) the
latent fitted to it with the decoder frozen ("fitted", `python -m diffnphr fit`: the
decoder's ceiling; mapped − fitted is the amortisation gap) and (c) the mean of the training
heads' latents ("mean latent": a head that knows nothing of the person), extracted with
marching cubes and compared with its ground truth by `diffnphr.eval.heads.compare_head`: the
whole head, the face and the hair, raw and after a similarity alignment. Held-out identity k
wears its expression slot k mod `EVAL_SLOTS` (slot 0 is neutral), so neutral and posed heads
both appear and `fit --expressions 4` fits what is measured.

Beside every head the ground truth is also compared with itself sampled with another seed: the
floor that point sampling alone puts under the metrics at that point count. Eyes: the decoded
colour is read at the front of each ground-truth eyeball, at the pupil (within a quarter of the
iris radius of the gaze axis) and on the sclera round the iris (1.3 to 2 iris radii), as
luminance ("eyes": sclera and pupil, mean of both eyes). Paired differences
between methods on the same heads come with 95 % intervals (mean ± 1.96 standard errors).
"""

from __future__ import annotations

import json
import logging
import math
import os
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.head_geometry import HeadGeometry
from diffnphr.data.ict import load_ict
from diffnphr.devices import resolve_device
from diffnphr.eval.heads import REGIONS, GroundTruthHeads, compare_head, decode_mesh
from diffnphr.eval.metrics import REPORTED
from diffnphr.frame import BOX_MAX, BOX_MIN
from diffnphr.heads.latents import (
    FITTED_HELDOUT_NAME,
    LATENT_STATISTICS_FILE,
    load_head_latents,
    load_latent_statistics,
)
from diffnphr.heads.split import load_head_split
from diffnphr.nphm.decoder import MonoNPHM
from diffnphr.nphm.factor_map import FactorMap
from diffnphr.nphm.latents import unpack

logger = logging.getLogger(__name__)

METHODS = ("mapped", "fitted", "mean latent")
EVAL_SLOTS = 4
PARTS = tuple(f"{prefix}{region}" for prefix in ("", "aligned_") for region in ("head", *REGIONS))


def evaluate_decoder(
    weights_dir: str | os.PathLike,
    *,
    fitted_dir: str | os.PathLike | None = None,
    count: int = 100,
    resolution: int = 256,
    points: int = 200_000,
    device: str | torch.device | None = None,
    seed: int = 0,
    ict_path: str | os.PathLike | None = None,
    renders_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    max_minutes: float | None = None,
) -> dict[str, Any]:
    """Metrics of decoded held-out heads against their ground truth, per method (module docstring).

    `weights_dir` holds decoder/, factor_map/ and decoder_latents/ (`export-decoder`'s output);
    `fitted_dir` the "fitted_heldout" latents of `python -m diffnphr fit` (without it the
    fitted method is skipped, with a note). The first `count` held-out identities are decoded
    at `resolution` and sampled with `points` points per side. With `renders_dir`, PNGs of six
    chosen heads (ground truth | mapped | fitted, front and 45° yaw) are written there.
    Returns per method: summary (mean and median per metric and part), per-head metrics; and
    paired differences of the methods against "mapped".

    With `out_dir`, every measured head is appended to its `heads.jsonl` as soon as it is measured
    and a later call with the same settings measures only the heads still missing, so a run cut
    short (a device command's time limit) loses nothing; `max_minutes` stops starting new heads
    after that long. The report then says how many of the `count` heads it holds ("complete").
    """
    if count < 1 or points < 1:
        raise ValueError(f"count and points must be positive; got {count}, {points}")
    weights_dir, device = Path(weights_dir), resolve_device(device)
    split = load_head_split(weights_dir / "decoder_latents")
    model = MonoNPHM.from_pretrained(weights_dir / "decoder", device=device).eval()
    factor_map = FactorMap.from_pretrained(weights_dir / "factor_map", device=device)
    mean = unpack(load_latent_statistics(weights_dir / "decoder_latents" / LATENT_STATISTICS_FILE).mean)
    fitted = _fitted(fitted_dir)
    ict = load_ict(ict_path)
    geometry = HeadGeometry(ict, device)
    truth_heads = GroundTruthHeads(geometry)
    slots = min(EVAL_SLOTS, split.expressions_per_identity)
    identities = split.heldout_identities[:count]
    chosen = _pictured(split, identities, slots) if renders_dir is not None else {}
    report: dict[str, Any] = {
        "settings": {
            "resolution": resolution,
            "points_per_side": points,
            "count": len(identities),
            "seed": seed,
            "device": str(device),
            "box": [BOX_MIN, BOX_MAX],
        },
        "notes": {}
        if fitted is not None
        else {"fitted": "no fitted latents given (fit them with `python -m diffnphr fit`)"},
    }
    store = _HeadStore(out_dir, report["settings"])
    deadline = None if max_minutes is None else time.monotonic() + 60.0 * max_minutes
    for row, identity in enumerate(identities.tolist()):
        slot = row % slots
        if store.has(identity, slot):
            continue
        if deadline is not None and time.monotonic() > deadline:
            logger.info("stopped after %.1f minutes; run again with the same --out to go on", max_minutes)
            break
        truth = truth_heads.mesh(split, identity, slot)
        factors = split.factors(torch.tensor([identity]), torch.tensor([slot]))
        with torch.no_grad():
            latents = {"mapped": [z[0] for z in factor_map.latents(factors)]}
        latents["mean latent"] = list(mean)
        if fitted is not None and identity in fitted[0]:
            k = fitted[0].index(identity)
            latents["fitted"] = [fitted[1].z_geo[k], fitted[1].z_exp[k, slot], fitted[1].z_app[k]]
        meshes = {}
        eye_points = _eye_points(geometry, factors)
        for method, (z_geo, z_exp, z_app) in latents.items():
            mesh = decode_mesh(model, z_geo, z_exp, z_app, resolution, colours=identity in chosen)
            metrics = compare_head(mesh.vertices, mesh.faces, truth, points, seed + 7919 * identity + slot)
            metrics["eyes"] = _eye_luminance(model, (z_geo, z_exp, z_app), eye_points)
            store.add(method, {"identity": identity, "slot": slot, **metrics})
            meshes[method] = mesh
        store.finish_head()
        logger.info("held-out head %d of %d (identity %d, slot %d) measured", row + 1, len(identities), identity, slot)
        if identity in chosen:
            path = Path(renders_dir) / f"heldout_{chosen[identity]}_identity{identity:04d}_slot{slot}.png"
            write_comparison(path, truth, [meshes[m] for m in ("mapped", "fitted") if m in meshes])
    heads = store.by_method(identities.tolist(), slots)
    report["complete"] = {"heads": len(heads["mapped"]), "of": len(identities)}
    for method, rows in heads.items():
        if rows:
            report[method] = {"summary": _summary(rows), "heads": rows}
    report["paired"] = {
        f"{method} - mapped": _paired(heads[method], heads["mapped"]) for method in METHODS[1:] if heads[method]
    }
    store.write_report(report)
    return report


class _HeadStore:
    """The measured heads of one evaluation, kept in `out_dir/heads.jsonl` (one line per head and method)
    when there is an `out_dir`, so that a later call resumes; refuses a folder measured with other settings."""

    def __init__(self, out_dir: str | os.PathLike | None, settings: dict[str, Any]) -> None:
        self.folder = None if out_dir is None else Path(out_dir)
        self.rows: dict[tuple[int, int], dict[str, dict[str, Any]]] = {}
        self._pending: list[tuple[str, dict[str, Any]]] = []
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        stored = self.folder / "settings.json"
        kept = {key: value for key, value in settings.items() if key not in ("count", "device")}
        comparable = json.loads(json.dumps(kept))  # tuples as JSON lists, as stored
        if stored.is_file() and json.loads(stored.read_text()) != comparable:
            raise ValueError(
                f"{self.folder} holds heads measured with other settings ({stored.read_text().strip()}); "
                "use another --out folder."
            )
        stored.write_text(json.dumps(comparable) + "\n")
        if (self.folder / "heads.jsonl").is_file():
            for line in (self.folder / "heads.jsonl").read_text().splitlines():
                record = json.loads(line)
                self.rows.setdefault((record["identity"], record["slot"]), {})[record.pop("method")] = record

    def has(self, identity: int, slot: int) -> bool:
        """Whether this head was measured before (by an earlier call on the same folder)."""
        return "mapped" in self.rows.get((identity, slot), {})

    def add(self, method: str, row: dict[str, Any]) -> None:
        """One method's metrics for the head being measured (kept when the head is finished)."""
        self._pending.append((method, row))

    def finish_head(self) -> None:
        """All methods of one head measured: keep them (and append them to heads.jsonl)."""
        lines = []
        for method, row in self._pending:
            self.rows.setdefault((row["identity"], row["slot"]), {})[method] = row
            lines.append(json.dumps({"method": method, **row}))
        self._pending = []
        if self.folder is not None:
            with open(self.folder / "heads.jsonl", "a") as file:
                file.write("".join(line + "\n" for line in lines))

    def by_method(self, identities: list[int], slots: int) -> dict[str, list[dict[str, Any]]]:
        """The measured heads per method, in the order of the held-out identities."""
        heads: dict[str, list[dict[str, Any]]] = {method: [] for method in METHODS}
        for row, identity in enumerate(identities):
            for method, metrics in self.rows.get((identity, row % slots), {}).items():
                heads[method].append(metrics)
        return heads

    def write_report(self, report: dict[str, Any]) -> None:
        """The report as report.json beside the heads (when there is a folder)."""
        if self.folder is not None:
            (self.folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")


def _eye_points(geometry: HeadGeometry, factors) -> dict[str, Tensor]:
    """Points on the front of one head's eyeballs: "pupil" and "sclera" (module docstring), (N, 3) each."""
    from diffnphr.data.appearance import eye_geometry

    vertices = geometry.ict_vertices(factors)[0].cpu().double().numpy()
    found: dict[str, list[np.ndarray]] = {"pupil": [], "sclera": []}
    for side in ("left", "right"):
        centre, axis, iris_radius = eye_geometry(geometry.model, side, vertices)
        shell = vertices[geometry.model.part_vertices(f"sclera_{side}")]
        offset = shell - centre
        front = offset @ axis > 0
        radial = np.linalg.norm(np.cross(offset, axis), axis=1) / iris_radius
        found["pupil"].append(shell[front & (radial < 0.25)])
        found["sclera"].append(shell[front & (radial > 1.3) & (radial < 2.0)])
    device = geometry.device
    return {
        name: torch.as_tensor(np.concatenate(parts), dtype=torch.float32, device=device)
        for name, parts in found.items()
    }


def _eye_luminance(model: MonoNPHM, latents, eye_points: dict[str, Tensor]) -> dict[str, float]:
    """Mean luminance of the decoded colour at each kind of eye point."""
    device = next(model.parameters()).device
    with torch.inference_mode():
        head = model.bind(*(z[None].to(device) for z in latents))
        weights = torch.tensor([0.2126, 0.7152, 0.0722], device=device)
        return {name: float((head.point_colour(points) @ weights).mean()) for name, points in eye_points.items()}


def _fitted(fitted_dir: str | os.PathLike | None) -> tuple[list[int], Any] | None:
    if fitted_dir is None:
        return None
    latents = load_head_latents(fitted_dir, FITTED_HELDOUT_NAME)
    return latents.identities.tolist(), latents


def _pictured(split, identities: Tensor, slots: int) -> dict[int, str]:
    """Evaluated heads to draw: the longest-haired, a bald one and one with a bun (where the evaluated
    heads have them), the widest-open mouth, the most closed eyes, and the darkest and lightest
    skin (by the skin colour's luminance); each identity at most once."""
    from diffnphr.data.appearance import REGIONS as APPEARANCE_REGIONS
    from diffnphr.data.hair_styles import HAIR_KINDS

    rows = torch.arange(len(identities))
    evaluated = split.factors(identities, rows % slots)
    names = split.expression_names
    jaw = evaluated.expression[:, names.index("jawOpen")]
    blink = evaluated.expression[:, [names.index("eyeBlink_L"), names.index("eyeBlink_R")]].mean(dim=1)
    skin = evaluated.appearance.region_colours[:, APPEARANCE_REGIONS.index("skin")] @ torch.tensor(
        [0.2126, 0.7152, 0.0722]
    )
    kinds = evaluated.hair.kind
    scores = {  # a kind's category only among heads of that kind (-inf elsewhere)
        "long_hair": torch.where(kinds == HAIR_KINDS.index("long"), -evaluated.hair.length, -math.inf),
        "bald": torch.where(kinds == HAIR_KINDS.index("bald"), 0.0, -math.inf),
        "bun": torch.where(kinds == HAIR_KINDS.index("bun"), 0.0, -math.inf),
        "open_mouth": jaw,
        "closed_eyes": blink,
        "dark_skin": -skin,
        "light_skin": skin,
    }
    chosen: dict[int, str] = {}
    for name, score in scores.items():
        for row in torch.argsort(score, descending=True).tolist():
            if score[row] > -math.inf and int(identities[row]) not in chosen:
                chosen[int(identities[row])] = name
                break
    return chosen


def _paired(first: list[dict[str, Any]], second: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Mean difference first − second of Chamfer-L1 per part over the heads both have, with a 95 % interval."""
    common = {(h["identity"], h["slot"]): h for h in second}
    result = {}
    for part in PARTS:
        differences = [
            h[part]["chamfer_l1_mm"] - common[key][part]["chamfer_l1_mm"]
            for h in first
            if (key := (h["identity"], h["slot"])) in common and part in h and part in common[key]
        ]
        if len(differences) < 2:
            continue
        mean = statistics.fmean(differences)
        half = 1.96 * statistics.stdev(differences) / math.sqrt(len(differences))
        result[part] = {"mean": mean, "low": mean - half, "high": mean + half, "heads": len(differences)}
    return result


def write_comparison(path: str | os.PathLike, truth: dict[str, Tensor], meshes: list) -> Path:
    """PNG of ground truth | each reconstruction, front (top row) and 45° yaw (bottom row)."""
    from PIL import Image

    from diffnphr.render import render_mesh

    rows = []
    for yaw in (0.0, 45.0):
        tiles = [render_mesh(truth["vertices"], truth["faces"], truth["colours"], yaw_deg=yaw, size=384)]
        for mesh in meshes:
            colours = mesh.visual.vertex_colors if mesh.visual.kind == "vertex" else None
            tiles.append(
                render_mesh(
                    np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces), colours, yaw_deg=yaw, size=384
                )
            )
        rows.append(np.concatenate(tiles, axis=1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)
    return path


def _summary(heads: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, float]]]:
    summary = {}
    for part in (*PARTS, "floor_head", "floor_face"):
        rows = [head[part] for head in heads if part in head]
        if rows:
            summary[part] = {
                key: {"mean": statistics.fmean(r[key] for r in rows), "median": statistics.median(r[key] for r in rows)}
                for key in REPORTED
            }
            summary[part]["heads"] = len(rows)
    sclera = [head["eyes"]["sclera"] for head in heads]
    pupil = [head["eyes"]["pupil"] for head in heads]
    summary["eyes"] = {
        "sclera": {"mean": statistics.fmean(sclera), "min": min(sclera)},
        "pupil": {"mean": statistics.fmean(pupil), "max": max(pupil)},
    }
    return summary


def format_summary(report: dict[str, Any]) -> str:
    """A plain-text table of an `evaluate_decoder` report: mean (median) per method and part, floor beside."""
    header = ["method", "part", "Chamfer-L1 mm", "normal cons.", "F@1mm", "F@2.5mm", "F@5mm"]
    lines = ["  ".join(f"{h:>15}" for h in header)]
    if "complete" in report and report["complete"]["heads"] < report["complete"]["of"]:
        done = report["complete"]
        lines.insert(0, f"partial: {done['heads']} of {done['of']} heads measured (run again with the same --out)")
    for method in METHODS:
        part = report.get(method)
        if part is None:
            lines.append(f"{method:>15}  skipped: {report['notes'].get(method, 'no heads')}")
            continue
        for region, values in part["summary"].items():
            if region == "eyes":
                continue
            cells = [f"{values[k]['mean']:.3f} ({values[k]['median']:.3f})" for k in REPORTED]
            lines.append("  ".join(f"{c:>15}" for c in [method, region, *cells]))
        eyes = part["summary"]["eyes"]
        lines.append(
            f"{'':>15}  eyes: sclera luminance {eyes['sclera']['mean']:.2f} (lowest {eyes['sclera']['min']:.2f}), "
            f"pupil {eyes['pupil']['mean']:.2f} (highest {eyes['pupil']['max']:.2f})"
        )
        lines.append(f"{'':>15}  {len(part['heads'])} heads; floor = ground truth vs itself resampled")
    for name, parts in report.get("paired", {}).items():
        for region, d in parts.items():
            lines.append(f"{name:>15}  {region:>15}  {d['mean']:+.3f} mm [{d['low']:+.3f}, {d['high']:+.3f}]")
    return "\n".join(lines)
