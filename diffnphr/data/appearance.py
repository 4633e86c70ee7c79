"""Procedural per-vertex appearance of a head, deterministic from its identity's seed.

The ICT Light model has no albedo, so colours are made here: a fixed set of soft regions on
the shared topology (`AppearanceBasis`), per-identity region colours and variation drawn from
one seed (`appearance_params`), combined batched in torch (`vertex_colours`). Colours mix in
linear RGB and come out as sRGB in [0, 1] (what a texture or a vertex-coloured mesh holds).

Regions (from the mean head: parts, Multi-PIE landmarks, eyeball geometry):

* skin: face and head_and_neck; lips inside the outer-lip landmark polygon (48-59) seen
  from the front, 1 mm soft edge; eyebrows a 1 cm band along landmarks 17-21 and 22-26;
* mouth interior: mouth_socket, gums_and_tongue; eye socket (conjunctiva): the eye sockets
  and the engine overlay strips; teeth; eyelashes take the eyebrow hair colour;
* mouth interior darkening with depth: full colour at the lips' inner edge, fading towards
  black (`MOUTH_DEPTH_DARKENING`) over the first 3 cm inwards, so an open mouth reads dark;
* eyes: on both eyeball shells, iris where a vertex in front of the eyeball centre is within
  the iris radius of the gaze axis, pupil within 0.35 of that radius, iris darkening towards a
  limbal ring at its rim, white sclera around it. The gaze axis runs from the centre of the
  sphere fitted to the sclera shell through the centre of the iris disc; the iris radius is
  the disc's (ICT's iris subpart is a whole inner shell, not only the disc: its front is flat
  out to the limbus, 5 mm from the axis on the mean head, then bends back along the eyeball).

Per identity (one `numpy.random.default_rng(seed)`, always drawn in the same order):

* skin tone: t ~ U(0, 1) along six Fitzpatrick-like sRGB swatches, type I (241, 212, 196) to
  VI (74, 50, 38), interpolated in linear RGB, with a warm/cool undertone exp(±N(0, 0.05))
  on red/blue;
* lips: the skin darkened and reddened (linear factors R 0.7-0.9, G 0.42-0.55, B 0.45-0.6);
* eyebrows: skin mixed with a hair colour (black ... blond, red, grey; darker tones favour
  dark hair) at a density U(0.4, 0.85);
* iris: dark brown, brown, hazel, green, blue or grey (darker skin tones favour brown), with
  a brightness jitter; sclera off-white (90-100 %), teeth ivory with a yellowness jitter,
  mouth interior dark red, conjunctiva a shadowed skin tone, pupil near-black;
* subtle variation on skin, lips and brows: exp of 12 fixed low-frequency cosine fields over
  the mean head (wavelengths 8-25 cm; log-brightness std about 5 %, a little hue) plus a
  cheek blush of strength U(0, 0.25).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from diffnphr.data.colour import HAIR_SRGB, linear_to_srgb, srgb_to_linear
from diffnphr.data.fields import polyline_distance, signed_distance_inside, smoothstep
from diffnphr.frame import CM_PER_UNIT

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel

REGIONS = ("skin", "lips", "brows", "mouth", "eye_socket", "teeth", "sclera", "iris", "pupil", "hair")
SKIN_TONES_SRGB = ((241, 212, 196), (226, 185, 160), (205, 160, 128), (170, 122, 90), (122, 82, 58), (74, 50, 38))
IRIS_SRGB = ((60, 35, 20), (100, 60, 30), (120, 95, 50), (85, 110, 70), (70, 105, 145), (110, 120, 125))
VARIATION_FEATURES = 12
MOUTH_DEPTH_DARKENING = 0.85  # the fraction of the mouth colour gone 3 cm behind the lips
_FEATURE_SEED = 20240611
_PUPIL_FRACTION = 0.35
_MOUTH_DARK_DEPTH = 3.0 / CM_PER_UNIT


@dataclass(frozen=True)
class AppearanceBasis:
    """Per-vertex fields shared by all heads: region weights (V, R), rows summing to at most 1
    (the rest is black: the limbal ring); how much the skin variation applies (V,); the
    variation features (V, VARIATION_FEATURES + 1), the last one the cheek blush."""

    region_weights: torch.Tensor
    modulated: torch.Tensor
    features: torch.Tensor

    def rows(self, rows: np.ndarray | torch.Tensor) -> AppearanceBasis:
        """The basis for a subset of vertices (e.g. a `HeadSurface`'s vertex rows)."""
        index = torch.as_tensor(rows, dtype=torch.long, device=self.features.device)
        return AppearanceBasis(self.region_weights[index], self.modulated[index], self.features[index])

    def to(self, device: torch.device | str) -> AppearanceBasis:
        """The same basis on another device."""
        return AppearanceBasis(self.region_weights.to(device), self.modulated.to(device), self.features.to(device))


@dataclass(frozen=True)
class AppearanceParams:
    """Per-head colours: region colours (B, R, 3) in linear RGB and variation coefficients
    (B, VARIATION_FEATURES + 1, 3) in log-colour."""

    region_colours: torch.Tensor
    variation: torch.Tensor

    def select(self, index: torch.Tensor | Sequence[int]) -> AppearanceParams:
        """The heads at `index` (e.g. each batch element's identity)."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.variation.device)
        return AppearanceParams(self.region_colours[index], self.variation[index])

    def to(self, device: torch.device | str) -> AppearanceParams:
        """The same parameters on another device."""
        return AppearanceParams(self.region_colours.to(device), self.variation.to(device))


def appearance_basis(model: ICTFaceModel) -> AppearanceBasis:
    """The region weights and variation fields of the model's topology (module docstring)."""
    positions = model.neutral.astype(np.float64)
    weights = np.zeros((model.num_vertices, len(REGIONS)))
    column = {name: index for index, name in enumerate(REGIONS)}

    def assign(region: str, vertices: slice) -> None:
        weights[vertices] = 0.0
        weights[vertices, column[region]] = 1.0

    assign("skin", slice(0, model.num_vertices))
    for part in ("mouth_socket", "gums_and_tongue"):
        assign("mouth", model.part_vertices(part))
        _darken_with_depth(model, positions, weights, column["mouth"], model.part_vertices(part))
    for part in model.part_names:
        if part.startswith(("eye_socket", "lacrimal_fluid", "eye_blend", "eye_occlusion")):
            assign("eye_socket", model.part_vertices(part))
        elif part.startswith("eyelashes"):
            assign("hair", model.part_vertices(part))
    assign("teeth", model.part_vertices("teeth"))

    face = np.arange(model.num_vertices)[model.part_vertices("face")]
    landmarks = positions[model.landmarks_68]
    lips = smoothstep(-0.004, 0.004, signed_distance_inside(positions[face, :2], landmarks[48:60, :2]))
    brow_distance = np.minimum(
        polyline_distance(positions[face, :2], landmarks[17:22, :2]),
        polyline_distance(positions[face, :2], landmarks[22:27, :2]),
    )
    brows = smoothstep(0.022, 0.012, brow_distance) * (1.0 - lips)
    weights[face, column["lips"]] = lips
    weights[face, column["brows"]] = brows
    weights[face, column["skin"]] = 1.0 - lips - brows

    for side in ("left", "right"):
        _paint_eye(model, positions, weights, column, side)

    modulated = weights[:, column["skin"]] + weights[:, column["lips"]] + weights[:, column["brows"]]
    return AppearanceBasis(
        region_weights=torch.as_tensor(weights, dtype=torch.float32),
        modulated=torch.as_tensor(modulated, dtype=torch.float32),
        features=torch.as_tensor(_variation_features(positions, landmarks), dtype=torch.float32),
    )


def appearance_params(seeds: Sequence[int]) -> AppearanceParams:
    """Region colours and variation of one head per seed; the same seed gives the same head."""
    colours, variations = [], []
    for seed in seeds:
        if int(seed) < 0:
            raise ValueError(f"appearance seeds must be non-negative integers, got {seed}")
        region_colours, variation = _draw(np.random.default_rng(int(seed)))
        colours.append(region_colours)
        variations.append(variation)
    return AppearanceParams(
        region_colours=torch.as_tensor(np.array(colours).reshape(-1, len(REGIONS), 3), dtype=torch.float32),
        variation=torch.as_tensor(np.array(variations).reshape(-1, VARIATION_FEATURES + 1, 3), dtype=torch.float32),
    )


def vertex_colours(basis: AppearanceBasis, params: AppearanceParams) -> torch.Tensor:
    """(B, V, 3) sRGB colours in [0, 1] of B heads on the basis's vertices (params' device)."""
    albedo = params.region_colours.transpose(1, 2) @ basis.region_weights.T  # (B, 3, V)
    log_variation = (basis.features @ params.variation) * basis.modulated[:, None]  # (B, V, 3)
    return linear_to_srgb(albedo.transpose(1, 2) * torch.exp(log_variation))


def _draw(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One head's (R, 3) linear region colours and (K + 1, 3) variation, in a fixed order."""
    tone = rng.uniform()
    swatches = srgb_to_linear(np.array(SKIN_TONES_SRGB) / 255.0)
    position = tone * (len(swatches) - 1)
    low = min(int(position), len(swatches) - 2)
    skin = swatches[low] + (position - low) * (swatches[low + 1] - swatches[low])
    skin = skin * np.exp(rng.normal(0.0, 0.05) * np.array([1.0, 0.0, -1.0]))
    lips = skin * np.array([rng.uniform(0.7, 0.9), rng.uniform(0.42, 0.55), rng.uniform(0.45, 0.6)])
    hair_odds = np.clip(
        [0.15 + 0.5 * tone, 0.3, 0.25 - 0.1 * tone, 0.12 - 0.1 * tone, 0.1 - 0.1 * tone, 0.04 - 0.04 * tone, 0.04],
        0.0,
        None,
    )
    hair = srgb_to_linear(np.array(HAIR_SRGB[rng.choice(len(HAIR_SRGB), p=hair_odds / hair_odds.sum())]) / 255.0)
    density = rng.uniform(0.4, 0.85)
    iris_odds = np.clip(
        [
            0.25 + 0.5 * tone,
            0.25 + 0.2 * tone,
            0.15 - 0.1 * tone,
            0.1 - 0.1 * tone,
            0.17 - 0.17 * tone,
            0.08 - 0.07 * tone,
        ],
        0.0,
        None,
    )
    iris = srgb_to_linear(np.array(IRIS_SRGB[rng.choice(len(IRIS_SRGB), p=iris_odds / iris_odds.sum())]) / 255.0)
    iris = iris * np.exp(rng.normal(0.0, 0.1))
    sclera = srgb_to_linear(np.array([235, 228, 220]) / 255.0) * rng.uniform(0.9, 1.0)
    teeth = srgb_to_linear(np.array([230, 220, 190]) / 255.0) * rng.uniform(0.85, 1.0)
    teeth = teeth * np.array([1.0, 1.0, rng.uniform(0.8, 1.0)])
    mouth = srgb_to_linear(np.array([150, 60, 60]) / 255.0) * rng.uniform(0.8, 1.1)
    socket = skin * np.array([0.5, 0.38, 0.38])
    pupil = srgb_to_linear(np.array([12, 10, 10]) / 255.0)
    brows = skin * (1.0 - density) + hair * density
    region_colours = {
        "skin": skin,
        "lips": lips,
        "brows": brows,
        "mouth": mouth,
        "eye_socket": socket,
        "teeth": teeth,
        "sclera": sclera,
        "iris": iris,
        "pupil": pupil,
        "hair": hair,
    }
    variation = np.empty((VARIATION_FEATURES + 1, 3))
    brightness = rng.normal(0.0, 0.02, VARIATION_FEATURES)
    hue = rng.normal(0.0, 0.012, VARIATION_FEATURES)
    variation[:-1] = brightness[:, None] + hue[:, None] * np.array([0.5, -0.25, -0.5])
    variation[-1] = rng.uniform(0.0, 0.25) * np.array([0.3, -0.25, -0.2])
    return np.clip(np.stack([region_colours[name] for name in REGIONS]), 0.0, 1.0), variation


def _paint_eye(
    model: ICTFaceModel, positions: np.ndarray, weights: np.ndarray, column: dict[str, int], side: str
) -> None:
    """Sclera, iris (darkening to a limbal ring) and pupil on both shells of one eyeball."""
    centre, axis, iris_radius = eye_geometry(model, side, positions)
    eyeball = model.part_vertices(f"eyeball_{side}")
    offset = positions[eyeball] - centre
    radial = np.linalg.norm(np.cross(offset, axis), axis=1) / iris_radius
    in_front = offset @ axis > 0
    edge = 0.05 / CM_PER_UNIT / iris_radius  # 0.5 mm soft rim
    iris = smoothstep(1.0 + edge, 1.0 - edge, radial) * in_front
    pupil = smoothstep(_PUPIL_FRACTION + edge, _PUPIL_FRACTION - edge, radial) * in_front
    limbal = 1.0 - 0.45 * np.clip(radial, 0.0, 1.0) ** 4
    weights[eyeball] = 0.0
    weights[eyeball, column["sclera"]] = 1.0 - iris
    weights[eyeball, column["iris"]] = (iris - pupil) * limbal
    weights[eyeball, column["pupil"]] = pupil


def eye_geometry(
    model: ICTFaceModel, side: str, positions: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, float]:
    """One eyeball's centre (3,), unit gaze axis (3,) and iris radius (units) on a head (default the mean one).

    The centre is that of the sphere fitted to the sclera shell (least squares); the axis runs
    from it through the centre of the iris disc, the front of the iris shell that lies within
    3 % of the eyeball's radius of its most forward point; the radius is that disc's.
    """
    positions = model.neutral.astype(np.float64) if positions is None else positions
    shell = positions[model.part_vertices(f"sclera_{side}")]
    iris_shell = positions[model.part_vertices(f"iris_{side}")]
    system = np.concatenate([2 * shell, np.ones((len(shell), 1))], axis=1)
    solution = np.linalg.lstsq(system, (shell**2).sum(axis=1), rcond=None)[0]
    centre = solution[:3]
    radius = float(np.sqrt(solution[3] + centre @ centre))
    rough = iris_shell.mean(axis=0) - centre
    rough /= np.linalg.norm(rough)
    depth = (iris_shell - centre) @ rough
    disc = iris_shell[depth > depth.max() - 0.03 * radius]
    axis = disc.mean(axis=0) - centre
    axis /= np.linalg.norm(axis)
    iris_radius = float(np.linalg.norm(np.cross(disc - centre, axis), axis=1).max())
    return centre, axis, iris_radius


def _darken_with_depth(
    model: ICTFaceModel, positions: np.ndarray, weights: np.ndarray, region: int, vertices: slice
) -> None:
    """Lower a mouth part's region weight (the rest is black) with its depth behind the mouth
    opening: the mean z of the lips' inner landmarks (60-67)."""
    opening_z = positions[model.landmarks_68[60:68], 2].mean()
    depth = np.clip((opening_z - positions[vertices, 2]) / _MOUTH_DARK_DEPTH, 0.0, 1.0)
    weights[vertices, region] *= 1.0 - MOUTH_DEPTH_DARKENING * smoothstep(0.0, 1.0, depth)


def _variation_features(positions: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """(V, K + 1): K fixed low-frequency cosine fields and the cheek-blush field."""
    rng = np.random.default_rng(_FEATURE_SEED)
    directions = rng.normal(size=(VARIATION_FEATURES, 3))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    wavelengths = rng.uniform(8.0, 25.0, VARIATION_FEATURES) / CM_PER_UNIT
    phases = rng.uniform(0.0, 2 * np.pi, VARIATION_FEATURES)
    waves = np.cos(positions @ (directions.T * (2 * np.pi / wavelengths)) + phases)
    cheeks = [landmarks[[36, 48, 2]].mean(axis=0), landmarks[[45, 54, 14]].mean(axis=0)]
    blush = sum(np.exp(-np.sum((positions - c) ** 2, axis=1) / (2 * 0.05**2)) for c in cheeks)
    return np.concatenate([waves, blush[:, None]], axis=1)
