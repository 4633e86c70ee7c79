"""Several heads in one extraction: each head's mesh is the one it gets alone; the GPU's extraction is the CPU's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffnphr.frame import BOX_MIN
from diffnphr.mesh import extract_mesh_with_stats
from diffnphr.mesh.batch import HeadSurfaceError, extract_meshes

# Three shapes of different sizes and places (one cut by the box floor), so their narrow bands differ in size.
CENTRES = torch.tensor([[0.07, 0.11, -0.23], [-0.1, 0.0, -0.3], [0.05, BOX_MIN[1] + 0.1, 0.02]])
RADII = torch.tensor([[0.25, 0.4, 0.33], [0.2, 0.2, 0.2], [0.3, 0.3, 0.3]])


def field(head: int):
    """Head `head`'s field alone: a bumpy ellipsoid (steeper than a distance in places, so the band follows it)."""
    centre, radii = CENTRES[head], RADII[head]

    def sdf(points: torch.Tensor) -> torch.Tensor:
        offset = (points - centre) / radii
        return (offset.norm(dim=-1) - 1.0) * radii.min() + 0.02 * torch.sin(12 * points[..., 0])

    return sdf


def batch_field(points: torch.Tensor) -> torch.Tensor:
    """All heads' fields at once, as a decoder bound to several heads answers: points [H, N, 3] -> [H, N]."""
    return torch.stack([field(head)(points[head]) for head in range(points.shape[0])])


def colour(points: torch.Tensor) -> torch.Tensor:
    return (points[..., [2, 0, 1]] + 1.0) / 2.0


@pytest.mark.parametrize("method", ["narrow_band", "dense"])
def test_each_head_of_a_batch_gets_the_mesh_it_gets_alone(method):
    together = extract_meshes(
        batch_field, 3, resolution=41, method=method, color_fn=colour, chunk_size=4000, device="cpu"
    )
    assert len(together.meshes) == 3
    for head, mesh in enumerate(together.meshes):
        alone = extract_mesh_with_stats(
            field(head), resolution=41, method=method, color_fn=colour, chunk_size=4000, device="cpu"
        )
        assert len(mesh.faces) > 500
        np.testing.assert_array_equal(mesh.faces, alone.mesh.faces)
        np.testing.assert_allclose(mesh.vertices, alone.mesh.vertices, atol=1e-7, rtol=0)
        np.testing.assert_array_equal(mesh.visual.vertex_colors, alone.mesh.visual.vertex_colors)
        assert together.num_sdf_queries[head] == alone.num_sdf_queries  # padding is not counted
    sizes = {len(mesh.vertices) for mesh in together.meshes}
    assert len(sizes) == 3  # the heads' bands differed, so the padding was exercised


def test_the_levels_of_all_heads_go_in_one_query_per_chunk():
    calls = []

    def counted(points: torch.Tensor) -> torch.Tensor:
        calls.append(tuple(points.shape[:2]))
        return batch_field(points)

    extract_meshes(counted, 3, resolution=41, device="cpu")
    assert calls and all(heads == 3 for heads, _ in calls)
    single = []
    extract_mesh_with_stats(lambda p: single.append(len(p)) or field(0)(p), resolution=41, device="cpu")
    assert len(calls) <= len(single) + 3  # no more calls for three heads than for one (bar a few follow-ups)


def test_a_head_without_surface_is_named():
    def second_misses_the_box(points: torch.Tensor) -> torch.Tensor:
        values = batch_field(points)
        values[1] = 1.0
        return values

    with pytest.raises(HeadSurfaceError, match=r"Head 2 of 3: No surface found") as caught:
        extract_meshes(second_misses_the_box, 3, resolution=24, device="cpu")
    assert caught.value.head == 1
    with pytest.raises(ValueError, match="heads must be a whole number"):
        extract_meshes(batch_field, 0, resolution=24)
    with pytest.raises(ValueError, match=r"for 2 heads of .* points; expected \(2, "):
        extract_meshes(lambda points: batch_field(points)[:1], 2, resolution=24)


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@needs_cuda
@pytest.mark.parametrize("method", ["narrow_band", "dense"])
def test_the_gpu_extraction_gives_the_cpu_mesh(method):
    """On a small grid: the CUDA path (grid on the GPU, `torch_marching`) against the CPU one (PyMCubes)."""
    on_cpu = extract_mesh_with_stats(field(2), resolution=48, method=method, color_fn=colour, device="cpu").mesh
    on_gpu = extract_mesh_with_stats(field(2), resolution=48, method=method, color_fn=colour, device="cuda").mesh
    assert len(on_gpu.faces) == len(on_cpu.faces) > 1000
    np.testing.assert_allclose(on_gpu.vertices, on_cpu.vertices, atol=1e-5, rtol=0)  # 2.5 µm
    batched = extract_meshes(batch_field, 3, resolution=48, method=method, color_fn=colour, device="cuda")
    np.testing.assert_allclose(batched.meshes[2].vertices, on_cpu.vertices, atol=1e-5, rtol=0)


@needs_cuda
@pytest.mark.parametrize("shape", ["sphere-cut-by-box", "noise"])
def test_torch_marching_cubes_on_a_cuda_grid_gives_pymcubes_mesh(shape):
    from diffnphr.mesh.marching import pymcubes_by_blocks
    from diffnphr.mesh.torch_marching import torch_marching_cubes

    axes = torch.linspace(-1.0, 1.0, 37)
    points = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), dim=-1)
    if shape == "sphere-cut-by-box":
        grid = (points - torch.tensor([0.2, -0.9, 0.1])).norm(dim=-1) - 0.7
    else:  # every case of the table, ambiguous ones included
        grid = torch.randint(-1, 2, (23, 23, 23), generator=torch.Generator().manual_seed(3)).float()
    vertices, faces = pymcubes_by_blocks(grid)
    gpu_vertices, gpu_faces = (part.cpu().numpy() for part in torch_marching_cubes(-grid.cuda()))
    np.testing.assert_allclose(gpu_vertices, vertices, atol=1e-6, rtol=0)  # the same vertices in the same order
    rows = {tuple(np.roll(face, -int(np.argmin(face)))) for face in faces}
    assert {tuple(np.roll(face, -int(np.argmin(face)))) for face in gpu_faces} == rows  # oriented faces
    assert len(gpu_faces) == len(faces) > 50
