"""Photo-like augmentation: shapes and range kept, seeded, each effect does what a camera does."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from diffnphr.data.augment import AugmentConfig, augment_images, gaussian_blur, jpeg_compress

NOTHING = AugmentConfig(
    blur_probability=0.0,
    motion_blur_probability=0.0,
    colour_probability=0.0,
    noise_probability=0.0,
    jpeg_probability=0.0,
)


@pytest.fixture(scope="module")
def photos() -> torch.Tensor:
    """Eight 64x80 crops of scikit-image's coffee photo, (8, 3, 64, 80) in [0, 1]."""
    from skimage import data

    image = torch.tensor(data.coffee()).permute(2, 0, 1).float() / 255.0
    return torch.stack([image[:, 40 * k : 40 * k + 64, 60 * k : 60 * k + 80] for k in range(8)])


def _high_frequency_energy(images: torch.Tensor) -> torch.Tensor:
    return (images[..., 1:, :] - images[..., :-1, :]).pow(2).mean(dim=(1, 2, 3))


def test_default_augmentation_keeps_shape_range_and_input_and_is_seeded(photos):
    before = photos.clone()
    first = augment_images(photos, torch.Generator().manual_seed(3))
    again = augment_images(photos, torch.Generator().manual_seed(3))
    other = augment_images(photos, torch.Generator().manual_seed(4))
    assert first.shape == photos.shape and first.dtype == torch.float32
    assert first.min() >= 0.0 and first.max() <= 1.0
    torch.testing.assert_close(photos, before, rtol=0, atol=0)
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.allclose(first, other)
    changed = (first - photos).abs().amax(dim=(1, 2, 3)) > 1e-3
    assert changed.sum() >= 4  # most images get at least one effect


def test_each_image_gets_its_own_strength(photos):
    config = AugmentConfig(
        blur_probability=1.0,
        motion_blur_probability=0.0,
        colour_probability=0.0,
        noise_probability=0.0,
        jpeg_probability=0.0,
        blur_sigma_px=(0.3, 3.0),
    )
    same = photos[:1].repeat(8, 1, 1, 1)
    energy = _high_frequency_energy(augment_images(same, torch.Generator().manual_seed(0), config))
    assert energy.max() > 1.5 * energy.min()
    assert torch.all(energy < _high_frequency_energy(photos[:1]))


def test_disabled_effects_leave_images_alone(photos):
    out = augment_images(photos, torch.Generator().manual_seed(0), NOTHING)
    torch.testing.assert_close(out, photos, rtol=0, atol=0)


def test_zero_saturation_gives_grey_images(photos):
    config = AugmentConfig(
        blur_probability=0.0,
        motion_blur_probability=0.0,
        colour_probability=1.0,
        noise_probability=0.0,
        jpeg_probability=0.0,
        saturation=(0.0, 0.0),
        white_balance_std=0.0,
        tint_std=0.0,
    )
    out = augment_images(photos, torch.Generator().manual_seed(0), config)
    assert (out.amax(dim=1) - out.amin(dim=1)).max() < 1e-5


def test_sensor_noise_grows_with_brightness():
    config = AugmentConfig(
        blur_probability=0.0,
        motion_blur_probability=0.0,
        colour_probability=0.0,
        noise_probability=1.0,
        jpeg_probability=0.0,
        read_noise_std=(0.001, 0.001),
        shot_noise_std=(0.05, 0.05),
    )
    flat = torch.cat([torch.full((4, 3, 64, 64), 0.1), torch.full((4, 3, 64, 64), 0.8)])
    out = augment_images(flat, torch.Generator().manual_seed(0), config)
    std = (out - flat).std(dim=(1, 2, 3))
    assert torch.all(std[:4] > 0.005) and torch.all(std[4:] > 2.0 * std[:4].max())
    assert (out - flat).mean().abs() < 0.005


@pytest.mark.parametrize("quality", [15, 50, 90])
def test_jpeg_round_trip_matches_a_real_encoder(photos, quality):
    image = photos[:1]
    ours = jpeg_compress(image, torch.tensor([float(quality)]))
    pixels = (image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", quality=quality, subsampling=2)  # 4:2:0
    real = torch.tensor(np.asarray(Image.open(buffer))).permute(2, 0, 1)[None].float() / 255.0
    error, real_error = (ours - image).abs().mean(), (real - image).abs().mean()
    assert (ours - real).abs().mean() < 1.0 / 255  # within a grey level on average (rounding, upsampling)
    assert abs(float(error - real_error)) < 0.2 * float(real_error)


def test_lower_jpeg_quality_loses_more(photos):
    low, high = jpeg_compress(photos[:1].repeat(2, 1, 1, 1), torch.tensor([10.0, 95.0]))
    assert (low - photos[0]).abs().mean() > 3 * (high - photos[0]).abs().mean()


def test_gaussian_blur_keeps_flat_images_and_zero_sigma():
    flat = torch.full((2, 3, 20, 24), 0.4)
    torch.testing.assert_close(gaussian_blur(flat, torch.tensor([0.0, 2.0])), flat)
    noise = torch.rand(2, 3, 20, 24, generator=torch.Generator().manual_seed(0))
    out = gaussian_blur(noise, torch.tensor([0.0, 2.0]))
    torch.testing.assert_close(out[0], noise[0])
    assert _high_frequency_energy(out[1:]) < 0.2 * _high_frequency_energy(noise[1:])


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="shape"):
        augment_images(torch.rand(3, 32, 32), torch.Generator())
    with pytest.raises(ValueError, match="jpeg_quality"):
        AugmentConfig(jpeg_quality=(50.0, 120.0))
    with pytest.raises(ValueError, match="blur_probability"):
        AugmentConfig(blur_probability=1.5)
