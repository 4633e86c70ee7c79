"""Several photos in one pipeline call: one reconstruction each, each the head a single call with its settings gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps

from diffnphr.face import ImageInputError, NoFaceError
from diffnphr.frame import MM_PER_UNIT
from diffnphr.mesh.extract import NoSurfaceError
from diffnphr.pipeline import ExecutionOptions, HeadReconstructionPipeline, Reconstruction

TOLERANCE_MM = 0.05  # issue 29: the same seed gives the same mesh within 0.05 mm


@pytest.fixture(scope="module")
def pipeline(tiny_weights_dir) -> HeadReconstructionPipeline:
    return HeadReconstructionPipeline.from_pretrained(tiny_weights_dir, device="cpu")


@pytest.fixture(scope="module")
def photos(face_photo_file) -> list:
    """The astronaut as a file, mirrored as a PIL image, and the file again (to get another seed)."""
    mirrored = ImageOps.mirror(Image.open(face_photo_file).convert("RGB"))
    return [face_photo_file, mirrored, face_photo_file]


@pytest.fixture(scope="module")
def settings(pipeline) -> list:
    """Per photo: seeds 3, 1, 5 and, for the last, another resolution and one sample (so the stages group)."""
    return [
        pipeline.settings(seed=3, resolution=32),
        pipeline.settings(seed=1, resolution=32),
        pipeline.settings(seed=5, resolution=40, samples=1),
    ]


@pytest.fixture(scope="module")
def singles(pipeline, photos, settings) -> list[Reconstruction]:
    return [pipeline(photo, chosen) for photo, chosen in zip(photos, settings)]


def assert_same_head(batched: Reconstruction, single: Reconstruction) -> None:
    """The same latents (to float rounding) and the same mesh: the same vertices within 0.05 mm, the same faces."""
    for name in ("z_geo", "z_exp", "z_app"):
        torch.testing.assert_close(getattr(batched.latents, name), getattr(single.latents, name), atol=1e-5, rtol=0)
    assert batched.seed == single.seed
    assert batched.mesh.vertices.shape == single.mesh.vertices.shape
    offset_mm = np.abs(batched.mesh.vertices - single.mesh.vertices).max() * MM_PER_UNIT
    assert offset_mm <= TOLERANCE_MM
    np.testing.assert_array_equal(batched.mesh.faces, single.mesh.faces)
    colours = batched.mesh.visual.vertex_colors.astype(int) - single.mesh.visual.vertex_colors.astype(int)
    assert np.abs(colours).max() <= 1


@pytest.mark.parametrize("batch_extraction", [False, True], ids=["head-by-head", "batched-extraction"])
def test_a_batch_gives_each_photo_the_head_a_single_call_gives(pipeline, photos, settings, singles, batch_extraction):
    pipeline.execution = ExecutionOptions(batch_extraction=batch_extraction)
    try:
        reports: list[tuple[str, float]] = []
        results = pipeline(photos, settings, progress=lambda stage, fraction: reports.append((stage, fraction)))
    finally:
        pipeline.execution = ExecutionOptions()
    assert isinstance(results, list) and len(results) == 3
    for batched, single in zip(results, singles):
        assert_same_head(batched, single)
    # the same photo with another seed is another head: each head has its own noise
    assert not torch.allclose(results[0].latents.z_geo, results[2].latents.z_geo, atol=1e-3)
    fractions = [fraction for _, fraction in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len({stage for stage, _ in reports}) == 5
    assert set(results[0].timings) == {"crop", "encode", "diffusion", "extraction", "colour", "total"}


def test_a_heads_result_does_not_depend_on_its_batch_mates(pipeline, photos, settings, singles):
    # the astronaut with seed 3, now second in a batch of two, beside another photo with its own seed
    mates = pipeline([photos[1], photos[0]], [pipeline.settings(seed=9, resolution=32), settings[0]])
    assert_same_head(mates[1], singles[0])


def test_the_photos_go_through_the_encoder_and_the_unet_together(pipeline, photos):
    encoder_calls, unet_batches = [], []
    hooks = [
        pipeline.encoder.model.register_forward_hook(
            lambda m, args, kwargs, out: encoder_calls.append(1), with_kwargs=True
        ),
        pipeline.diffusion.unet.register_forward_hook(lambda m, args, out: unet_batches.append(out.shape[0])),
    ]
    try:
        shared = pipeline.settings(seed=0, resolution=16)
        pipeline(photos, shared)
    finally:
        for hook in hooks:
            hook.remove()
    assert len(encoder_calls) == 1
    assert unet_batches == [3 * shared.samples] * shared.steps  # one forward per step for every sample of every head


def test_one_photo_still_gives_one_result_and_a_list_of_one_a_list(pipeline, photos, singles, settings):
    single = pipeline(photos[0], settings[0])
    assert isinstance(single, Reconstruction)
    assert_same_head(single, singles[0])
    [alone] = pipeline([photos[0]], settings[0])
    assert_same_head(alone, singles[0])
    with pytest.raises(TypeError, match="list of photos"):
        pipeline(photos[0], settings)


def test_an_error_about_one_photo_names_it(pipeline, face_photo_file, no_face_photo_file, not_an_image_file):
    stages = []
    with pytest.raises(NoFaceError, match=r"^Photo 2 of 3 \(coffee\.png\): No face"):
        pipeline(
            [face_photo_file, no_face_photo_file, face_photo_file],
            seed=0,
            resolution=16,
            progress=lambda stage, fraction: stages.append(stage),
        )
    assert set(stages) == {"Finding and cropping the face"}  # refused before any model work
    with pytest.raises(ImageInputError, match=r"^Photo 3 of 3 \(notes\.txt\): 'notes\.txt' is not an image"):
        pipeline([face_photo_file, face_photo_file, not_an_image_file], seed=0, resolution=16)
    with pytest.raises(ImageInputError, match=r"^Photo 1 of 2: "):
        pipeline([Image.new("RGB", (4, 4)), face_photo_file], seed=0, resolution=16)
    with pytest.raises(ValueError, match="at least one photo"):
        pipeline([], seed=0)
    with pytest.raises(ValueError, match="one per photo; got 2 settings"):
        pipeline([face_photo_file] * 3, [pipeline.settings(seed=0)] * 2)


class _OutsideFor:
    """A bound field whose heads marked `empty` are outside everywhere (no surface), the others as they were."""

    def __init__(self, field, empty: torch.Tensor) -> None:
        self.field, self.empty = field, empty

    def sdf(self, points: torch.Tensor) -> torch.Tensor:
        values = self.field.sdf(points)
        values[self.empty] = 1.0
        return values

    def point_sdf(self, points: torch.Tensor) -> torch.Tensor:
        return self.sdf(points[None])[0]

    def __getattr__(self, name: str):
        return getattr(self.field, name)


@pytest.mark.parametrize("batch_extraction", [False, True], ids=["head-by-head", "batched-extraction"])
def test_a_head_without_surface_names_its_photo(pipeline, face_photo_file, monkeypatch, batch_extraction):
    """The second head has no surface in the box (its field marked by a z_exp the tiny decoder ignores)."""
    from diffnphr.pipeline import batch

    sample, bind = batch._sample, pipeline.decoder.bind
    marker = 123.0

    def second_head_marked(*args, **kwargs):
        latents = sample(*args, **kwargs)
        latents[1].z_exp.fill_(marker)
        return latents

    def binding(z_geo, z_exp, z_app=None):
        return _OutsideFor(bind(z_geo, z_exp, z_app), z_exp[:, 0] == marker)

    monkeypatch.setattr(batch, "_sample", second_head_marked)
    monkeypatch.setattr(pipeline.decoder, "bind", binding)
    monkeypatch.setattr(pipeline, "execution", ExecutionOptions(batch_extraction=batch_extraction))
    with pytest.raises(NoSurfaceError, match=r"^Photo 2 of 2 \(astronaut\.png\): No surface found"):
        pipeline([face_photo_file, face_photo_file], seed=0, resolution=16)


def test_warm_up_runs_a_whole_reconstruction(pipeline):
    assert pipeline.warm_up(resolution=16) > 0
    assert pipeline.warm_up(resolution=16, heads=2) > 0
