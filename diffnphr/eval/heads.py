"""Ground-truth ICT heads and how a decoded head is compared with one: what every evaluation shares.

Ground truth is the decoder's own training surface (`diffnphr.data.heads`): the skin and the
eyeballs, only the triangles exposed on that head, in the canonical frame. Both surfaces are
cropped to y ≥ `frame.FLOOR_Y`, the extraction box's floor (the neck below it is never
extracted), by sampling each whole surface and keeping the points above the floor: the kept
points are uniform by area on the cropped surface. The face region is the ICT `face` part.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffnphr.data.appearance import appearance_basis, vertex_colours
from diffnphr.data.heads import exposed_faces
from diffnphr.data.sampling import HeadSampler
from diffnphr.eval.metrics import SurfaceSamples, head_and_face_metrics, sample_surface
from diffnphr.frame import FLOOR_Y

if TYPE_CHECKING:
    from diffnphr.data.ict import ICTFaceModel
    from diffnphr.heads.split import HeadSplit
    from diffnphr.nphm.decoder import MonoNPHM


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
            head.point_sdf,
            resolution=resolution,
            device=device,
            color_fn=head.point_colour if colours else None,
            close_at_box=False,  # the comparison crops both surfaces at the floor: no cap there
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
