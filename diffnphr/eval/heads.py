"""Ground-truth ICT heads and how a decoded head is compared with one: what every evaluation shares.

Ground truth is the decoder's own training surface (`diffnphr.data.head_geometry`): skin with
hair and beard, eyeballs, teeth, the long-hair curtain and the bun, only the triangles exposed
on that head, in the canonical frame. Both surfaces are cropped to the extraction box
(`frame.BOX_MIN`..`BOX_MAX`: its floor cuts the neck, and a tall curly head or a bun may reach
past its top or back; what lies outside it is never extracted), by sampling each whole surface
and keeping the points inside the box: the kept points are uniform by area on the cropped
surface. Regions: the face (ICT's `face` part, the eyeballs and teeth) and the hair (skin the
hair covers, the curtain and the bun). Every metric is reported raw and after a similarity
alignment of the prediction to the ground truth (`eval.metrics.similarity_alignment`), as
"aligned_<region>".
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from diffnphr.eval.metrics import SurfaceSamples, region_metrics, sample_surface, similarity_alignment
from diffnphr.frame import BOX_MAX, BOX_MIN

if TYPE_CHECKING:
    from diffnphr.data.head_geometry import HeadGeometry
    from diffnphr.heads.split import HeadSplit
    from diffnphr.nphm.decoder import MonoNPHM

REGIONS = ("face", "hair")


class GroundTruthHeads:
    """Ground-truth surfaces of ICT heads with hair (exposed triangles), with region labels and colours."""

    def __init__(self, geometry: HeadGeometry):
        self.device = geometry.device
        self._geometry = geometry

    def mesh(
        self, split: HeadSplit, identity: int, slot: int, expression_identity: int | None = None
    ) -> dict[str, Tensor]:
        """The head of split row `identity` with expression `slot`: vertices (N, 3), faces (F', 3)
        of its exposed triangles, face_region and hair_region (F',) bool, colours (N, 3) sRGB in
        [0, 1]. With `expression_identity`, the expression is that row's slot instead (expression
        transfer)."""
        factors = split.factors(torch.tensor([identity]), torch.tensor([slot]))
        if expression_identity is not None:
            moved = split.factors(torch.tensor([expression_identity]), torch.tensor([slot]))
            factors = type(factors)(factors.identity, moved.expression, factors.appearance, factors.hair)
        return self._geometry.build(factors).head(0)


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


def sample_in_box(
    vertices: Tensor,
    faces: Tensor,
    count: int,
    seed: int,
    box: tuple[tuple[float, ...], tuple[float, ...]] = (BOX_MIN, BOX_MAX),
) -> SurfaceSamples:
    """`count` points uniform by area on the part of a mesh inside `box` (face_index into `faces`)."""
    low = torch.as_tensor(box[0], dtype=vertices.dtype, device=vertices.device)
    high = torch.as_tensor(box[1], dtype=vertices.dtype, device=vertices.device)

    def inside(points: Tensor) -> Tensor:
        return ((points >= low) & (points <= high)).all(dim=-1)

    kept = inside(vertices[faces.long()]).any(dim=1).nonzero().squeeze(1)
    if len(kept) == 0:
        raise ValueError("the mesh lies entirely outside the extraction box: nothing to compare")
    drawn = count
    for attempt in range(8):
        samples = sample_surface(vertices, faces[kept], int(drawn * 1.1) + 256, seed + attempt)
        chosen = inside(samples.points).nonzero().squeeze(1)
        if len(chosen) >= count:
            chosen = chosen[:count]
            return SurfaceSamples(samples.points[chosen], samples.normals[chosen], kept[samples.face_index[chosen]])
        drawn = int(drawn * count / max(len(chosen), 1)) + 1
    raise ValueError(f"could not draw {count} points inside the extraction box: the surface there is (almost) empty")


def compare_head(
    pred_vertices: Tensor, pred_faces: Tensor, truth: dict[str, Tensor], points: int, seed: int, with_floor: bool = True
) -> dict[str, dict[str, float]]:
    """Head and region metrics (`diffnphr.eval.metrics`) of a predicted mesh against a
    `GroundTruthHeads.mesh`, both cropped to the extraction box, `points` samples per side, raw ("head",
    "face", "hair" where the head has hair) and after a similarity alignment ("aligned_head",
    ...; its scale as "alignment": {"scale": s}); with `with_floor`, also "floor_head" and
    "floor_face": the ground truth against itself resampled with another seed."""
    device = truth["vertices"].device
    gt = sample_in_box(truth["vertices"], truth["faces"], points, seed)
    pred = sample_in_box(
        torch.as_tensor(pred_vertices, dtype=torch.float32, device=device),
        torch.as_tensor(pred_faces, device=device),
        points,
        seed + 1000,
    )
    regions = {name: truth[f"{name}_region"] for name in REGIONS}
    metrics = region_metrics(pred, gt, regions)
    scale, shift = similarity_alignment(pred.points, gt.points)
    aligned = SurfaceSamples(scale * pred.points + shift, pred.normals, pred.face_index)
    metrics.update({f"aligned_{name}": value for name, value in region_metrics(aligned, gt, regions).items()})
    metrics["alignment"] = {"scale": scale}
    if with_floor:
        again = sample_in_box(truth["vertices"], truth["faces"], points, seed + 2000)
        floor = region_metrics(again, gt, {"face": truth["face_region"]})
        metrics.update({"floor_head": floor["head"], "floor_face": floor["face"]})
    return metrics
