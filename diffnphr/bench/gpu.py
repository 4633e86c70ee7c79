"""Rows that only a GPU answers (issue 29, items 1 and 2): torch's marching cubes there against PyMCubes, and the
reduced precisions against float32.

`marching_gpu`: the trained head's narrow-band grid at 256³ on the GPU, meshed where it is
(`mesh.torch_marching`) and on the CPU by PyMCubes; the same vertices in the same order and the
same oriented faces are what `mesh.marching` promises, so the row reports the largest vertex
offset, whether the faces agree, and both seconds. `precision`: whole reconstructions of the
example portrait at the default resolution with float32 (TF32 off), TF32, and bfloat16 autocast
on the SDF and colour queries or on every stage (`ExecutionOptions`); seconds (median of 3 after
a warm-up) and a Chamfer-L1 of each mesh to the float32 one in mm (the issue's bound: 0.05 mm),
measured by the fields rather than by sampled points (two samplings of one surface lie, by
estimate, about 0.2 mm apart at a million points, four times the bound): the mean distance of each mesh's
vertices from the other head's zero level, both decoded in float32 (near its zero level the
decoder's SDF is about the distance to it), halved; `fp32_floor_mm` is the float32 mesh's own
vertices against its own field (marching cubes' interpolation), the least any row can show, and
`beyond_floor_mm` what a row adds to it. Where a mesh has the float32 mesh's faces, its mean
and largest vertex offsets are exact.
Both need CUDA and trained weights; the crop as in the batch rows.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from diffnphr.bench.common import pipeline_input, synchronize
from diffnphr.bench.pipeline import bench_pipeline_models

PRECISIONS = {
    "fp32": {"tf32": False},
    "tf32": {"tf32": True},
    "bf16_sdf_colour": {"tf32": False, "bf16": ("sdf", "colour")},
    "bf16_all_tf32": {"tf32": True, "bf16": ("encode", "diffusion", "sdf", "colour")},
}


def bench_marching(device: torch.device, quick: bool, resolution: int = 256) -> dict[str, Any]:
    """torch marching cubes on the GPU against PyMCubes on the same grid of the trained head: the largest vertex
    offset (mm), whether the oriented faces are the same, and the seconds of each."""
    from diffnphr.frame import BOX_MAX, BOX_MIN, MM_PER_UNIT
    from diffnphr.mesh.grid import DEFAULT_CHUNK_SIZE, narrow_band_grid
    from diffnphr.mesh.marching import close_grid, pymcubes_by_blocks
    from diffnphr.mesh.torch_marching import torch_marching_cubes

    pipeline = _trained_cuda_pipeline(device, "it compares the GPU's marching cubes with PyMCubes")
    photo, crop_note = pipeline_input()
    head = pipeline.decode(pipeline.sample_latents(pipeline.encode(pipeline.crop(photo)), pipeline.settings(seed=0)))
    box_min, box_max = np.asarray(BOX_MIN, np.float64), np.asarray(BOX_MAX, np.float64)
    spacing = (box_max - box_min) / (resolution - 1)
    with torch.inference_mode():
        grid, _ = narrow_band_grid(
            head.point_sdf, box_min, spacing, resolution, resolution // 8, DEFAULT_CHUNK_SIZE, device
        )
        grid = grid[:resolution, :resolution, :resolution].contiguous()
        close_grid(grid, close_at_box=True)
        torch_marching_cubes(-grid)  # the first call builds the table on the device
        synchronize(device)
        start = time.perf_counter()
        gpu_vertices, gpu_faces = (part.cpu().numpy() for part in torch_marching_cubes(-grid))
        gpu_s = time.perf_counter() - start
        cpu_grid = grid.cpu()
        start = time.perf_counter()
        vertices, faces = pymcubes_by_blocks(cpu_grid)
        cpu_s = time.perf_counter() - start
    same_count = gpu_vertices.shape == vertices.shape
    offset = float(np.abs((gpu_vertices - vertices) * spacing).max() * MM_PER_UNIT) if same_count else None
    return {
        "resolution": resolution,
        "vertices": [len(gpu_vertices), len(vertices)],
        "faces": [len(gpu_faces), len(faces)],
        "same_oriented_faces": _oriented(gpu_faces) == _oriented(faces),
        "largest_vertex_offset_mm": offset,
        "torch_marching_gpu_s": round(gpu_s, 4),
        "pymcubes_cpu_s": round(cpu_s, 4),
        **({"crop": crop_note} if crop_note else {}),
    }


def bench_precision(device: torch.device, quick: bool, resolution: int | None = None) -> dict[str, Any]:
    """Seconds and Chamfer-L1 to the float32 mesh (mm) of a whole reconstruction under each of `PRECISIONS`."""
    from diffnphr.pipeline import ExecutionOptions

    pipeline = _trained_cuda_pipeline(device, "TF32 and bf16 act on CUDA only")
    settings = pipeline.settings(seed=0, resolution=resolution or pipeline.defaults.resolution)
    photo, crop_note = pipeline_input()
    rows, reference = {}, None
    for name, options in PRECISIONS.items():
        pipeline.execution = ExecutionOptions(**options)
        pipeline(photo, settings)  # warm-up: kernels of this precision

        def reconstruct() -> tuple[float, Any]:
            synchronize(device)
            start = time.perf_counter()
            result = pipeline(photo, settings)
            synchronize(device)
            return time.perf_counter() - start, result

        calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call[0])
        seconds, result = calls[len(calls) // 2]
        if reference is None:  # the first precision, float32
            reference = result
        rows[name] = {
            "seconds": round(seconds, 3),
            "seconds_per_stage": result.timings,
            "vertices": len(result.mesh.vertices),
            "chamfer_to_fp32_mm": round(_chamfer_by_fields_mm(pipeline, reference, result), 5),
            **_vertex_offsets_mm(reference.mesh, result.mesh),
        }
    floor = _off_field_mm(pipeline, reference, reference)
    for row in rows.values():
        row["beyond_floor_mm"] = round(row["chamfer_to_fp32_mm"] - floor, 5)
    return {
        "resolution": settings.resolution,
        "fp32_floor_mm": round(floor, 5),
        **rows,
        **({"crop": crop_note} if crop_note else {}),
    }


def _vertex_offsets_mm(reference: Any, mesh: Any) -> dict[str, float | None]:
    """The mean and largest vertex offsets (mm) of `mesh` from `reference` where both have the same faces, else
    None (then only the Chamfer by the fields compares them)."""
    from diffnphr.frame import MM_PER_UNIT

    if reference.vertices.shape != mesh.vertices.shape or not np.array_equal(reference.faces, mesh.faces):
        return {"same_faces": False, "mean_vertex_offset_mm": None, "largest_vertex_offset_mm": None}
    offsets = np.linalg.norm(reference.vertices - mesh.vertices, axis=1) * MM_PER_UNIT
    return {
        "same_faces": True,
        "mean_vertex_offset_mm": round(float(offsets.mean()), 5),
        "largest_vertex_offset_mm": round(float(offsets.max()), 5),
    }


def _chamfer_by_fields_mm(pipeline: Any, a: Any, b: Any) -> float:
    """Half the sum of the mean distances (mm) of `b`'s vertices from `a`'s zero level and of `a`'s from `b`'s."""
    return 0.5 * (_off_field_mm(pipeline, a, b) + _off_field_mm(pipeline, b, a))


@torch.inference_mode()
def _off_field_mm(pipeline: Any, head: Any, mesh_of: Any) -> float:
    """The mean |SDF| (mm) of reconstruction `head`'s field, decoded in float32, at the vertices of `mesh_of`."""
    from diffnphr.frame import MM_PER_UNIT
    from diffnphr.mesh.grid import DEFAULT_CHUNK_SIZE

    field = pipeline.decode(head.latents)
    points = torch.as_tensor(mesh_of.mesh.vertices, dtype=torch.float32, device=pipeline.device)
    values = torch.cat([field.point_sdf(chunk).float() for chunk in points.split(DEFAULT_CHUNK_SIZE)])
    return float(values.abs().mean()) * MM_PER_UNIT


def _trained_cuda_pipeline(device: torch.device, why: str) -> Any:
    """The repo's trained pipeline on `device`, which must be a CUDA device (a clear error, saying `why`, otherwise)."""
    if device.type != "cuda":
        raise RuntimeError(f"this row needs a CUDA GPU ({why}); got {device}")
    pipeline, weights = bench_pipeline_models(device)
    if weights != "trained":
        raise RuntimeError(f"this row needs trained weights in weights/ (a random diffusion gives no head): {weights}")
    return pipeline


def _oriented(faces: np.ndarray) -> set[tuple[int, ...]]:
    """Faces as a set of vertex triples, each rotated to start at its smallest index (orientation kept)."""
    return {tuple(np.roll(face, -int(np.argmin(face))).tolist()) for face in faces}
