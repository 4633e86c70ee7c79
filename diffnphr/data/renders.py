"""On-the-fly training renders of ICT heads: batched, seeded, on any torch device.

The image encoder learns from photos of the training heads that are rendered anew at every
step: `HeadRenderer.sample_scenes` draws everything random about B renders
(`diffnphr.data.scenes`), `render_crops` renders the encoder's input and `render_frames` the
whole "photo" around it (for MediaPipe: the crop-agreement check).

Scene (all in the camera's frame: x right, y up, the camera at the origin looking down -z):

* geometry: `neutral + identity_modes·a + expression_modes·b`, the parts a photo shows
  (`RENDERED_PARTS`: skin, eye sockets, eyeballs, teeth, gums and tongue; ICT's transparent
  eye overlays are left out, and so are its eyelash cards, which render as opaque dark blobs
  over the eye), with the hair and beard volume (`diffnphr.data.hair`: the skin displaced,
  the long-hair slab and the bun, exactly the surface the decoder learns for the same style)
  and a torso in clothes (`diffnphr.data.torso`), turned by yaw / pitch / roll about `PIVOT`
  (between the ears, above the neck);
* colours: each identity's own procedural appearance (`diffnphr.data.appearance`; the
  decoder's z_app encodes exactly these) with the hair's colour over the skin it covers, times
  what z_app does not hold: a few % of per-vertex pore noise and mottling, sometimes freckles;
* shading, per vertex (a triangle spans about one pixel at 256 px): Lambert from a key light
  anywhere in the front hemisphere and sometimes a fill light, each with a colour temperature,
  a tinted ambient term, Blinn-Phong sheen (strongest on the eyes); no shadows;
* camera: perspective with a field of view of `fov_deg` for the frame; the head square
  (below) covers `head_fraction` of the frame side at a random place inside it.

The crop is the project's crop rule (`diffnphr.face.head_squares`, the batched
`head_square`) applied to the head's projected landmarks: eye centres = mean of iBUG corners
(36, 39) and (42, 45), mouth corners 48 and 54 (the subject's right eye and mouth corner are
on the image's left), then jittered (centre, side, angle) like the detector's noise. The
oriented square is rendered directly: the 2D affine map from frame to crop pixels is applied
to the projected vertices, rasterised at `image_size · supersample` on a background drawn in
crop space (`diffnphr.data.backgrounds`), area-averaged and degraded like a photo
(`diffnphr.data.augment`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from diffnphr.data.appearance import REGIONS, AppearanceParams, appearance_basis, vertex_colours
from diffnphr.data.augment import augment_images
from diffnphr.data.backgrounds import BackgroundBank, random_backgrounds
from diffnphr.data.colour import linear_to_srgb
from diffnphr.data.hair import HairModel
from diffnphr.data.scenes import (
    MOTTLE_FIELDS,
    PIVOT,
    PORE_FIELDS,
    Lighting,
    RenderConfig,
    RenderScenes,
    SceneSampler,
    in_radians,
    key_points,
)
from diffnphr.data.torso import TorsoModel
from diffnphr.face.squares import head_squares
from diffnphr.render import rasterise, vertex_normals

if TYPE_CHECKING:
    from diffnphr.data.hair_styles import HairStyles
    from diffnphr.data.ict import ICTFaceModel

RENDERED_PARTS = (
    "face",
    "head_and_neck",
    "mouth_socket",
    "eye_socket_left",
    "eye_socket_right",
    "gums_and_tongue",
    "teeth",
    "eyeball_left",
    "eyeball_right",
)
SPECULAR_BY_REGION = {
    "skin": 1.0,
    "lips": 1.5,
    "brows": 0.4,
    "mouth": 1.0,
    "eye_socket": 1.5,
    "teeth": 1.0,
    "sclera": 3.0,
    "iris": 3.0,
    "pupil": 3.0,
    "hair": 0.3,
}
"""Sheen strength per appearance region, relative to the scene's specular strength."""
SHININESS_BY_REGION = {"sclera": 6.0, "iris": 6.0, "pupil": 6.0, "eye_socket": 2.0}
"""Blinn-Phong exponent factor per region (1 elsewhere): corneas and wet tissue give tight highlights."""
_TEXTURE_SEED = 20261125
_MOTTLE_SMOOTHING = 12  # neighbour-averaging passes: a few mm to 1 cm blotches
_FRECKLE_SMOOTHING = 2


class HeadRenderer:
    """Batched renders of ICT heads on one device (module docstring); build once, call every step."""

    def __init__(
        self,
        model: ICTFaceModel,
        device: torch.device | str,
        config: RenderConfig | None = None,
        backgrounds: BackgroundBank | None = None,
    ) -> None:
        config = config or RenderConfig()
        self.model, self.device, self.config, self.backgrounds = model, torch.device(device), config, backgrounds
        vertex_count = model.num_vertices
        self._neutral = torch.tensor(model.neutral, device=self.device)
        self._identity_modes = torch.tensor(model.identity_modes, device=self.device).reshape(-1, vertex_count * 3)
        self._expression_modes = torch.tensor(model.expression_modes, device=self.device).reshape(-1, vertex_count * 3)
        faces = np.concatenate([model.faces[model.part_faces(name)] for name in RENDERED_PARTS])
        self._faces = torch.tensor(faces, device=self.device)
        self._basis = appearance_basis(model).to(self.device)
        weights = self._basis.region_weights
        self._sheen = weights @ torch.tensor([SPECULAR_BY_REGION[r] for r in REGIONS], device=self.device)
        self._shininess = weights @ torch.tensor([SHININESS_BY_REGION.get(r, 1.0) for r in REGIONS], device=self.device)
        self._shininess = self._shininess + (1.0 - weights.sum(dim=1))  # limbal ring rows sum below 1
        self._pivot = torch.tensor(PIVOT, device=self.device)
        self._landmarks = torch.tensor(model.landmarks_68, device=self.device)
        pores, mottles, freckles = _texture_fields(model)
        self._texture = torch.cat([pores, mottles], dim=1).to(self.device)  # (V, T)
        self._freckle_field = freckles.to(self.device)
        self._hair_model, self._torso_model = HairModel(model, self.device), TorsoModel(model, self.device)
        self._scenes = SceneSampler(model, config, self._torso_model)

    def sample_scenes(
        self,
        identity_coefficients: Tensor,
        expression_weights: Tensor,
        appearance: AppearanceParams,
        seed: int,
        hair: HairStyles | None = None,
    ) -> RenderScenes:
        """Random scenes of B heads (`SceneSampler.sample`): their identity, expression and appearance
        as given, their hair when given (else a random style), everything else from `seed` alone."""
        return self._scenes.sample(identity_coefficients, expression_weights, appearance, seed, hair)

    # ----------------------------------------------------------------------------------------
    def render_crops(self, scenes: RenderScenes, copies: int = 1) -> Tensor:
        """(B · copies, 3, S, S) float32 sRGB in [0, 1], S = image_size: the encoder's input of each scene.

        The jittered head square of the crop rule, rendered directly at S · supersample and
        area-averaged, on a background drawn in crop space, then degraded like a photo.

        With `copies` > 1 each scene is posed and rasterised once and shown `copies` times (row
        b · copies + j): copy 0 in the scene's own lights, the others each in new random lights
        (`SceneSampler.lighting`), every copy on its own background with its own degradations. A copy
        then costs its shading, compositing and degradation, not the geometry and rasterisation.
        """
        if copies < 1:
            raise ValueError(f"copies must be at least 1, got {copies}")
        scenes = self._on_device(scenes)
        size = self.config.image_size * self.config.supersample
        transform = self.crop_transforms(scenes) * size
        return self._render(scenes, transform, size, salt=0, copies=copies)

    def render_frames(self, scenes: RenderScenes, size: int = 512) -> Tensor:
        """(B, 3, size, size) float32 sRGB in [0, 1]: the whole photo each crop is cut from."""
        if int(size) < 8:
            raise ValueError(f"size must be at least 8 pixels, got {size}")
        scenes = self._on_device(scenes)
        full = int(size) * self.config.supersample
        identity = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], device=self.device)
        return self._render(scenes, identity.expand(len(scenes), 2, 3) * full, full, salt=1)

    def landmarks(self, scenes: RenderScenes, crop: bool = True) -> Tensor:
        """(B, 68, 2) projected iBUG landmarks in units of the crop's side (crop=True; the jittered
        square) or of the frame's side; multiply by the image size for pixels."""
        scenes = self._on_device(scenes)
        points = self._landmark_points(scenes)
        if not crop:
            return points
        return _apply_affine(self.crop_transforms(scenes), points)

    def head_projection(self, scenes: RenderScenes) -> tuple[Tensor, Tensor, Tensor]:
        """The bare heads' vertices (no hair) projected into the frame: (B, V, 2) in frame sides (x right, y
        down), (B, V) inverse depths and the rendered triangles (F, 3): what a point Face Mesh traces on a
        render is back-projected through (`diffnphr.eval.correspondence`)."""
        scenes = self._on_device(scenes)
        points, inverse_depth = self._project(self._to_camera(self._head_vertices(scenes), scenes), scenes)
        return points, inverse_depth, self._faces

    def head_squares(self, scenes: RenderScenes, jitter: bool = True) -> tuple[Tensor, Tensor, Tensor]:
        """The crop squares in frame units (side 1): centre (B, 2), unit x_axis (B, 2), half_side (B,).

        The crop rule on the projected key points, moved by the config's `crop_calibration` and
        (jitter=True) by the scenes' crop jitter.
        """
        scenes = self._on_device(scenes)
        centre, x_axis, half_side = head_squares(*key_points(self._landmark_points(scenes), range(68)))
        change = in_radians(self.config.crop_calibration).to(self.device).expand(len(scenes), 4)
        change = change + scenes.crop_jitter if jitter else change
        shift, log_scale, angle = change[:, :2], change[:, 2], change[:, 3]
        y_axis = torch.stack([-x_axis[:, 1], x_axis[:, 0]], dim=1)
        centre = centre + 2 * half_side[:, None] * (shift[:, :1] * x_axis + shift[:, 1:] * y_axis)
        cos, sin = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        return centre, cos * x_axis + sin * y_axis, half_side * torch.exp(log_scale)

    def crop_transforms(self, scenes: RenderScenes) -> Tensor:
        """(B, 2, 3) affine maps from frame units to crop units (each image's side is 1)."""
        centre, x_axis, half_side = self.head_squares(scenes)
        y_axis = torch.stack([-x_axis[:, 1], x_axis[:, 0]], dim=1)
        top_left = centre - half_side[:, None] * (x_axis + y_axis)
        linear = torch.stack([x_axis, y_axis], dim=1) / (2 * half_side[:, None, None])  # rows: crop x, crop y
        return torch.cat([linear, -(linear @ top_left[:, :, None])], dim=2)

    # ----------------------------------------------------------------------------------------
    def _on_device(self, scenes: RenderScenes) -> RenderScenes:
        if not isinstance(scenes, RenderScenes):
            raise ValueError(f"scenes must be RenderScenes from sample_scenes, got {type(scenes).__name__}")
        return scenes.to(self.device)

    def _head_vertices(self, scenes: RenderScenes, rows: Tensor | None = None) -> Tensor:
        """(B, V, 3) canonical head vertices of the scenes, or only the vertex `rows` (B, R, 3)."""
        columns = slice(None) if rows is None else (rows[:, None] * 3 + torch.arange(3, device=self.device)).reshape(-1)
        offsets = (
            scenes.identity @ self._identity_modes[:, columns] + scenes.expression @ self._expression_modes[:, columns]
        )
        return offsets.view(len(scenes), -1, 3) + self._neutral[slice(None) if rows is None else rows]

    def _to_camera(self, vertices: Tensor, scenes: RenderScenes) -> Tensor:
        """Canonical points (B, N, 3) posed in the camera's frame."""
        return (vertices - self._pivot) @ scenes.rotation.transpose(1, 2) + scenes.translation[:, None]

    def _landmark_points(self, scenes: RenderScenes) -> Tensor:
        """(B, 68, 2) projected iBUG landmarks in frame units."""
        return self._project(self._to_camera(self._head_vertices(scenes, self._landmarks), scenes), scenes)[0]

    def _posed(self, scenes: RenderScenes) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """Camera-frame vertices (B, N, 3), faces (F, 3), sRGB albedo (B, N, 3), sheen and shininess (B, N)."""
        count = len(scenes)
        bare = self._head_vertices(scenes)
        on_heads = self._hair_model.on_heads(bare, scenes.hair)
        coverage = on_heads.coverage[..., None]
        albedo = vertex_colours(self._basis, scenes.appearance) * self._skin_texture(scenes)
        albedo = albedo * (1 - coverage) + on_heads.colours * coverage
        skin = linear_to_srgb(scenes.appearance.region_colours[:, REGIONS.index("skin")])
        pieces = self._hair_model.pieces(on_heads.vertices, scenes.hair)
        meshes = [
            (on_heads.vertices, self._faces, albedo),
            (pieces.vertices, pieces.faces, pieces.colours),
            self._torso_model.mesh(bare, scenes.torso, skin),
        ]
        offsets = np.cumsum([0] + [mesh[0].shape[1] for mesh in meshes[:-1]])
        faces = torch.cat([mesh[1] + offset for mesh, offset in zip(meshes, offsets)])
        vertices, albedo = (torch.cat([mesh[index] for mesh in meshes], dim=1) for index in (0, 2))
        hair_sheen = SPECULAR_BY_REGION["hair"]
        added = vertices.shape[1] - len(self._sheen)
        sheen = torch.cat(
            [
                self._sheen * (1 - on_heads.coverage) + hair_sheen * on_heads.coverage,
                torch.full((count, added), hair_sheen, device=self.device),
            ],
            dim=1,
        )
        shininess = torch.cat([self._shininess, torch.ones(added, device=self.device)]).expand(count, -1)
        return self._to_camera(vertices, scenes), faces, albedo, sheen, shininess

    def _skin_texture(self, scenes: RenderScenes) -> Tensor:
        """(B, V, 3) multiplicative skin texture: pores and mottling, freckles (brown, on skin only)."""
        log_brightness = scenes.skin_texture @ self._texture.T  # (B, V)
        freckle = (self._freckle_field[None] - scenes.freckles[:, :1]).clamp_min(0).clamp_max(1) * scenes.freckles[
            :, 1:
        ]
        tint = torch.tensor([0.6, 0.85, 1.0], device=self.device)
        log_colour = log_brightness[..., None] - freckle[..., None] * tint
        return torch.exp(log_colour * self._basis.modulated[:, None])

    def _project(self, camera: Tensor, scenes: RenderScenes) -> tuple[Tensor, Tensor]:
        """Frame coordinates (B, N, 2) in frame sides (x right, y down) and inverse depths (B, N)."""
        inverse_depth = 1.0 / (-camera[..., 2]).clamp_min(1e-4)
        scale = scenes.focal[:, None] * inverse_depth
        points = torch.stack([0.5 + camera[..., 0] * scale, 0.5 - camera[..., 1] * scale], dim=-1)
        return points, inverse_depth

    def _shade(
        self, camera: Tensor, normals: Tensor, albedo: Tensor, sheen: Tensor, shininess: Tensor, lighting: Lighting
    ) -> Tensor:
        """(B · k, N, 3) sRGB vertex colours of B posed meshes, each lit by k of the `lighting` rows (module
        docstring); row b · k + j of the result is mesh b in lighting row b · k + j."""
        copies = len(lighting.ambient) // len(camera)
        to_eye = F.normalize(-camera, dim=-1)
        normals = normals * torch.where((normals * to_eye).sum(-1, keepdim=True) < 0, -1.0, 1.0)  # two-sided
        linear = torch.where(albedo <= 0.04045, albedo / 12.92, ((albedo + 0.055) / 1.055) ** 2.4)
        normals, to_eye, linear, sheen, shininess = (
            values.repeat_interleave(copies, dim=0) for values in (normals, to_eye, linear, sheen, shininess)
        )
        light = lighting.ambient[:, None].expand_as(linear).clone()
        highlight = torch.zeros_like(linear)
        exponent = lighting.specular[:, 1:2] * shininess
        for index in range(lighting.light_directions.shape[1]):
            direction = lighting.light_directions[:, index, None]  # (B · k, 1, 3)
            colour = lighting.light_colours[:, index, None]
            light = light + colour * (normals * direction).sum(-1, keepdim=True).clamp_min(0)
            half = F.normalize(direction + to_eye, dim=-1)
            facing = (normals * half).sum(-1).clamp_min(0)
            highlight = highlight + colour * (facing**exponent * sheen * lighting.specular[:, :1])[..., None]
        return linear_to_srgb(linear * light + highlight)

    def _copy_lighting(self, scenes: RenderScenes, copies: int, generator: torch.Generator) -> Lighting:
        """B · copies lightings: each scene's own, then `copies` - 1 new ones (`render_crops`)."""
        if copies == 1:
            return scenes.lighting
        drawn = self._scenes.lighting(len(scenes) * (copies - 1), generator)
        rows = []
        for own, new in zip(scenes.lighting, drawn):
            new = new.to(self.device).view(len(scenes), copies - 1, *own.shape[1:])
            rows.append(torch.cat([own[:, None], new], dim=1).flatten(0, 1))
        return Lighting(*rows)

    def _render(self, scenes: RenderScenes, transform: Tensor, size: int, salt: int, copies: int = 1) -> Tensor:
        """Images (B · copies, 3, size / supersample, …) of the scenes (`render_crops`), with frame units mapped
        to pixels by `transform`."""
        count = len(scenes) * copies
        camera, faces, albedo, sheen, shininess = self._posed(scenes)
        generator = torch.Generator().manual_seed(scenes.seed + salt)
        lighting = self._copy_lighting(scenes, copies, generator)
        colours = self._shade(camera, vertex_normals(camera, faces), albedo, sheen, shininess, lighting)
        points, inverse_depth = self._project(camera, scenes)
        triangle, weights = rasterise(_apply_affine(transform, points), inverse_depth, faces, size)
        triangle, weights = triangle.repeat_interleave(copies, dim=0), weights.repeat_interleave(copies, dim=0)
        corners = (
            faces[triangle.clamp_min(0)] + (torch.arange(count, device=self.device) * camera.shape[1])[:, None, None]
        )
        pixels = (colours.reshape(-1, 3)[corners] * weights[..., None]).sum(dim=2)  # (B · copies, size², 3)
        background = random_backgrounds(count, size, generator, self.device, self.backgrounds)
        drawn = (triangle >= 0).view(count, 1, size, size)
        images = torch.where(drawn, pixels.transpose(1, 2).reshape(count, 3, size, size), background)
        images = F.avg_pool2d(images, self.config.supersample) if self.config.supersample > 1 else images
        if self.config.augment is not None:
            images = augment_images(images, generator, self.config.augment)
        return images.clamp(0.0, 1.0)


def _apply_affine(transform: Tensor, points: Tensor) -> Tensor:
    """Points (B, N, 2) through affine maps (B, 2, 3)."""
    return points @ transform[:, :, :2].transpose(1, 2) + transform[:, None, :, 2]


def _texture_fields(model: ICTFaceModel) -> tuple[Tensor, Tensor, Tensor]:
    """Fixed per-vertex fields of unit std: pore noise (V, P), mottling (V, M), a freckle field (V,)."""
    generator = torch.Generator().manual_seed(_TEXTURE_SEED)
    count = model.num_vertices
    edges = np.concatenate([model.faces[:, [0, 1]], model.faces[:, [1, 2]], model.faces[:, [2, 0]]])
    edges = torch.as_tensor(np.concatenate([edges, edges[:, ::-1]]).T.copy())
    degree = torch.zeros(count).index_add_(0, edges[0], torch.ones(edges.shape[1])).clamp_min(1)[:, None]

    def smoothed(noise: Tensor, passes: int) -> Tensor:
        for _ in range(passes):
            noise = 0.5 * noise + 0.5 * torch.zeros_like(noise).index_add_(0, edges[0], noise[edges[1]]) / degree
        noise = noise - noise.mean(dim=0)
        return noise / noise.std(dim=0).clamp_min(1e-8)

    pores = smoothed(torch.randn(count, PORE_FIELDS, generator=generator), 0)
    mottles = smoothed(torch.randn(count, MOTTLE_FIELDS, generator=generator), _MOTTLE_SMOOTHING)
    freckles = smoothed(torch.randn(count, 1, generator=generator), _FRECKLE_SMOOTHING)[:, 0]
    return pores, mottles, freckles
