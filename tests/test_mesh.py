"""Mesh extraction and export on analytic SDFs (sphere, ellipsoid, off-centre shapes) and a trained head."""

from __future__ import annotations

from pathlib import Path

import mcubes
import numpy as np
import pytest
import torch
import trimesh

from diffnphr.frame import BOX_MAX, BOX_MIN
from diffnphr.heads.latents import load_head_latents
from diffnphr.mesh import export_mesh, extract_mesh, extract_mesh_with_stats
from diffnphr.nphm import MonoNPHM
from diffnphr.nphm.latents import unpack

CENTRE = torch.tensor([0.07, 0.11, -0.23])  # off the box centre and off the grid nodes
RADII = torch.tensor([0.25, 0.4, 0.33])


def sphere(centre: torch.Tensor = CENTRE, radius: float = 0.3):
    """Exact signed distance to a sphere, negative inside."""
    return lambda points: (points - centre).norm(dim=1) - radius


def ellipsoid(slope: float = 1.0):
    """A field, ``slope`` times 1-Lipschitz, whose zero set is the ellipsoid of semi-axes RADII."""
    scale = slope * RADII.min()
    return lambda points: ((points - CENTRE) / RADII).norm(dim=1).sub(1.0) * scale


def ellipsoid_distance_bound(vertices: np.ndarray) -> np.ndarray:
    """An upper bound on each vertex's distance to the ellipsoid: that to its radial projection."""
    offset = vertices - CENTRE.numpy()
    scaled_norm = np.linalg.norm(offset / RADII.numpy(), axis=1)
    return np.linalg.norm(offset, axis=1) * np.abs(1.0 - 1.0 / scaled_norm)


def smallest_voxel(resolution: int) -> float:
    return float(min((np.array(BOX_MAX) - np.array(BOX_MIN)) / (resolution - 1)))


@pytest.mark.parametrize("method", ["dense", "narrow_band"])
def test_vertices_lie_within_half_a_voxel_of_the_true_surface(method):
    resolution = 64
    mesh = extract_mesh(sphere(), resolution=resolution, method=method)
    sphere_error = np.abs(np.linalg.norm(mesh.vertices - CENTRE.numpy(), axis=1) - 0.3)
    assert sphere_error.max() < 0.5 * smallest_voxel(resolution)

    mesh = extract_mesh(ellipsoid(), resolution=resolution, method=method)
    assert ellipsoid_distance_bound(mesh.vertices).max() < 0.5 * smallest_voxel(resolution)


@pytest.mark.parametrize(
    ("sdf_fn", "resolution"),
    [
        (sphere(), 97),
        # Cut by the box's max faces, where the narrow band pads its grid.
        (sphere(centre=torch.tensor([0.45, 0.65, 0.1]), radius=0.2), 64),
        (ellipsoid(), 100),  # 99 steps: the narrow band pads its grid past the box
        (ellipsoid(slope=4.0), 64),  # steeper than a distance, as a network may be
        (ellipsoid(slope=20.0), 64),  # so steep that the band loses the surface and must follow it
        # A blob smaller than a coarse cell, with no coarse node inside: no sign change to see.
        (sphere(centre=torch.tensor([-0.064, 0.148, 0.153]), radius=0.03), 48),
    ],
    ids=["sphere", "sphere-cut-by-box", "ellipsoid-padded", "steep-ellipsoid", "very-steep-ellipsoid", "small-blob"],
)
def test_narrow_band_gives_the_dense_mesh(sdf_fn, resolution):
    dense = extract_mesh(sdf_fn, resolution=resolution, method="dense")
    band = extract_mesh(sdf_fn, resolution=resolution, method="narrow_band")
    assert len(band.vertices) == len(dense.vertices)
    np.testing.assert_array_equal(band.faces, dense.faces)
    np.testing.assert_allclose(band.vertices, dense.vertices, atol=1e-5, rtol=0)


def dense_sphere_grid(resolution: int, radius: float = 0.3) -> np.ndarray:
    """-sdf of ``sphere()`` at the nodes of the extraction grid (float32, as the extractor computes it)."""
    spacing = (np.array(BOX_MAX) - np.array(BOX_MIN)) / (resolution - 1)
    axes = [
        torch.as_tensor(lo + np.arange(resolution) * step, dtype=torch.float32) for lo, step in zip(BOX_MIN, spacing)
    ]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)
    return (-sphere(radius=radius)(points)).reshape((resolution,) * 3).numpy()


def test_narrow_band_queries_little_more_than_the_nodes_of_the_cells_holding_the_surface():
    resolution = 128
    band = extract_mesh_with_stats(sphere(), resolution=resolution, method="narrow_band")
    dense = extract_mesh_with_stats(sphere(), resolution=32, method="dense")
    assert dense.num_sdf_queries == 32**3

    inside = dense_sphere_grid(resolution) > 0
    offsets = [(i, j, k) for i in (0, 1) for j in (0, 1) for k in (0, 1)]
    corner_views = [tuple(slice(o, resolution - 1 + o) for o in offset) for offset in offsets]
    corners = [inside[view] for view in corner_views]
    surface_cells = np.logical_or.reduce(corners) & ~np.logical_and.reduce(corners)
    surface_nodes = np.zeros_like(inside)
    for view in corner_views:
        surface_nodes[view] |= surface_cells
    assert band.num_sdf_queries < 2.5 * surface_nodes.sum()


def test_marching_cubes_by_blocks_gives_the_triangles_of_the_whole_grid():
    resolution = 75  # blocks of 16 cells do not divide the 74 cells per axis
    mesh = extract_mesh(sphere(radius=0.45), resolution=resolution, method="dense")
    vertices, faces = mcubes.marching_cubes(dense_sphere_grid(resolution, radius=0.45), 0.0)
    spacing = (np.array(BOX_MAX) - np.array(BOX_MIN)) / (resolution - 1)
    whole = trimesh.Trimesh(np.array(BOX_MIN) + vertices * spacing, faces, process=True)
    assert len(mesh.faces) == len(whole.faces) and len(mesh.vertices) == len(whole.vertices)
    np.testing.assert_allclose(np.sort(mesh.vertices, axis=0), np.sort(whole.vertices, axis=0), atol=1e-6, rtol=0)
    assert mesh.area == pytest.approx(whole.area, rel=1e-9)
    assert mesh.is_watertight


def test_a_surface_through_grid_nodes_gives_a_closed_mesh_without_repeated_vertices_or_empty_faces():
    # Nodes at multiples of 1/16 and SDF values rounded to 1/16: hundreds of nodes are exactly 0,
    # where marching cubes puts several vertices of a triangle on the same node.
    box = ((-1.0, -1.0, -1.0), (1.0, 1.0, 1.0))
    bumpy = lambda p: p.norm(dim=1) - 0.5 + 0.1 * torch.sin(7 * p[:, 0]) * torch.cos(5 * p[:, 1])  # noqa: E731
    for sdf_fn in (lambda p: torch.round((p.norm(dim=1) - 0.5) * 16) / 16, lambda p: torch.round(bumpy(p) * 16) / 16):
        mesh = extract_mesh(sdf_fn, resolution=33, bbox=box, method="dense")
        assert mesh.is_watertight and mesh.is_winding_consistent
        assert (mesh.area_faces > 1e-12).all()
        assert len(np.unique(mesh.vertices.round(9), axis=0)) == len(mesh.vertices)


def test_marching_cubes_on_a_field_full_of_zeros_keeps_each_face_and_vertex_once():
    # Random values in {-1, 0, 1}: triangles collapse onto zero nodes, and different triangles of
    # a cell collapse onto the same three vertices.
    grid = torch.randint(-1, 2, (17, 17, 17), generator=torch.Generator().manual_seed(0)).float()

    def grid_values(points):  # grid nodes sit at whole coordinates in the box 0..16
        index = points.round().long()
        return grid[index[:, 0], index[:, 1], index[:, 2]]

    mesh = extract_mesh(grid_values, resolution=17, bbox=((0, 0, 0), (16, 16, 16)), method="dense")
    assert len(mesh.faces) > 100
    assert len(np.unique(np.sort(mesh.faces, axis=1), axis=0)) == len(mesh.faces)
    assert (mesh.area_faces > 1e-12).all()
    assert len(np.unique(mesh.vertices.round(9), axis=0)) == len(mesh.vertices)


def test_faces_point_outwards():
    mesh = extract_mesh(sphere(), resolution=64)
    outward = np.einsum("ij,ij->i", mesh.face_normals, mesh.triangles_center - CENTRE.numpy())
    assert (outward > 0).all()
    assert mesh.is_watertight
    assert mesh.volume == pytest.approx(4.0 / 3.0 * np.pi * 0.3**3, rel=0.01)


def test_colours_are_queried_at_the_final_vertices_and_land_on_them():
    queried = []

    def red_where_x_positive(points):
        queried.append(points.clone())
        red = (points[:, 0] > CENTRE[0]).float()
        green = (points[:, 1] - BOX_MIN[1]) / (BOX_MAX[1] - BOX_MIN[1])
        return torch.stack([red, green, 1.0 - red], dim=1)

    mesh = extract_mesh(ellipsoid(), resolution=64, color_fn=red_where_x_positive)
    colours = mesh.visual.vertex_colors
    assert colours.dtype == np.uint8 and colours.shape == (len(mesh.vertices), 4)
    np.testing.assert_allclose(torch.cat(queried).numpy(), mesh.vertices, atol=1e-6)

    right = mesh.vertices[:, 0] > CENTRE[0].item()
    assert right.any() and (~right).any()
    np.testing.assert_array_equal(colours[:, 0], np.where(right, 255, 0))
    np.testing.assert_array_equal(colours[:, 2], np.where(right, 0, 255))
    expected_green = (mesh.vertices[:, 1] - BOX_MIN[1]) / (BOX_MAX[1] - BOX_MIN[1]) * 255
    np.testing.assert_allclose(colours[:, 1], expected_green, atol=1)
    assert (colours[:, 3] == 255).all()


def test_sdf_is_queried_in_chunks_under_inference_mode_and_chunking_does_not_change_the_mesh():
    batches = []

    def recording_sphere(points):
        batches.append((len(points), points.device, torch.is_inference_mode_enabled()))
        return sphere()(points)

    small = extract_mesh(recording_sphere, resolution=64, chunk_size=1000, device="cpu")
    assert max(size for size, _, _ in batches) <= 1000
    assert all(device == torch.device("cpu") and inference for _, device, inference in batches)
    default = extract_mesh(sphere(), resolution=64)
    np.testing.assert_array_equal(small.faces, default.faces)
    np.testing.assert_array_equal(small.vertices, default.vertices)


def test_keep_largest_component_drops_the_smaller_blob():
    big, small = sphere(radius=0.25), sphere(centre=torch.tensor([-0.4, -0.35, 0.25]), radius=0.08)

    def two_blobs(points):
        return torch.minimum(big(points), small(points))

    both = extract_mesh(two_blobs, resolution=64)
    largest = extract_mesh(two_blobs, resolution=64, keep_largest_component=True)
    assert len(both.split(only_watertight=False)) == 2
    assert len(largest.split(only_watertight=False)) == 1
    assert np.linalg.norm(largest.vertices - CENTRE.numpy(), axis=1).max() < 0.26


@pytest.mark.parametrize("values", [1.0, -1.0], ids=["all-outside", "all-inside"])
def test_a_box_without_surface_raises_a_clear_error(values):
    with pytest.raises(ValueError, match="No surface found in the box"):
        extract_mesh(lambda points: torch.full((len(points),), values), resolution=32)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"method": "sparse"}, "Unknown extraction method"),
        ({"resolution": 2}, "resolution must be"),
        ({"bbox": ((0.0, 0.0, 0.0), (1.0, -1.0, 1.0))}, "min < max"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"sdf_fn": lambda points: points}, "sdf_fn returned shape"),
        ({"sdf_fn": lambda points: torch.full((len(points),), float("nan"))}, "NaN"),
        ({"color_fn": lambda points: points[:, :2]}, "color_fn returned shape"),
    ],
)
def test_bad_input_is_refused_with_a_sentence(kwargs, message):
    arguments = {"sdf_fn": sphere(), "resolution": 32, **kwargs}
    with pytest.raises(ValueError, match=message):
        extract_mesh(arguments.pop("sdf_fn"), **arguments)


@pytest.fixture(scope="module")
def coloured_mesh() -> trimesh.Trimesh:
    return extract_mesh(ellipsoid(), resolution=48, color_fn=lambda points: (points - torch.tensor(BOX_MIN)) / 1.4)


@pytest.mark.parametrize("suffix", [".glb", ".obj", ".ply"])
def test_export_reloads_with_the_same_vertices_and_colours(coloured_mesh, tmp_path, suffix):
    path = export_mesh(coloured_mesh, tmp_path / "nested" / f"head{suffix}")
    assert path.is_file()
    reloaded = trimesh.load(path, force="mesh", process=False)
    assert len(reloaded.vertices) == len(coloured_mesh.vertices)
    # The same coordinates: no axis swap or rotation on the way (+y up, +z forward kept).
    np.testing.assert_allclose(reloaded.vertices, coloured_mesh.vertices, atol=1e-6)
    np.testing.assert_array_equal(reloaded.faces, coloured_mesh.faces)
    np.testing.assert_array_equal(reloaded.visual.vertex_colors, coloured_mesh.visual.vertex_colors)


def test_glb_places_the_mesh_without_any_node_transform(coloured_mesh, tmp_path):
    scene = trimesh.load(export_mesh(coloured_mesh, tmp_path / "head.glb"), process=False)
    transform, _ = scene.graph[scene.graph.nodes_geometry[0]]
    np.testing.assert_array_equal(transform, np.eye(4))


def test_obj_stores_colours_on_the_vertex_lines(coloured_mesh, tmp_path):
    path = export_mesh(coloured_mesh, tmp_path / "head.obj")
    first_vertex = next(line for line in path.read_text().splitlines() if line.startswith("v "))
    assert len(first_vertex.split()) == 7


def test_export_format_argument_wins_and_unknown_formats_are_refused(coloured_mesh, tmp_path):
    path = export_mesh(coloured_mesh, tmp_path / "head.bin", file_format="GLB")
    reloaded = trimesh.load(path, file_type="glb", force="mesh")
    assert reloaded.vertices.shape == coloured_mesh.vertices.shape
    with pytest.raises(ValueError, match=r"use a \.glb, \.obj or \.ply"):
        export_mesh(coloured_mesh, tmp_path / "head.stl")
    with pytest.raises(ValueError, match="format 'fbx'"):
        export_mesh(coloured_mesh, tmp_path / "head.glb", file_format="fbx")


def test_narrow_band_gives_the_dense_mesh_of_a_trained_head():
    weights = Path(__file__).resolve().parents[1] / "weights"
    decoder = MonoNPHM.from_pretrained(weights / "decoder", device="cpu")
    codes = unpack(load_head_latents(weights / "decoder_latents", "codebooks").flat()[:1])
    head = decoder.bind(*codes)
    dense = extract_mesh(head.point_sdf, resolution=40, method="dense")
    band = extract_mesh(head.point_sdf, resolution=40, method="narrow_band")
    assert len(dense.faces) > 1000
    np.testing.assert_array_equal(band.faces, dense.faces)
    np.testing.assert_allclose(band.vertices, dense.vertices, atol=1e-5, rtol=0)


def boundary_edges(mesh: trimesh.Trimesh) -> int:
    """Edges used by a single face: the rim of a hole."""
    _, counts = np.unique(mesh.edges_sorted, axis=0, return_counts=True)
    return int((counts == 1).sum())


@pytest.mark.parametrize("method", ["dense", "narrow_band"])
def test_a_shape_cut_by_the_box_is_closed_by_a_flat_cap_on_the_box_face(method):
    # A sphere through the box floor, as a head's neck is.
    centre = torch.tensor([0.05, BOX_MIN[1] + 0.1, 0.02])
    closed = extract_mesh(sphere(centre=centre, radius=0.3), resolution=48, method=method)
    assert boundary_edges(closed) == 0 and closed.is_watertight and closed.is_winding_consistent
    on_floor = np.abs(closed.vertices[:, 1] - BOX_MIN[1]) < 1e-5
    cap_radius = np.sqrt(0.3**2 - 0.1**2)
    from_axis = np.linalg.norm(closed.vertices[on_floor][:, [0, 2]] - centre[[0, 2]].numpy(), axis=1)
    assert from_axis.max() < cap_radius + 1e-4  # the cap fills the cut's disc, no more
    assert on_floor.sum() > 100 and closed.vertices[:, 1].min() >= BOX_MIN[1] - 1e-9
    assert closed.volume > 0  # outward faces, the cap included

    open_cut = extract_mesh(sphere(centre=centre, radius=0.3), resolution=48, method=method, close_at_box=False)
    assert boundary_edges(open_cut) > 0
    assert not (np.abs(open_cut.vertices[:, 1] - BOX_MIN[1]) < 1e-5).sum() > 100  # no cap: only the rim


def test_a_trained_heads_mesh_is_watertight():
    weights = Path(__file__).resolve().parents[1] / "weights"
    decoder = MonoNPHM.from_pretrained(weights / "decoder", device="cpu")
    codes = unpack(load_head_latents(weights / "decoder_latents", "codebooks").flat()[:1])
    head = decoder.bind(*codes)
    mesh = extract_mesh(head.point_sdf, resolution=48)
    assert mesh.vertices[:, 1].min() == pytest.approx(BOX_MIN[1], abs=1e-5)  # the neck reaches the floor
    assert boundary_edges(mesh) == 0 and mesh.is_watertight and mesh.is_winding_consistent
    assert boundary_edges(extract_mesh(head.point_sdf, resolution=48, close_at_box=False)) > 0


def _oriented_faces(faces: np.ndarray) -> set[tuple[int, int, int]]:
    """Each face turned to start at its smallest vertex index: the same triangle, orientation kept."""
    rows = set()
    for face in faces.tolist():
        first = face.index(min(face))
        rows.add(tuple(face[first:] + face[:first]))
    return rows


@pytest.mark.parametrize("field", ["sphere-cut-by-box", "bumps", "zeros-on-nodes", "noise"])
def test_torch_marching_cubes_gives_pymcubes_mesh(field):
    from diffnphr.mesh.marching import pymcubes_by_blocks
    from diffnphr.mesh.torch_marching import torch_marching_cubes

    g = torch.Generator().manual_seed(3)
    axes = torch.linspace(-1.0, 1.0, 37)
    points = torch.stack(torch.meshgrid(axes, axes, axes, indexing="ij"), dim=-1)
    if field == "sphere-cut-by-box":
        grid = (points - torch.tensor([0.2, -0.9, 0.1])).norm(dim=-1) - 0.7
    elif field == "bumps":
        grid = points.norm(dim=-1) - 0.6 + 0.15 * torch.sin(9 * points[..., 0]) * torch.cos(7 * points[..., 1])
    elif field == "zeros-on-nodes":  # triangles collapse on nodes: the weld's hardest case
        grid = torch.round((points.norm(dim=-1) - 0.5) * 8) / 8
    else:  # every case of the table, ambiguous ones included
        grid = torch.randint(-1, 2, (23, 23, 23), generator=g).float()
    vertices, faces = pymcubes_by_blocks(grid)
    torch_vertices, torch_faces = (part.numpy() for part in torch_marching_cubes(-grid))
    assert len(faces) > 50
    np.testing.assert_allclose(torch_vertices, vertices, atol=1e-6, rtol=0)  # same vertices, same order,
    assert len(torch_faces) == len(faces)  # so faces compare by vertex index
    assert _oriented_faces(torch_faces) == _oriented_faces(faces)
