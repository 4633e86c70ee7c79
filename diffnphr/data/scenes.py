"""What is random about a training render, and drawing it: pose, camera, lights, skin texture, crop jitter, hair.

The image encoder learns from photos of training heads rendered anew at every step
(`diffnphr.data.renders.HeadRenderer`). `SceneSampler.sample` draws everything random about B
renders from one CPU `torch.Generator` seeded by one seed, so CPU and GPU draw the same scenes:
a head pose about `PIVOT`, a perspective camera whose head square covers `head_fraction` of the
frame at a random place, a key light in the front hemisphere and sometimes a fill light (each
with a colour temperature), a tinted ambient term, sheen, pore noise, mottling and sometimes
freckles, the crop square's jitter (the detector's measured noise), a torso in clothes, and a
hair style unless the caller gives the heads' own (`diffnphr.data.hair_styles`: a head whose
latent is a training target wears the style its target was made with). `RenderConfig` holds
every range.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from diffnphr.data.appearance import REGIONS, AppearanceParams
from diffnphr.data.augment import AugmentConfig
from diffnphr.data.hair_styles import HairStyles, sample_hair_styles
from diffnphr.face.squares import head_squares

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel
    from diffnphr.data.torso import TorsoModel, TorsoStyles

PIVOT = (0.0, 0.0, -0.3)
"""Canonical point the head turns about: between the ears, at the top of the neck."""
KEY_LANDMARKS = ((36, 39), (42, 45), 48, 54)
"""iBUG landmarks of the crop rule's key points: eye (image left), eye (image right), mouth corners."""
PORE_FIELDS = 4
MOTTLE_FIELDS = 4


@dataclass(frozen=True)
class RenderConfig:
    """Every randomisation range of the training renders (angles in degrees, sizes as fractions).

    Uniform ranges are (low, high). The crop square of the projected landmarks is changed by
    (centre shift along the square's own x and y axes in square sides, log of the side's scale,
    angle in degrees): always by `crop_calibration`, which moves the rule on ICT landmarks to
    where the detector's rule on Face Mesh points lands on the same render, and per render by
    N(0, `crop_jitter_std`), the detector's residual noise (`diffnphr.data.crop_agreement`).
    """

    image_size: int = 128
    supersample: int = 2
    fov_deg: tuple[float, float] = (15.0, 50.0)
    head_fraction: tuple[float, float] = (0.35, 0.85)
    yaw_deg: float = 45.0
    pitch_deg: float = 20.0
    roll_deg: float = 10.0
    key_intensity: tuple[float, float] = (0.6, 1.2)
    ambient: tuple[float, float] = (0.15, 0.55)
    fill_probability: float = 0.5
    fill_intensity: tuple[float, float] = (0.1, 0.45)
    colour_temperature: tuple[float, float] = (-1.0, 1.0)  # -1 warm (tungsten) .. +1 cool (shade)
    specular: tuple[float, float] = (0.02, 0.12)
    shininess: tuple[float, float] = (8.0, 40.0)
    pore_amplitude: tuple[float, float] = (0.0, 0.04)  # std of the log-brightness noise
    mottle_amplitude: tuple[float, float] = (0.0, 0.05)
    freckle_probability: float = 0.15
    # Measured by `python -m diffnphr eval crops --count 300` (seed 0, 512 px frames, background bank):
    # Face Mesh squares vs projected-landmark squares on 299 traced renders (1 without a face):
    # shift x -0.0001 ± 0.0029, shift y -0.0007 ± 0.0034 sides, log scale +0.0160 ± 0.0281,
    # angle -0.15 ± 1.31 degrees. Only the scale is systematic (Face Mesh's squares are 1.6 %
    # larger); the standard deviations are the jitter.
    crop_calibration: tuple[float, float, float, float] = (0.0, 0.0, 0.016, 0.0)
    crop_jitter_std: tuple[float, float, float, float] = (0.003, 0.0035, 0.028, 1.3)
    augment: AugmentConfig | None = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if self.image_size < 8 or self.supersample < 1:
            raise ValueError(
                f"RenderConfig needs image_size >= 8 and supersample >= 1, got {self.image_size} and {self.supersample}"
            )
        for name in (
            "fov_deg",
            "head_fraction",
            "key_intensity",
            "ambient",
            "fill_intensity",
            "colour_temperature",
            "specular",
            "shininess",
            "pore_amplitude",
            "mottle_amplitude",
        ):
            low, high = getattr(self, name)
            if not low <= high:
                raise ValueError(f"RenderConfig.{name} must be a range (low, high) with low <= high, got {(low, high)}")
        if not (self.fov_deg[0] > 0.0 and self.fov_deg[1] < 180.0):
            raise ValueError(f"RenderConfig.fov_deg must lie within (0, 180), got {self.fov_deg}")
        if not (self.head_fraction[0] > 0.0 and self.head_fraction[1] <= 1.0):
            raise ValueError(f"RenderConfig.head_fraction must lie within (0, 1], got {self.head_fraction}")
        for name in ("fill_probability", "freckle_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"RenderConfig.{name} must lie in [0, 1], got {getattr(self, name)}")
        for name in ("yaw_deg", "pitch_deg", "roll_deg"):
            if getattr(self, name) < 0:
                raise ValueError(f"RenderConfig.{name} must be non-negative, got {getattr(self, name)}")
        for name in ("crop_calibration", "crop_jitter_std"):
            if len(getattr(self, name)) != 4:
                raise ValueError(
                    f"RenderConfig.{name} needs 4 numbers (shift x, shift y, log scale, angle), "
                    f"got {getattr(self, name)}"
                )
        if min(self.crop_jitter_std) < 0:
            raise ValueError(f"RenderConfig.crop_jitter_std must be non-negative, got {self.crop_jitter_std}")


class Lighting(NamedTuple):
    """The lights of B renders (the `RenderScenes` fields of the same names)."""

    light_directions: Tensor  # (B, 2, 3)
    light_colours: Tensor  # (B, 2, 3)
    ambient: Tensor  # (B, 3)
    specular: Tensor  # (B, 2)


@dataclass(frozen=True)
class RenderScenes:
    """Everything random about B renders, as tensors (B first); see the module docstring's frame."""

    identity: Tensor  # (B, I) identity coefficients
    expression: Tensor  # (B, E) blendshape weights
    appearance: AppearanceParams  # B heads' procedural colours
    rotation: Tensor  # (B, 3, 3) head rotation about PIVOT
    translation: Tensor  # (B, 3) camera-frame position of PIVOT
    focal: Tensor  # (B,) focal length in frame sides
    crop_jitter: Tensor  # (B, 4) random square centre shift along its x and y axes (sides), log side scale, angle (rad)
    light_directions: Tensor  # (B, 2, 3) unit vectors towards the key and the fill light
    light_colours: Tensor  # (B, 2, 3) their linear RGB intensities (a zero fill where there is none)
    ambient: Tensor  # (B, 3) linear RGB
    specular: Tensor  # (B, 2) strength, shininess
    skin_texture: Tensor  # (B, pore + mottle fields) log-brightness coefficients
    freckles: Tensor  # (B, 2) threshold on the freckle field, strength (0: none)
    hair: HairStyles  # the B heads' hair
    torso: TorsoStyles  # the B heads' neck, shoulders and clothes
    seed: int  # of the per-pixel streams: backgrounds and photo degradations

    def to(self, device: torch.device | str) -> RenderScenes:
        """The same scenes with their tensors on `device`."""
        moved = {}
        for item in fields(self):
            value = getattr(self, item.name)
            moved[item.name] = value.to(device) if hasattr(value, "to") else value
        return replace(self, **moved)

    def __len__(self) -> int:
        return int(self.identity.shape[0])

    @property
    def lighting(self) -> Lighting:
        """The scenes' lights."""
        return Lighting(self.light_directions, self.light_colours, self.ambient, self.specular)


class SceneSampler:
    """Draws `RenderScenes` for heads of one ICT model (module docstring); build once, call every step."""

    def __init__(self, model: ICTFaceModel, config: RenderConfig, torso_model: TorsoModel) -> None:
        self.model, self.config, self._torso_model = model, config, torso_model
        # The mean head's square in a front view fixes the anchor placed in the frame and the head size.
        key = key_points(torch.tensor(model.neutral)[None, :, :2] * torch.tensor([1.0, -1.0]), model.landmarks_68)
        centre, _, half_side = head_squares(*key)
        eye_depth = float(model.neutral[list(KEY_LANDMARKS[0] + KEY_LANDMARKS[1]), 2].mean())
        self.anchor = torch.tensor([float(centre[0, 0]), -float(centre[0, 1]), eye_depth])
        self.square_units = 2.0 * float(half_side[0])

    def sample(
        self,
        identity_coefficients: Tensor,
        expression_weights: Tensor,
        appearance: AppearanceParams,
        seed: int,
        hair: HairStyles | None = None,
    ) -> RenderScenes:
        """Random scenes of B heads (their identity, expression and appearance as given, and their
        hair when given, else a random style in each head's hair colour), from `seed` alone."""
        identity = torch.as_tensor(identity_coefficients, dtype=torch.float32).cpu()
        expression = torch.as_tensor(expression_weights, dtype=torch.float32).cpu()
        count = identity.shape[0] if identity.ndim == 2 else -1
        if identity.shape != (count, self.model.identity_modes.shape[0]):
            raise ValueError(
                f"identity_coefficients must have shape (B, {self.model.identity_modes.shape[0]}), "
                f"got {tuple(identity.shape)}"
            )
        if expression.shape != (count, len(self.model.expression_names)):
            raise ValueError(
                f"expression_weights must have shape ({count}, {len(self.model.expression_names)}) "
                f"to match the {count} identities, got {tuple(expression.shape)}"
            )
        if appearance.region_colours.shape[0] != count or appearance.variation.shape[0] != count:
            raise ValueError(
                f"appearance holds {appearance.region_colours.shape[0]} heads, but {count} identities were given"
            )
        if hair is not None and len(hair) != count:
            raise ValueError(f"{len(hair)} hair styles were given for {count} identities")
        config = self.config
        generator = torch.Generator().manual_seed(int(seed))

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand((count, *shape), generator=generator)

        angles = (2 * torch.rand(count, 3, generator=generator) - 1) * torch.tensor(
            [config.yaw_deg, config.pitch_deg, config.roll_deg]
        )
        rotation = head_rotation(*torch.deg2rad(angles).unbind(dim=1))
        focal = 0.5 / torch.tan(torch.deg2rad(uniform(config.fov_deg)) / 2)
        fraction = uniform(config.head_fraction)
        place = fraction[:, None] / 2 + (1 - fraction[:, None]) * torch.rand(count, 2, generator=generator)
        distance = focal * self.square_units / fraction
        target = torch.stack(
            [(place[:, 0] - 0.5) * distance / focal, (0.5 - place[:, 1]) * distance / focal, -distance], dim=1
        )
        translation = target - rotation @ (self.anchor - torch.tensor(PIVOT))

        jitter = torch.randn(count, 4, generator=generator) * in_radians(config.crop_jitter_std)

        lighting = self.lighting(count, generator)

        texture = torch.randn(count, PORE_FIELDS + MOTTLE_FIELDS, generator=generator)
        texture[:, :PORE_FIELDS] *= uniform(config.pore_amplitude)[:, None] / math.sqrt(PORE_FIELDS)
        texture[:, PORE_FIELDS:] *= uniform(config.mottle_amplitude)[:, None] / math.sqrt(MOTTLE_FIELDS)
        freckled = torch.rand(count, generator=generator) < config.freckle_probability
        freckles = torch.stack([uniform((1.0, 2.5)), uniform((0.2, 0.6)) * freckled], dim=1)

        drawn = sample_hair_styles(count, generator, appearance.region_colours[:, REGIONS.index("hair")].cpu())
        hair = drawn if hair is None else hair.to("cpu")
        torso = self._torso_model.sample_styles(count, generator)
        pixel_seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        return RenderScenes(
            identity=identity,
            expression=expression,
            appearance=appearance.to("cpu"),
            rotation=rotation,
            translation=translation,
            focal=focal,
            crop_jitter=jitter,
            **lighting._asdict(),
            skin_texture=texture,
            freckles=freckles,
            hair=hair,
            torso=torso,
            seed=pixel_seed,
        )

    def lighting(self, count: int, generator: torch.Generator) -> Lighting:
        """`count` random lightings (`RenderScenes.light_directions`, `light_colours`, `ambient`, `specular`):
        part of every scene, and alone what tells a head's relit copies apart (`HeadRenderer.render_crops`)."""
        config = self.config

        def uniform(bounds: tuple[float, float], *shape: int) -> Tensor:
            return bounds[0] + (bounds[1] - bounds[0]) * torch.rand((count, *shape), generator=generator)

        directions = torch.randn(count, 2, 3, generator=generator)
        directions[..., 2] = directions[..., 2].abs() + 0.1  # the front hemisphere, not grazing
        directions = F.normalize(directions, dim=-1)
        intensity = torch.stack(
            [
                uniform(config.key_intensity),
                uniform(config.fill_intensity) * (torch.rand(count, generator=generator) < config.fill_probability),
            ],
            dim=1,
        )
        light_colours = intensity[..., None] * temperature_rgb(uniform(config.colour_temperature, 2))
        ambient = uniform(config.ambient)[:, None] * temperature_rgb(uniform(config.colour_temperature))
        specular = torch.stack([uniform(config.specular), uniform(config.shininess)], dim=1)
        return Lighting(directions, light_colours, ambient, specular)


def key_points(points: Tensor, landmark_ids) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The crop rule's four key points (B, 2) from landmark positions `points[:, landmark_ids]`."""
    ids = list(landmark_ids)
    (a, b), (c, d), mouth_left, mouth_right = KEY_LANDMARKS
    at = lambda landmark: points[:, ids[landmark]]  # noqa: E731
    return (at(a) + at(b)) / 2, (at(c) + at(d)) / 2, at(mouth_left), at(mouth_right)


def in_radians(change: tuple[float, float, float, float]) -> Tensor:
    """A square change (shift x, shift y, log scale, angle in degrees) as a tensor with the angle in radians."""
    return torch.tensor([change[0], change[1], change[2], math.radians(change[3])])


def head_rotation(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """(B, 3, 3) roll · pitch · yaw: positive yaw turns the nose to the image's right, positive
    pitch lifts it, positive roll turns the head counter-clockwise in the image."""
    one, zero = torch.ones_like(yaw), torch.zeros_like(yaw)

    def matrix(*rows: Tensor) -> Tensor:
        return torch.stack(rows, dim=-1).view(-1, 3, 3)

    c, s = torch.cos(yaw), torch.sin(yaw)
    turn = matrix(c, zero, s, zero, one, zero, -s, zero, c)
    c, s = torch.cos(pitch), torch.sin(pitch)
    nod = matrix(one, zero, zero, zero, c, -s, zero, s, c)
    c, s = torch.cos(roll), torch.sin(roll)
    tilt = matrix(c, -s, zero, s, c, zero, zero, zero, one)
    return tilt @ nod @ turn


def temperature_rgb(temperature: Tensor) -> Tensor:
    """(..., 3) linear RGB gains of a light's colour temperature: -1 warm, 0 white, +1 cool."""
    return torch.exp(temperature[..., None] * torch.tensor([-0.22, -0.02, 0.25]))
