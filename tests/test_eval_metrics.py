"""Surface metrics (`diffnphr.eval`) on shapes whose answer is known in closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from diffnphr.eval.metrics import (
    SurfaceSamples,
    nearest_neighbours,
    nearest_region_mask,
    region_metrics,
    sample_surface,
    similarity_alignment,
    surface_metrics,
)

UNITS_PER_MM = 1 / 250.0
RADIUS = 0.08  # canonical units: a 2 cm sphere, so 16k samples lie about 0.5 mm apart


def _sphere(radius: float = RADIUS) -> trimesh.Trimesh:
    return trimesh.creation.icosphere(subdivisions=5, radius=radius)


def _samples(mesh: trimesh.Trimesh, count: int, seed: int) -> SurfaceSamples:
    return sample_surface(mesh.vertices, mesh.faces, count, seed)


def _plate(
    x_min: float, x_max: float, z: float = 0.0, half_width: float = 0.1, cells: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """A flat grid of triangles over [x_min, x_max] × [-half_width, half_width] at height z, normal +z."""
    xs, ys = np.meshgrid(
        np.linspace(x_min, x_max, cells + 1), np.linspace(-half_width, half_width, cells + 1), indexing="ij"
    )
    vertices = np.stack([xs.ravel(), ys.ravel(), np.full(xs.size, z)], axis=1)
    i, j = np.meshgrid(np.arange(cells), np.arange(cells), indexing="ij")
    corner = (i * (cells + 1) + j).ravel()
    faces = np.concatenate(
        [
            np.stack([corner, corner + cells + 1, corner + cells + 2], axis=1),
            np.stack([corner, corner + cells + 2, corner + 1], axis=1),
        ]
    )
    return vertices, faces


def _joined(*meshes: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    offsets = np.cumsum([0] + [len(v) for v, _ in meshes[:-1]])
    return np.concatenate([v for v, _ in meshes]), np.concatenate([f + o for (_, f), o in zip(meshes, offsets)])


def _metrics(pred: SurfaceSamples, gt: SurfaceSamples, **kwargs) -> dict[str, float]:
    return surface_metrics(pred.points, pred.normals, gt.points, gt.normals, **kwargs)


# --- sampling ------------------------------------------------------------------------------


def test_sampling_is_deterministic_per_seed_and_lies_on_the_surface():
    sphere = _sphere()
    first, again, other = _samples(sphere, 5000, 3), _samples(sphere, 5000, 3), _samples(sphere, 5000, 4)
    assert torch.equal(first.points, again.points) and torch.equal(first.normals, again.normals)
    assert not torch.allclose(first.points, other.points)
    assert first.points.shape == first.normals.shape == (5000, 3) and first.face_index.shape == (5000,)
    radii = first.points.double().norm(dim=1)
    assert torch.all((radii <= RADIUS + 1e-6) & (radii >= RADIUS * 0.999))  # facets sag < 0.1 %
    assert torch.allclose(first.normals.norm(dim=1), torch.ones(5000), atol=1e-5)
    outward = (first.normals * first.points).sum(dim=1)
    assert torch.all(outward > 0)  # icosphere is wound outward, so are its sample normals
    # Tensor input gives the same samples as numpy input, on the tensor's device.
    tensor_input = sample_surface(torch.as_tensor(sphere.vertices), torch.as_tensor(sphere.faces), 5000, 3)
    assert torch.allclose(tensor_input.points, first.points)


def test_sampling_is_uniform_by_area():
    # Two triangles of area 1/2 and 3/2; in the first, the corner triangle x + y < 1/2 holds 1/4 of its area.
    vertices = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [3, 0, 1], [0, 1, 1]], dtype=np.float64)
    faces = np.array([[0, 1, 2], [3, 4, 5]])
    samples = sample_surface(vertices, faces, 40000, seed=0)
    in_first = samples.face_index == 0
    assert abs(in_first.double().mean().item() - 0.25) < 0.01
    assert torch.all(samples.points[in_first, 2] == 0) and torch.all(samples.points[~in_first, 2] == 1)
    corner = samples.points[in_first, :2].sum(dim=1) < 0.5
    assert abs(corner.double().mean().item() - 0.25) < 0.015


# --- metric definitions --------------------------------------------------------------------


def test_identical_samples_score_perfectly():
    samples = _samples(_sphere(), 4000, 0)
    metrics = _metrics(samples, samples)
    assert metrics["chamfer_l1_mm"] == 0.0 and metrics["accuracy_mm"] == 0.0 and metrics["completeness_mm"] == 0.0
    assert metrics["normal_consistency"] == pytest.approx(1.0, abs=1e-9)
    assert metrics["f_score_1mm"] == metrics["f_score_2.5mm"] == metrics["f_score_5mm"] == 1.0


def test_sphere_grown_by_delta_gives_chamfer_delta_and_f_score_step():
    delta_mm = 2.0
    gt = _samples(_sphere(), 16000, 0)
    pred = _samples(_sphere(RADIUS + delta_mm * UNITS_PER_MM), 16000, 1)
    metrics = _metrics(pred, gt, thresholds_mm=(1.0, 1.9, 2.5, 5.0))
    # Point-to-point distances exceed δ by the nearest sample's sideways offset (~0.3 mm here).
    assert metrics["chamfer_l1_mm"] == pytest.approx(delta_mm, rel=0.03)
    assert metrics["accuracy_mm"] == pytest.approx(delta_mm, rel=0.03)
    assert metrics["completeness_mm"] == pytest.approx(delta_mm, rel=0.03)
    assert metrics["f_score_1mm"] == 0.0 and metrics["f_score_1.9mm"] == 0.0  # nothing is closer than δ
    assert metrics["f_score_2.5mm"] > 0.99 and metrics["f_score_5mm"] == 1.0
    assert metrics["normal_consistency"] > 0.99


def test_plate_shifted_along_its_normal_gives_chamfer_of_the_shift():
    shift_mm = 3.0
    gt = sample_surface(*_plate(-0.1, 0.1), 10000, seed=0)
    pred = sample_surface(*_plate(-0.1, 0.1, z=shift_mm * UNITS_PER_MM), 10000, seed=1)
    metrics = _metrics(pred, gt)
    assert metrics["chamfer_l1_mm"] == pytest.approx(shift_mm, rel=0.03)
    assert metrics["f_score_2.5mm"] == 0.0 and metrics["f_score_5mm"] == 1.0
    assert metrics["normal_consistency"] == pytest.approx(1.0, abs=1e-6)


def test_normal_consistency_is_the_cosine_between_tilted_plates():
    gt = sample_surface(*_plate(-0.1, 0.1), 3000, seed=0)
    vertices, faces = _plate(-0.1, 0.1)
    tilt = math.radians(60)
    rotation = np.array([[1, 0, 0], [0, math.cos(tilt), -math.sin(tilt)], [0, math.sin(tilt), math.cos(tilt)]])
    pred = sample_surface(vertices @ rotation.T, faces, 3000, seed=1)
    assert _metrics(pred, gt)["normal_consistency"] == pytest.approx(math.cos(tilt), abs=1e-6)


def test_inside_out_winding_does_not_change_normal_consistency():
    # |cos| is the reference's choice: a decoder's surface is judged by shape, not by which side it calls outside.
    sphere = _sphere()
    gt = _samples(sphere, 4000, 0)
    inside_out = sample_surface(sphere.vertices, sphere.faces[:, ::-1].copy(), 4000, seed=1)
    assert torch.all((inside_out.normals * inside_out.points).sum(dim=1) < 0)  # normals really point inward
    outward = _samples(sphere, 4000, 1)
    flipped, kept = _metrics(inside_out, gt), _metrics(outward, gt)
    assert flipped["normal_consistency"] > 0.99
    assert flipped["normal_consistency"] == pytest.approx(kept["normal_consistency"], abs=2e-3)
    assert flipped["chamfer_l1_mm"] == pytest.approx(kept["chamfer_l1_mm"], rel=0.1)


def test_missing_half_costs_completeness_and_recall_not_accuracy_and_precision():
    # Prediction: only the left half of a 5 cm plate. F = 2PR/(P+R) with P ≈ 1, R ≈ 1/2 gives 2/3.
    vertices, faces, left_faces = _two_halves(0.0)
    gt = sample_surface(vertices, faces, 8000, seed=0)
    pred = sample_surface(vertices, faces[:left_faces], 4000, seed=1)
    metrics = _metrics(pred, gt)
    assert metrics["accuracy_mm"] < 0.5
    # Half the ground truth is the right half, on average 12.5 mm from the seam (plus sampling gaps).
    assert metrics["completeness_mm"] == pytest.approx(0.5 * 12.5, rel=0.1)
    assert metrics["f_score_1mm"] == pytest.approx(2 / 3, abs=0.02)


# --- nearest neighbours --------------------------------------------------------------------


def test_nearest_neighbours_of_surface_clouds_match_brute_force_also_far_from_the_surface():
    # Queries near a surface, inside it and far away, against exact float64 distances.
    generator = torch.Generator().manual_seed(1)
    directions = torch.randn(6000, 3, generator=generator, dtype=torch.float64)
    references = (directions / directions.norm(dim=1, keepdim=True) * 0.4).float()
    queries = torch.cat(
        [references[:1500] * 1.02, references[1500:2000] * 0.5, torch.rand(500, 3, generator=generator) * 4 - 2]
    )
    exact = torch.cdist(queries.double(), references.double(), compute_mode="donot_use_mm_for_euclid_dist")
    expected_distances, expected_indices = exact.min(dim=1)
    distances, indices = nearest_neighbours(queries, references)
    assert torch.equal(indices, expected_indices)
    assert distances.dtype == torch.float64 and indices.dtype == torch.long
    assert torch.allclose(distances, expected_distances, rtol=0, atol=1e-12)


# --- face region ---------------------------------------------------------------------------


def _two_halves(right_height_mm: float) -> tuple[np.ndarray, np.ndarray, int]:
    """A plate made of a left half (x < 0) and a right half raised by `right_height_mm`; also the left half's face count."""
    left, right = _plate(-0.1, 0.0, cells=4), _plate(0.0, 0.1, z=right_height_mm * UNITS_PER_MM, cells=4)
    return *_joined(left, right), len(left[1])


def test_predicted_points_take_the_region_of_their_nearest_ground_truth_point():
    vertices, faces, left_faces = _two_halves(0.0)
    gt = sample_surface(vertices, faces, 8000, seed=0)
    gt_in_left = gt.face_index < left_faces
    pred = sample_surface(*_two_halves(4.0)[:2], 8000, seed=1)
    mask = nearest_region_mask(pred.points, gt.points, gt_in_left)
    left = pred.points[:, 0] < 0
    away_from_seam = pred.points[:, 0].abs() > 1 * UNITS_PER_MM
    assert torch.equal(mask[away_from_seam], left[away_from_seam])
    assert (mask == left).double().mean() > 0.99


def test_face_metrics_see_only_the_face():
    # Prediction: exact on the face (left half), 4 mm off elsewhere.
    vertices, faces, left_faces = _two_halves(0.0)
    face_region = np.arange(len(faces)) < left_faces
    gt = sample_surface(vertices, faces, 8000, seed=0)
    pred = sample_surface(*_two_halves(4.0)[:2], 8000, seed=1)
    metrics = region_metrics(pred, gt, {"face": face_region, "hair": np.zeros(len(faces), dtype=bool)})
    assert metrics["face"]["chamfer_l1_mm"] < 0.5 and metrics["face"]["f_score_1mm"] > 0.99
    assert metrics["head"]["chamfer_l1_mm"] > 1.5 and metrics["head"]["f_score_1mm"] < 0.6
    assert metrics["head"] == _metrics(pred, gt)
    assert "hair" not in metrics  # a region with no ground truth (a bald head's hair) is left out


def test_similarity_alignment_undoes_size_and_place():
    """A head drawn 10 % too large and 3 mm off scores badly raw and like its sampling floor once aligned."""
    sphere = _sphere()
    gt = _samples(sphere, 16000, 0)
    pred = _samples(sphere, 16000, 1)
    shift = torch.tensor([3.0, -1.0, 2.0]) * UNITS_PER_MM
    moved = SurfaceSamples(1.1 * pred.points + shift, pred.normals, pred.face_index)
    scale, offset = similarity_alignment(moved.points, gt.points)
    assert scale == pytest.approx(1 / 1.1, rel=0.01)
    aligned = SurfaceSamples(scale * moved.points + offset, moved.normals, moved.face_index)
    floor = _metrics(pred, gt)["chamfer_l1_mm"]
    assert _metrics(moved, gt)["chamfer_l1_mm"] > 5 * floor
    assert _metrics(aligned, gt)["chamfer_l1_mm"] < 1.1 * floor


# --- bad input -----------------------------------------------------------------------------


def test_bad_input_gets_a_clear_error():
    sphere = _sphere()
    samples = _samples(sphere, 100, 0)
    with pytest.raises(ValueError, match="shape"):
        surface_metrics(samples.points[:, :2], samples.normals, samples.points, samples.normals)
    with pytest.raises(ValueError, match="empty"):
        surface_metrics(samples.points[:0], samples.normals[:0], samples.points, samples.normals)
    with pytest.raises(ValueError, match="do not match"):
        surface_metrics(samples.points, samples.normals[:50], samples.points, samples.normals)
    with pytest.raises(ValueError, match="thresholds"):
        surface_metrics(samples.points, samples.normals, samples.points, samples.normals, thresholds_mm=(0.0,))
    with pytest.raises(ValueError, match="positive"):
        sample_surface(sphere.vertices, sphere.faces, 0, seed=0)
    with pytest.raises(ValueError, match="no surface area"):
        sample_surface(np.zeros((3, 3)), np.array([[0, 1, 2]]), 10, seed=0)
    with pytest.raises(ValueError, match="outside"):
        sample_surface(sphere.vertices, sphere.faces + len(sphere.vertices), 10, seed=0)
    with pytest.raises(ValueError, match="every triangle"):
        region_metrics(samples, samples, {"face": np.ones(3, dtype=bool)})
    with pytest.raises(ValueError, match="face region"):
        region_metrics(samples, samples, {"face": np.zeros(len(sphere.faces), dtype=bool)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    sphere = _sphere()
    cpu_gt, cpu_pred = _samples(sphere, 5000, 0), _samples(_sphere(RADIUS * 1.02), 5000, 1)
    vertices = torch.as_tensor(sphere.vertices, device="cuda")
    faces = torch.as_tensor(sphere.faces, device="cuda")
    cuda_gt = sample_surface(vertices, faces, 5000, seed=0)
    assert cuda_gt.points.is_cuda and torch.allclose(cuda_gt.points.cpu(), cpu_gt.points, atol=1e-6)
    cuda_pred = SurfaceSamples(cpu_pred.points.cuda(), cpu_pred.normals.cuda(), cpu_pred.face_index.cuda())
    on_cuda, on_cpu = _metrics(cuda_pred, cuda_gt), _metrics(cpu_pred, cpu_gt)
    assert on_cuda.keys() == on_cpu.keys()
    assert all(on_cuda[key] == pytest.approx(on_cpu[key], abs=1e-6) for key in on_cpu)
