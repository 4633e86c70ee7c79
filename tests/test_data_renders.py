"""Training renders: seeded scenes, the crop rule on projected landmarks, the batched rasteriser."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from diffnphr.data.appearance import appearance_params
from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig, RenderScenes
from diffnphr.face import head_square, head_squares
from diffnphr.render import rasterise, render_mesh

STILL = dict(crop_calibration=(0.0, 0.0, 0.0, 0.0), crop_jitter_std=(0.0, 0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def model():
    return load_ict()


@pytest.fixture(scope="module")
def renderer(model):
    return HeadRenderer(model, "cpu", RenderConfig(image_size=32, supersample=2))


def _scenes(renderer: HeadRenderer, seed: int, count: int = 2) -> RenderScenes:
    identity = torch.as_tensor(np.random.default_rng(7).standard_normal((count, 100)), dtype=torch.float32)
    expression = torch.zeros(count, 53)
    expression[:, renderer.model.expression_index("jawOpen")] = 0.5
    return renderer.sample_scenes(identity, expression, appearance_params(range(count)), seed=seed)


def test_same_seed_renders_the_same_images_and_another_seed_differs(renderer):
    first = renderer.render_crops(_scenes(renderer, seed=3))
    again = renderer.render_crops(_scenes(renderer, seed=3))
    other = renderer.render_crops(_scenes(renderer, seed=4))
    assert torch.equal(first, again)
    assert (first - other).abs().mean() > 0.02


def test_crops_and_frames_are_batches_of_srgb_images(renderer):
    scenes = _scenes(renderer, seed=5)
    crops, frames = renderer.render_crops(scenes), renderer.render_frames(scenes, size=48)
    assert len(scenes) == 2 and crops.shape == (2, 3, 32, 32) and frames.shape == (2, 3, 48, 48)
    for images in (crops, frames):
        assert images.dtype == torch.float32 and images.min() >= 0 and images.max() <= 1
        assert images.std() > 0.05  # not a blank image


def test_the_crop_is_the_crop_rule_of_the_projected_landmarks_in_any_pose(model):
    """Without jitter, the rule's centre is the crop's centre, its side the crop's side, its x axis the crop's."""
    renderer = HeadRenderer(model, "cpu", RenderConfig(image_size=32, **STILL))
    points = renderer.landmarks(_scenes(renderer, seed=11, count=6))  # crop units, random poses
    eye_left, eye_right = points[:, [36, 39]].mean(dim=1), points[:, [42, 45]].mean(dim=1)
    mouth = points[:, [48, 54]].mean(dim=1)
    eye_mid, eye_to_mouth, eye_to_eye = (
        (eye_left + eye_right) / 2,
        mouth - (eye_left + eye_right) / 2,
        eye_right - eye_left,
    )
    torch.testing.assert_close(eye_mid + 0.2 * eye_to_mouth, torch.full((6, 2), 0.5), atol=1e-4, rtol=0)
    half_side = 1.4 * torch.maximum(2 * eye_to_eye.norm(dim=1), 1.8 * eye_to_mouth.norm(dim=1))
    torch.testing.assert_close(half_side, torch.full((6,), 0.5), atol=1e-4, rtol=0)
    axis = eye_to_eye + torch.stack([eye_to_mouth[:, 1], -eye_to_mouth[:, 0]], dim=1)
    assert (axis[:, 1].abs() < 1e-4 * axis[:, 0]).all() and (axis[:, 0] > 0).all()


def test_a_frontal_head_has_its_eyes_level_and_mirrored_about_the_crop_centre(model):
    config = RenderConfig(image_size=32, yaw_deg=0.0, pitch_deg=0.0, roll_deg=0.0, **STILL)
    renderer = HeadRenderer(model, "cpu", config)
    scenes = renderer.sample_scenes(torch.zeros(3, 100), torch.zeros(3, 53), appearance_params([1, 2, 3]), seed=2)
    points = renderer.landmarks(scenes)
    eye_left, eye_right = points[:, [36, 39]].mean(dim=1), points[:, [42, 45]].mean(dim=1)
    assert ((eye_left[:, 0] + eye_right[:, 0]) / 2 - 0.5).abs().max() < 0.01  # perspective off-axis: ~ symmetric
    assert (eye_left[:, 1] - eye_right[:, 1]).abs().max() < 0.005
    assert (eye_left[:, 0] < 0.45).all() and (points[:, 48, 0] < points[:, 54, 0]).all()  # subject's right on the left
    assert (eye_left[:, 1] < points[:, 48, 1]).all()  # upright: eyes above the mouth


def test_jitter_moves_the_square_by_the_drawn_amounts(model):
    renderer = HeadRenderer(model, "cpu", RenderConfig(image_size=32, crop_calibration=(0.0, 0.0, 0.0, 0.0)))
    scenes = _scenes(renderer, seed=9, count=4)
    plain_centre, plain_axis, plain_half = renderer.head_squares(scenes, jitter=False)
    centre, axis, half = renderer.head_squares(scenes)
    shift, log_scale, angle = scenes.crop_jitter[:, :2], scenes.crop_jitter[:, 2], scenes.crop_jitter[:, 3]
    local = torch.stack(
        [
            ((centre - plain_centre) * plain_axis).sum(1),
            ((centre - plain_centre) * torch.stack([-plain_axis[:, 1], plain_axis[:, 0]], 1)).sum(1),
        ],
        1,
    )
    torch.testing.assert_close(local / (2 * plain_half[:, None]), shift, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(half / plain_half, torch.exp(log_scale))
    turned = torch.atan2(plain_axis[:, 0] * axis[:, 1] - plain_axis[:, 1] * axis[:, 0], (plain_axis * axis).sum(1))
    torch.testing.assert_close(turned, angle, atol=1e-5, rtol=1e-4)
    assert scenes.crop_jitter.abs().sum() > 0


def test_bad_batches_and_configs_are_refused_with_a_sentence(renderer):
    with pytest.raises(ValueError, match="to match the 2 identities"):
        renderer.sample_scenes(torch.zeros(2, 100), torch.zeros(3, 53), appearance_params([1, 2]), seed=0)
    with pytest.raises(ValueError, match="appearance holds 3 heads"):
        renderer.sample_scenes(torch.zeros(2, 100), torch.zeros(2, 53), appearance_params([1, 2, 3]), seed=0)
    with pytest.raises(ValueError, match=r"shape \(B, 100\)"):
        renderer.sample_scenes(torch.zeros(2, 99), torch.zeros(2, 53), appearance_params([1, 2]), seed=0)
    with pytest.raises(ValueError, match="RenderScenes"):
        renderer.render_crops(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="image_size"):
        RenderConfig(image_size=4)
    with pytest.raises(ValueError, match="fov_deg"):
        RenderConfig(fov_deg=(50.0, 15.0))
    with pytest.raises(ValueError, match="head_fraction"):
        RenderConfig(head_fraction=(0.5, 1.5))


def test_batched_crop_rule_is_the_photo_rule():
    rng = np.random.default_rng(0)
    points = rng.uniform(0, 500, (4, 5, 2))
    centre, axis, half = head_squares(*points)
    t_centre, t_axis, t_half = head_squares(*torch.as_tensor(points))
    for row in range(5):
        square = head_square(*points[:, row])
        np.testing.assert_allclose(centre[row], square.centre)
        np.testing.assert_allclose(axis[row], square.x_axis)
        assert half[row] == pytest.approx(square.half_side)
    np.testing.assert_allclose(t_centre.numpy(), centre)
    np.testing.assert_allclose(t_axis.numpy(), axis)
    np.testing.assert_allclose(t_half.numpy(), half)


def test_rasterising_a_batch_equals_rasterising_each_mesh_alone():
    # Two overlapping triangles; the nearer one (larger depth) wins where they overlap.
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    screen = torch.tensor(
        [
            [[2.0, 2.0], [14.0, 3.0], [4.0, 13.0], [6.0, 1.0], [15.0, 15.0], [1.0, 9.0]],
            [[1.0, 1.0], [9.0, 2.0], [3.0, 10.0], [5.0, 5.0], [15.0, 6.0], [8.0, 15.0]],
        ]
    )
    depth = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0, 2.0], [3.0, 3.0, 3.0, 0.5, 0.5, 0.5]])
    triangle, weights = rasterise(screen, depth, faces, 16)
    for image in range(2):
        alone = rasterise(screen[image : image + 1], depth[image : image + 1], faces, 16)
        assert torch.equal(triangle[image], alone[0][0]) and torch.equal(weights[image], alone[1][0])
    assert (triangle[0] == 1).sum() > (triangle[0] == 0).sum() > 0  # the first image's near triangle covers more
    covered = triangle >= 0
    torch.testing.assert_close(weights[covered].sum(dim=1), torch.ones(int(covered.sum())))
    # Interpolating the corners with the weights gives back the pixel centres.
    corners = screen[torch.arange(2)[:, None, None], faces[triangle.clamp_min(0)]]  # (2, 256, 3, 2)
    centres = (corners * weights[..., None]).sum(dim=2)
    rows, cols = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    expected = torch.stack([cols + 0.5, rows + 0.5], dim=-1).reshape(1, 256, 2).expand(2, -1, -1)
    torch.testing.assert_close(centres[covered], expected[covered])


def test_render_mesh_draws_a_single_mesh_on_its_background():
    vertices = torch.tensor([[-0.5, -0.5, 0.0], [0.5, -0.5, 0.0], [0.0, 0.5, 0.0]])
    image = render_mesh(vertices, np.array([[0, 1, 2]]), size=32, center=(0, 0, 0), half_extent=1.0)
    assert image.shape == (32, 32, 3) and image[16, 16].max() < 255 and (image[2, 2] == 255).all()


def test_relit_copies_share_the_rasterised_head_and_differ_in_light_background_and_degradation(renderer, monkeypatch):
    scenes = _scenes(renderer, seed=4, count=2)
    lit = []
    shade = renderer._shade

    def recording(*args):
        lit.append(args[-1])
        return shade(*args)

    monkeypatch.setattr(renderer, "_shade", recording)
    copies = renderer.render_crops(scenes, copies=3)
    assert copies.shape == (6, 3, 32, 32) and copies.min() >= 0 and copies.max() <= 1
    assert torch.equal(renderer.render_crops(scenes, copies=3), copies)  # seeded like every render
    (lighting,) = lit[:1]
    # copy 0 of each head is lit by the scene's own lights, the others by new ones
    assert torch.equal(lighting.light_directions[::3], scenes.light_directions)
    assert torch.equal(lighting.ambient[::3], scenes.ambient)
    assert not torch.allclose(lighting.ambient[1::3], scenes.ambient)
    assert len({tuple(row.tolist()) for row in lighting.ambient}) == 6
    assert all(not torch.equal(copies[i], copies[j]) for i in range(6) for j in range(i))
    with pytest.raises(ValueError, match="copies"):
        renderer.render_crops(scenes, copies=0)
