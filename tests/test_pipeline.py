"""The reconstruction pipeline and its two CLI commands, as a person uses them (tiny random weights)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image, ImageOps

from diffnphr.__main__ import main
from diffnphr.face import NoFaceError
from diffnphr.frame import BOX_MAX, BOX_MIN
from diffnphr.pipeline import WEIGHTS_ENV, HeadReconstructionPipeline, PipelineDefaults
from diffnphr.weights import WeightsNotFoundError

REPO = Path(__file__).resolve().parents[1]
LATENT_SIZES = {"z_geo": 2176, "z_exp": 100, "z_app": 2176}
STAGES = {"crop", "encode", "diffusion", "extraction", "colour", "total"}
# Latent-only checks use the coarsest grid the pipeline accepts, so each call stays cheap.
COARSE = 16


@pytest.fixture(scope="module")
def pipeline(tiny_weights_dir) -> HeadReconstructionPipeline:
    return HeadReconstructionPipeline.from_pretrained(tiny_weights_dir)


@pytest.fixture(scope="module")
def mirrored_photo(face_photo_file, tmp_path_factory) -> Path:
    """A second face photo (the astronaut mirrored): another image, so another embedding and latent."""
    path = tmp_path_factory.mktemp("mirrored") / "mirrored.png"
    ImageOps.mirror(Image.open(face_photo_file)).save(path)
    return path


@pytest.fixture(scope="module")
def reference(pipeline, face_photo_file):
    """The astronaut reconstructed with seed 3, and the progress reports of that call."""
    reports: list[tuple[str, float]] = []
    result = pipeline(face_photo_file, seed=3, resolution=32, progress=lambda stage, f: reports.append((stage, f)))
    return result, reports


def test_photo_becomes_coloured_mesh_with_crop_latents_seed_and_timings(reference):
    result, reports = reference
    mesh = result.mesh
    assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
    # what a viewer and a 3D printer rely on: one closed surface, faces outwards, head-sized, inside the box
    assert mesh.is_watertight and mesh.is_winding_consistent and mesh.volume > 0
    assert len(mesh.split(only_watertight=False)) == 1
    assert np.all(mesh.bounds[0] >= BOX_MIN) and np.all(mesh.bounds[1] <= BOX_MAX)
    assert np.ptp(mesh.vertices, axis=0).min() > 0.4 and np.ptp(mesh.vertices, axis=0).max() < 1.25
    colours = mesh.visual.vertex_colors
    assert colours.shape == (len(mesh.vertices), 4) and colours.dtype == np.uint8
    assert np.ptp(colours[:, :3].astype(int), axis=0).max() > 0, "colours should vary over the head"
    assert result.crop.image.size == (512, 512) and not result.crop.centred_fallback
    assert {name: code.shape[-1] for name, code in vars(result.latents).items()} == LATENT_SIZES
    assert result.seed == 3
    assert set(result.timings) == STAGES and all(seconds >= 0 for seconds in result.timings.values())

    fractions = [fraction for _, fraction in reports]
    assert fractions == sorted(fractions) and fractions[-1] == pytest.approx(1.0)
    assert len({stage for stage, _ in reports}) == 5
    # the bar moves while the surface is extracted and coloured, not only between stages
    extracting = [fraction for stage, fraction in reports if stage == "Extracting the surface"]
    colouring = [fraction for stage, fraction in reports if stage == "Colouring the mesh"]
    assert len(set(extracting)) >= 4 and len(set(colouring)) >= 2


def test_no_seed_draws_one_and_reports_it_so_the_head_can_be_repeated(pipeline, face_photo_file, reference):
    drawn = pipeline(face_photo_file, resolution=COARSE)
    assert isinstance(drawn.seed, int) and 0 <= drawn.seed < 2**31

    replay = pipeline(face_photo_file, seed=drawn.seed, resolution=COARSE)
    for name in LATENT_SIZES:
        assert torch.equal(getattr(replay.latents, name), getattr(drawn.latents, name))
    if drawn.seed != reference[0].seed:
        assert not torch.equal(drawn.latents.z_geo, reference[0].latents.z_geo)


def test_transfer_keeps_identity_codes_and_takes_the_expression(pipeline, face_photo_file, mirrored_photo, reference):
    identity = reference[0]
    expression = pipeline(mirrored_photo, seed=3, resolution=COARSE)
    assert not torch.equal(identity.latents.z_exp, expression.latents.z_exp)

    moved = pipeline.transfer_expression(face_photo_file, mirrored_photo, seed=3, resolution=COARSE)
    assert torch.equal(moved.latents.z_geo, identity.latents.z_geo)
    assert torch.equal(moved.latents.z_app, identity.latents.z_app)
    assert torch.equal(moved.latents.z_exp, expression.latents.z_exp)
    assert moved.expression_crop is not None and len(moved.mesh.faces) > 0

    from_code = pipeline.transfer_expression(face_photo_file, expression.latents.z_exp[None], seed=3, resolution=COARSE)
    assert torch.equal(from_code.latents.z_exp, expression.latents.z_exp)
    assert torch.equal(from_code.latents.z_geo, identity.latents.z_geo)
    with pytest.raises(ValueError, match="100 values"):
        pipeline.transfer_expression(face_photo_file, torch.zeros(99))


def test_no_face_is_refused_unless_the_centre_is_allowed(pipeline, no_face_photo_file):
    with pytest.raises(NoFaceError, match="No face"):
        pipeline(no_face_photo_file, seed=0, resolution=COARSE)
    result = pipeline(no_face_photo_file, seed=0, resolution=COARSE, allow_no_face=True)
    assert result.crop.centred_fallback and len(result.mesh.faces) > 0
    assert any("centre" in warning for warning in result.warnings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"steps": 0}, "diffusion steps"),
        ({"resolution": 4}, "mesh resolution"),
        ({"seed": -1}, "seed"),
        ({"guidance_scale": -1.0}, "guidance scale"),
        ({"samples": 0}, "samples averaged"),
    ],
)
def test_impossible_settings_are_refused_with_a_sentence(pipeline, face_photo_file, settings, message):
    with pytest.raises(ValueError, match=message):
        pipeline(face_photo_file, **settings)


def test_weights_come_from_the_environment_variable(tiny_weights_dir, monkeypatch):
    monkeypatch.setenv(WEIGHTS_ENV, str(tiny_weights_dir))
    loaded = HeadReconstructionPipeline.from_pretrained(device="cpu")
    assert loaded.defaults == PipelineDefaults(
        steps=3, guidance_scale=1.0, samples=2, resolution=64, cpu_resolution=48, scheduler="ddim"
    )
    assert loaded.default_resolution == 48  # a CPU pipeline meshes at the CPU default


def test_missing_weights_message_names_all_three_options(tmp_path, monkeypatch):
    import diffnphr.pipeline.pipeline as pipeline_module

    monkeypatch.delenv(WEIGHTS_ENV, raising=False)
    monkeypatch.setattr(pipeline_module, "REPO_WEIGHTS_DIR", tmp_path / "weights")
    for attempt in (
        lambda: HeadReconstructionPipeline.from_pretrained(),
        lambda: HeadReconstructionPipeline.from_pretrained(tmp_path / "nowhere"),
    ):
        with pytest.raises(WeightsNotFoundError) as caught:
            attempt()
        message = str(caught.value)
        assert "--weights" in message and f"${WEIGHTS_ENV}" in message and str(tmp_path / "weights") in message


def test_cli_reconstruct_writes_a_glb_and_reports_seed_and_timings(tiny_weights_dir, face_photo_file, tmp_path):
    out = tmp_path / "head.glb"
    command = [
        sys.executable,
        "-m",
        "diffnphr",
        "reconstruct",
        str(face_photo_file),
        "-o",
        str(out),
        "--weights",
        str(tiny_weights_dir),
        "--seed",
        "7",
        "--resolution",
        "32",
        "--steps",
        "2",
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "seed: 7" in done.stdout and "diffusion" in done.stdout
    assert "Sampling the head latent" in done.stderr

    mesh = trimesh.load(out, force="mesh")
    assert len(mesh.vertices) > 100 and mesh.visual.kind == "vertex"


def test_cli_transfer_writes_the_format_asked_for(tiny_weights_dir, face_photo_file, mirrored_photo, tmp_path, capsys):
    out = tmp_path / "moved.ply"
    code = main(
        [
            "transfer",
            str(face_photo_file),
            str(mirrored_photo),
            "-o",
            str(out),
            "--weights",
            str(tiny_weights_dir),
            "--seed",
            "1",
            "--resolution",
            str(COARSE),
        ]
    )
    assert code == 0 and "seed: 1" in capsys.readouterr().out
    assert out.read_bytes().startswith(b"ply")


def test_cli_user_errors_are_one_line_and_exit_2(tiny_weights_dir, not_an_image_file, tmp_path, capsys):
    code = main(
        ["reconstruct", str(not_an_image_file), "-o", str(tmp_path / "x.glb"), "--weights", str(tiny_weights_dir)]
    )
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last_line.startswith("error: ") and "not an image" in last_line

    code = main(["reconstruct", str(not_an_image_file), "--weights", str(tmp_path / "missing")])
    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert code == 2 and last_line.startswith("error: ") and "$DIFFNPHR_WEIGHTS" in last_line
