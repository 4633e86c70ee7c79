"""Hair styles: what is random about a head's hair and beard, drawn batched and seeded.

A style is a row of `HairStyles`: one of `HAIR_KINDS` with its hairline, thickness and
texture, a long-hair curtain or a bun when the kind has one, a beard, and the colours.
`sample_hair_styles` draws B of them from one CPU generator. `diffnphr.data.hair.HairModel`
turns styles into geometry; the same rows drive the training renders and the decoder's
ground-truth surface, so a render and its target latent always show the same hair.

Kinds (odds in `HAIR_KIND_ODDS`), thickness in cm over the scalp (log-uniform):

* bald: no hair; buzz 0.15-0.4; short 0.4-1.5; medium 1-3 (a fringe more often);
* long: 0.6-2.5 on the scalp and a curtain 0.6-2.5 cm thick hanging round the back from the
  widest part of the skull to between the neck and below the shoulders;
* curly: 2.5-6 cm of volume with strong short-wavelength curls;
* bun: pulled back (0.2-0.7 cm, no fringe) with a bun of 2.5-4.5 cm radius at the back;
* buzz and short are horseshoe-bald in 30 % of heads.

Beards (independent of the kind): none 60 %, stubble 15 % (colour only, density 0.15-0.35), short 15 %
(0.15-0.5 cm of volume), full 10 % (0.5-1.5 cm); their density says how much of the beard
region takes the hair colour. Colours: the head's own hair colour (appearance region "hair",
so hair matches the brows) or one from a palette, rarely dyed, with streak coefficients.

The factor map (`diffnphr.nphm.factor_map`) reads a style as two vectors: `geometry_vector`
(everything that shapes the surface) and `colour_vector` (hair colour, streaks, beard density).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.colour import HAIR_SRGB, srgb_to_linear
from diffnphr.frame import CM_PER_UNIT

HAIR_KINDS = ("bald", "buzz", "short", "medium", "long", "curly", "bun")
HAIR_KIND_ODDS = (0.07, 0.1, 0.25, 0.18, 0.2, 0.08, 0.12)
HAIRLINE_AZIMUTHS = (0.0, 40.0, 65.0, 82.0, 110.0, 140.0, 180.0)
"""Degrees round the head (0: the nose, 180: the back) of the hairline's control points."""
LUMP_FEATURES = 10
CURL_FEATURES = 16
STREAK_FEATURES = 12
CURTAIN_COLUMNS = 40
CURTAIN_TOP = 0.42
"""y where long hair leaves the skull (well above the ears); a `length` at or above it means no curtain."""
NO_HAIR = 9.0
"""A hairline or bald-top height above any head: no hair there."""
_THICKNESS_CM = {
    "bald": (0.0, 0.0),
    "buzz": (0.15, 0.4),
    "short": (0.4, 1.5),
    "medium": (1.0, 3.0),
    "long": (0.6, 2.5),
    "curly": (2.5, 6.0),
    "bun": (0.2, 0.7),
}
_BEARD_ODDS = (0.6, 0.15, 0.15, 0.1)  # none, stubble, short, full
_DYED_SRGB = ((150, 40, 110), (40, 70, 150), (120, 60, 160), (230, 225, 215), (180, 40, 40))
_PALETTE_ODDS = (0.24, 0.26, 0.16, 0.1, 0.1, 0.06, 0.08)


@dataclass(frozen=True)
class HairStyles:
    """Per-style hair parameters (B rows); heights are canonical y, lengths canonical units.

    `kind` (B,) index into `HAIR_KINDS`; `hairline` (B, 7) at `HAIRLINE_AZIMUTHS`;
    `bald_top` (B,) the height above which a horseshoe-bald style has no hair (`NO_HAIR`:
    none); `thickness` (B,); `lumps` (B, 10) and `curls` (B, 16) thickness modulation (long
    and short wavelengths); `length` (B,) where the curtain ends (>= `CURTAIN_TOP`: none);
    `curtain_thickness` (B,); `wave` (B, 2) amplitude and phase of the curtain's waves;
    `ragged` (B, 40) per-column end jitter; `bun` (B, 2) radius (0: none) and height;
    `beard` (B, 2) thickness and density (0..1); `colour` (B, 3) linear RGB; `streaks` (B, 12)
    log-brightness coefficients.
    """

    kind: Tensor
    hairline: Tensor
    bald_top: Tensor
    thickness: Tensor
    lumps: Tensor
    curls: Tensor
    length: Tensor
    curtain_thickness: Tensor
    wave: Tensor
    ragged: Tensor
    bun: Tensor
    beard: Tensor
    colour: Tensor
    streaks: Tensor

    def __len__(self) -> int:
        return int(self.thickness.shape[0])

    def to(self, device: torch.device | str) -> HairStyles:
        """The same styles on another device."""
        return HairStyles(**{f.name: getattr(self, f.name).to(device) for f in fields(self)})

    def select(self, index: Tensor) -> HairStyles:
        """The styles at `index` (a long tensor of rows), in its order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.thickness.device)
        return HairStyles(**{f.name: getattr(self, f.name)[index] for f in fields(self)})

    def with_colours_of(self, other: HairStyles) -> HairStyles:
        """These shapes in `other`'s colours (hair colour, streaks and beard density), row by row."""
        beard = torch.stack([self.beard[:, 0], other.beard[:, 1].to(self.beard.device)], dim=1)
        return replace(
            self, colour=other.colour.to(self.colour.device), streaks=other.streaks.to(self.colour.device), beard=beard
        )

    def tensors(self) -> dict[str, Tensor]:
        """The fields by name (to store a style set in a safetensors file)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_tensors(cls, tensors: dict[str, Tensor]) -> HairStyles:
        """Styles from `tensors()`' output; a missing field is an error that names it."""
        missing = [f.name for f in fields(cls) if f.name not in tensors]
        if missing:
            raise ValueError(f"hair styles lack the fields {', '.join(missing)}")
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    def geometry_vector(self) -> Tensor:
        """(B, GEOMETRY_DIM) what shapes the surface, in roughly unit ranges (for the factor map)."""
        kind = torch.nn.functional.one_hot(self.kind, len(HAIR_KINDS)).float()
        wave = torch.stack([self.wave[:, 0] / 0.03, torch.cos(self.wave[:, 1]), torch.sin(self.wave[:, 1])], dim=1)
        has_curtain = (self.length < CURTAIN_TOP).float()
        return torch.cat(
            [
                kind,
                self.hairline.clamp(max=0.8),
                self.bald_top.clamp(max=0.8)[:, None],
                (self.thickness * CM_PER_UNIT / 3.0)[:, None],
                self.lumps / 0.2,
                self.curls / 0.2,
                self.length.clamp(max=CURTAIN_TOP)[:, None],
                (self.curtain_thickness * CM_PER_UNIT * has_curtain)[:, None],
                wave * has_curtain[:, None],
                self.ragged * has_curtain[:, None],
                self.bun * torch.tensor([CM_PER_UNIT / 4.0, 1.0], device=self.bun.device),
                (self.beard[:, :1] * CM_PER_UNIT),
            ],
            dim=1,
        )

    def colour_vector(self) -> Tensor:
        """(B, COLOUR_DIM) hair colour (sRGB-like square root of linear RGB), streaks, beard density."""
        return torch.cat([self.colour.clamp_min(0).sqrt(), self.streaks / 0.2, self.beard[:, 1:]], dim=1)


GEOMETRY_DIM = len(HAIR_KINDS) + 7 + 1 + 1 + LUMP_FEATURES + CURL_FEATURES + 1 + 1 + 3 + CURTAIN_COLUMNS + 2 + 1
COLOUR_DIM = 3 + STREAK_FEATURES + 1


def sample_hair_styles(count: int, generator: torch.Generator, colours: Tensor | None = None) -> HairStyles:
    """`count` random styles (on the CPU) from one generator, as the module docstring says.

    `colours` (count, 3), optional linear RGB hair colours (e.g. the appearance's "hair"
    region); 85 % of styles take them, the rest a palette colour, a few dyed.
    """
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    g = generator

    def uniform(low: float, high: float, *shape: int) -> Tensor:
        return low + (high - low) * torch.rand((count, *shape), generator=g)

    def pick(odds: tuple[float, ...]) -> Tensor:
        if count == 0:
            return torch.zeros(0, dtype=torch.long)
        return torch.multinomial(torch.tensor(odds), count, replacement=True, generator=g)

    kind = pick(HAIR_KIND_ODDS)
    is_kind = {name: kind == index for index, name in enumerate(HAIR_KINDS)}
    long_, bun = is_kind["long"], is_kind["bun"]
    balding = (is_kind["buzz"] | is_kind["short"]) & (torch.rand(count, generator=g) < 0.3)
    fringe = (torch.rand(count, generator=g) < torch.where(is_kind["medium"], 0.35, 0.2)) & ~bun & ~balding
    front = torch.where(fringe, uniform(0.345, 0.38), uniform(0.5, 0.6))
    front = torch.where(balding, uniform(0.58, 0.66), front)
    temple = torch.maximum(front + uniform(-0.02, 0.08), torch.full((count,), 0.36))
    sideburn_cap = torch.where(long_, 0.2, 0.32)
    above_ear = torch.minimum(uniform(0.24, 0.34), sideburn_cap)
    sideburn = torch.minimum(uniform(0.02, 0.28), above_ear)
    behind_ear = torch.minimum(uniform(-0.05, 0.25), sideburn_cap)
    nape = torch.where(long_, uniform(-0.35, -0.15), uniform(-0.3, 0.05))
    hairline = torch.stack([front, temple, above_ear, sideburn, behind_ear, nape + uniform(0.0, 0.06), nape], dim=1)
    hairline = torch.where(is_kind["bald"][:, None], torch.full_like(hairline, NO_HAIR), hairline)
    bald_top = torch.where(balding, uniform(0.42, 0.56), torch.full((count,), NO_HAIR))

    unit = torch.rand(count, generator=g)
    thickness = torch.zeros(count)
    for name, (low, high) in _THICKNESS_CM.items():
        if high > 0:
            drawn = torch.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
            thickness = torch.where(is_kind[name], drawn, thickness)
    thickness = torch.where(balding, thickness.clamp(max=0.8), thickness) / CM_PER_UNIT
    # The fields are sums of unit cosines: coefficients scaled by 1/sqrt(count/2) make the relative
    # thickness change about the drawn amplitude (std), rounded curls rather than spikes.
    lumps = torch.randn(count, LUMP_FEATURES, generator=g) * uniform(0.05, 0.25)[:, None] / math.sqrt(LUMP_FEATURES / 2)
    curl_amplitude = torch.where(is_kind["curly"], uniform(0.15, 0.3), uniform(0.0, 0.04))
    curls = torch.randn(count, CURL_FEATURES, generator=g) * curl_amplitude[:, None] / math.sqrt(CURL_FEATURES / 2)

    length = torch.where(long_, uniform(-1.1, -0.15), torch.full((count,), CURTAIN_TOP))
    curtain_thickness = uniform(0.6, 2.5) / CM_PER_UNIT
    wave = torch.stack([uniform(0.0, 0.03), uniform(0.0, 2 * math.pi)], dim=1)
    jitter = torch.rand(count, CURTAIN_COLUMNS + 4, generator=g)
    jitter = sum(jitter[:, k : k + CURTAIN_COLUMNS] for k in range(5)) / 5 * 0.7 + 0.3 * jitter[:, 2:-2]
    column_azimuth = curtain_column_azimuths()
    sides = (1 + torch.cos(column_azimuth)) / 2  # 1 beside the face, 0 at the back
    ragged = jitter * uniform(0.0, 0.12)[:, None] + sides * uniform(-0.2, 0.1)[:, None]
    bun_shape = torch.stack([torch.where(bun, uniform(2.5, 4.5) / CM_PER_UNIT, 0.0), uniform(0.35, 0.6)], dim=1)

    beard_kind = pick(_BEARD_ODDS)
    beard_thickness = torch.where(
        beard_kind == 2, uniform(0.15, 0.5), torch.where(beard_kind == 3, uniform(0.5, 1.5), 0)
    )
    density = torch.where(beard_kind == 1, uniform(0.15, 0.35), uniform(0.6, 1.0)) * (beard_kind > 0)
    beard = torch.stack([beard_thickness / CM_PER_UNIT, density], dim=1)

    colour, streaks = _colours(count, g, colours)
    return HairStyles(
        kind,
        hairline,
        bald_top,
        thickness,
        lumps,
        curls,
        length,
        curtain_thickness,
        wave,
        ragged,
        bun_shape,
        beard,
        colour,
        streaks,
    )


def curtain_column_azimuths() -> Tensor:
    """(CURTAIN_COLUMNS,) azimuths of the curtain's columns, from 80° round the back to -80° (as 280°)."""
    start = math.radians(80)
    return torch.linspace(start, 2 * math.pi - start, CURTAIN_COLUMNS)


def _colours(count: int, g: torch.Generator, colours: Tensor | None) -> tuple[Tensor, Tensor]:
    """(count, 3) linear hair colours and (count, STREAK_FEATURES) streak coefficients."""
    palette = torch.as_tensor(srgb_to_linear(np.array(HAIR_SRGB) / 255.0), dtype=torch.float32)
    drawn = (
        palette[torch.multinomial(torch.tensor(_PALETTE_ODDS), count, replacement=True, generator=g)]
        if count
        else palette[:0]
    )
    if colours is not None:
        colours = torch.as_tensor(colours, dtype=torch.float32).cpu()
        if colours.shape != (count, 3):
            raise ValueError(f"colours must have shape ({count}, 3), got {tuple(colours.shape)}")
        drawn = torch.where((torch.rand(count, generator=g) < 0.85)[:, None], colours, drawn)
    dyed = torch.as_tensor(srgb_to_linear(np.array(_DYED_SRGB) / 255.0), dtype=torch.float32)
    dyed = dyed[torch.randint(0, len(_DYED_SRGB), (count,), generator=g)]
    colour = torch.where((torch.rand(count, generator=g) < 0.03)[:, None], dyed, drawn)
    colour = (colour * torch.exp(0.15 * torch.randn(count, 1, generator=g))).clamp(0.0, 1.0)
    low = 0.08 + 0.22 * torch.rand(count, generator=g)
    streaks = torch.randn(count, STREAK_FEATURES, generator=g) * low[:, None]
    return colour, streaks
