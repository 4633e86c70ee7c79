"""Several photos in one call: `HeadReconstructionPipeline([photo, photo, ...], settings)`, one reconstruction each.

The photos go through every stage together: their crops through the encoder in one batch; the
diffusion samples of all heads with the same steps and guidance in one pass (one U-Net forward
per step for every sample of every head), each head's noise from its own seed, so a head's
latent is the one it gets alone with the same settings, whatever its batch-mates; each head
refined to its own photo's landmarks where its settings ask (`refining`); then the
extraction, batched where it pays (`ExecutionOptions.batches_extraction`: on CUDA each grid
level of all heads of one resolution in one query, `mesh.batch`; on the CPU head by head).
So each head's mesh is the one a single call with its settings gives, up to the float rounding
of larger batches. An error about one photo (not an image, no face, no surface in its head)
names it: "Photo 2 of 3 (name.jpg): ...".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import torch

from diffnphr.mesh.batch import HeadSurfaceError, batch_vertex_colors, extract_meshes
from diffnphr.mesh.extract import NoSurfaceError, extract_mesh_with_stats, vertex_colors
from diffnphr.nphm.latents import HeadLatents, unpack
from diffnphr.pipeline.progress import ProgressCallback, StageProgress, StageTimer
from diffnphr.pipeline.reconstruction import Reconstruction, naming_the_photo, photo_label, usable_copy
from diffnphr.pipeline.refining import refine_heads, refines
from diffnphr.pipeline.settings import SamplingSettings

if TYPE_CHECKING:
    import trimesh

    from diffnphr.face.crop import FaceCrop
    from diffnphr.face.images import ImageSource

STAGES = ["crop", "encode", "diffusion", "refine", "extraction", "colour"]


class StagedPipeline(Protocol):
    """What a batch takes of `HeadReconstructionPipeline`: its public stages and parts, named here
    so that this module needs no import of the pipeline module (which imports this one)."""

    device: torch.device
    execution: Any
    defaults: Any
    diffusion: Any
    decoder: Any
    refiner: Any

    def crop(self, image: Any, allow_no_face: bool = False) -> Any: ...

    def encode(self, crops: Any) -> torch.Tensor: ...

    def decode(self, latents: Any) -> Any: ...


def reconstruct_batch(
    pipeline: StagedPipeline,
    images: Sequence[ImageSource | FaceCrop],
    settings: SamplingSettings | Sequence[SamplingSettings],
    allow_no_face: bool = False,
    progress: ProgressCallback | None = None,
) -> list[Reconstruction]:
    """One `Reconstruction` per photo of `images`, in order; `settings` one for all photos or one per photo.

    Every photo is cropped before any model work, so a bad one fails at once. Each result's
    `timings` are the batch's (its heads went through each stage together).
    """
    per_photo = _settings_per_photo(settings, len(images))
    labels = [photo_label(index, len(images), image) for index, image in enumerate(images)]
    stages = STAGES if refines(pipeline.refiner, per_photo) else [stage for stage in STAGES if stage != "refine"]
    tracker = StageProgress(progress, stages)
    timer = StageTimer(pipeline.device)
    tracker.report(0.0)
    crops = []
    with timer.stage("crop"):
        for index, image in enumerate(images):
            with naming_the_photo(labels[index]):
                crops.append(pipeline.crop(image, allow_no_face))
            tracker.report((index + 1) / len(images))
    tracker.next()
    with torch.inference_mode(), pipeline.execution.precision(pipeline.device):
        tracker.report(0.0)
        with timer.stage("encode"):
            z_cond = pipeline.encode(crops)
        tracker.next()
        latents = _sample(pipeline, z_cond, per_photo, timer, tracker)
        latents, refine_warnings = refine_heads(pipeline.refiner, latents, crops, per_photo, timer, tracker)
        meshes = _meshes(pipeline, latents, [s.resolution for s in per_photo], labels, timer, tracker)
    summary = timer.summary()
    return [
        Reconstruction(mesh, crop, usable_copy(head), chosen.seed, dict(summary), list(crop.warnings) + more)
        for mesh, crop, head, chosen, more in zip(meshes, crops, latents, per_photo, refine_warnings)
    ]


def _settings_per_photo(settings: SamplingSettings | Sequence[SamplingSettings], count: int) -> list[SamplingSettings]:
    if count == 0:
        raise ValueError("Give at least one photo to reconstruct.")
    if isinstance(settings, SamplingSettings):
        return [settings] * count
    per_photo = list(settings)
    if len(per_photo) != count or not all(isinstance(chosen, SamplingSettings) for chosen in per_photo):
        raise ValueError(
            f"Give one SamplingSettings for all {count} photos or one per photo; got {len(per_photo)} settings."
        )
    return per_photo


def _groups(keys: Sequence[object]) -> dict[object, list[int]]:
    """The indices of equal keys, in order of first appearance."""
    groups: dict[object, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return groups


def _sample(
    pipeline: StagedPipeline,
    z_cond: torch.Tensor,
    per_photo: list[SamplingSettings],
    timer: StageTimer,
    tracker: StageProgress,
) -> list[HeadLatents]:
    """Every head's codes: one diffusion pass per (steps, guidance) among the photos, each head its own seed."""
    groups = _groups([(chosen.steps, chosen.guidance_scale) for chosen in per_photo])
    total_steps, done = sum(steps for steps, _ in groups), 0
    latents: list[HeadLatents | None] = [None] * len(per_photo)
    tracker.report(0.0)
    with timer.stage("diffusion"):
        for (steps, guidance_scale), rows in groups.items():

            def follow(step: int, total: int, before: int = done) -> None:
                tracker.report((before + step) / total_steps)

            with pipeline.execution.autocast(pipeline.device, "diffusion"):
                flat = pipeline.diffusion.sample(
                    z_cond[rows],
                    num_steps=steps,
                    seed=[per_photo[row].seed for row in rows],
                    guidance_scale=guidance_scale,
                    average_of=[per_photo[row].samples for row in rows],
                    scheduler=pipeline.defaults.scheduler,
                    progress=follow,
                )
            done += steps
            codes = [part.float().cpu() for part in unpack(flat)]
            for position, row in enumerate(rows):
                latents[row] = HeadLatents(*(code[position] for code in codes))
    tracker.next()
    return latents  # type: ignore[return-value]


def _meshes(
    pipeline: StagedPipeline,
    latents: list[HeadLatents],
    resolutions: list[int],
    labels: list[str | None],
    timer: StageTimer,
    tracker: StageProgress,
) -> list[trimesh.Trimesh]:
    """Every head's coloured mesh, by parts of one resolution (together, or head by head: `batches_extraction`):
    every part's surface first, then every part's colours, as a single call's stages go."""
    execution, device = pipeline.execution, pipeline.device
    batched = execution.batches_extraction(device)
    parts: list[tuple[int, list[int]]] = []
    for resolution, rows in _groups(resolutions).items():
        most = max(1, execution.max_batch_nodes // (resolution + 1) ** 3) if batched else 1
        parts += [(resolution, rows[begin : begin + most]) for begin in range(0, len(rows), most)]
    meshes: list[trimesh.Trimesh | None] = [None] * len(latents)
    colourings: list[Callable[[Callable[[str, float], None]], None]] = []
    for stage in ("extraction", "colour"):
        tracker.report(0.0)
        with timer.stage(stage):
            for index, (resolution, rows) in enumerate(parts):

                def follow(_: str, fraction: float, done: int = index) -> None:
                    tracker.report((done + fraction) / len(parts))

                if stage == "extraction":
                    colourings.append(_extract_part(pipeline, latents, rows, resolution, labels, meshes, follow))
                else:
                    colourings[index](follow)
        tracker.next()
    return meshes  # type: ignore[return-value]


def _extract_part(
    pipeline: StagedPipeline,
    latents: list[HeadLatents],
    rows: list[int],
    resolution: int,
    labels: list[str | None],
    meshes: list[trimesh.Trimesh | None],
    progress: Callable[[str, float], None],
) -> Callable[[Callable[[str, float], None]], None]:
    """The surfaces of heads `rows` (one resolution) into `meshes`, with the same queries as a single call's;
    returns the step that colours them, taking its progress callback."""
    device, execution = pipeline.device, pipeline.execution
    if len(rows) == 1 or not execution.batches_extraction(device):
        heads = []
        for row in rows:
            head = pipeline.decode(latents[row])
            with naming_the_photo(labels[row]):
                meshes[row] = extract_mesh_with_stats(
                    execution.in_autocast(head.point_sdf, device, "sdf"),
                    resolution=resolution,
                    chunk_size=execution.chunk_size,
                    device=device,
                    progress=progress,
                ).mesh
            heads.append(head)

        def colour_each(follow: Callable[[str, float], None]) -> None:
            for row, head in zip(rows, heads):
                point_colour = execution.in_autocast(head.point_colour, device, "colour")
                meshes[row].visual.vertex_colors = vertex_colors(
                    point_colour, meshes[row].vertices, execution.chunk_size, device, follow
                )

        return colour_each
    codes = [
        torch.stack([getattr(latents[row], name) for row in rows]).to(device) for name in ("z_geo", "z_exp", "z_app")
    ]
    field = pipeline.decoder.bind(*codes)
    try:
        result = extract_meshes(
            execution.in_autocast(field.sdf, device, "sdf"),
            len(rows),
            resolution=resolution,
            chunk_size=execution.chunk_size,
            device=device,
            progress=progress,
        )
    except HeadSurfaceError as error:
        raise NoSurfaceError(f"{labels[rows[error.head]]}: {error.reason}") from error
    for row, mesh in zip(rows, result.meshes):
        meshes[row] = mesh

    def colour_together(follow: Callable[[str, float], None]) -> None:
        def colour(points: torch.Tensor) -> torch.Tensor:
            return (field.sdf_and_rgb(points)[1].float() + 1.0) / 2.0

        vertices = [meshes[row].vertices for row in rows]
        colours = batch_vertex_colors(
            execution.in_autocast(colour, device, "colour"), vertices, execution.chunk_size, device, follow
        )
        for row, rgba in zip(rows, colours):
            meshes[row].visual.vertex_colors = rgba

    return colour_together
