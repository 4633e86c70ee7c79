"""Decoder evaluation with the shipped trained decoder, and the mesh renderer behind its pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from diffnphr.data.ict import load_ict
from diffnphr.eval.decoder import evaluate_decoder
from diffnphr.eval.heads import GroundTruthHeads, compare_head, decode_mesh
from diffnphr.heads.latents import load_head_latents
from diffnphr.heads.split import load_head_split
from diffnphr.nphm import MonoNPHM
from diffnphr.render import render_mesh

DECODER = "weights/decoder"
LATENTS = "weights/decoder_latents"
RESOLUTION, POINTS = 64, 20_000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    renders = tmp_path_factory.mktemp("renders")
    result = evaluate_decoder(
        DECODER,
        LATENTS,
        count=1,
        expressions=1,
        resolution=RESOLUTION,
        points=POINTS,
        device="cpu",
        renders_dir=renders,
        renders=1,
    )
    return result, renders


def test_training_head_is_reconstructed_within_millimetres(report):
    result, renders = report
    head = result["train"]["heads"][0]
    assert (head["identity"], head["slot"]) == (0, 0)
    assert head["head"]["chamfer_l1_mm"] < 5.0
    assert head["head"]["f_score_5mm"] > 0.5 and head["face"]["f_score_5mm"] > 0.5
    # The ground truth against itself stays below the reconstruction: the floor is a floor.
    assert head["floor_head"]["chamfer_l1_mm"] < head["head"]["chamfer_l1_mm"]
    assert result["train"]["summary"]["head"]["chamfer_l1_mm"]["mean"] == pytest.approx(head["head"]["chamfer_l1_mm"])
    assert "fit" in result["heldout"]["skipped"]  # no fitted latents given: skipped with a pointer
    picture = np.asarray(Image.open(renders / "train_identity0000_slot0.png"))
    assert picture.shape == (768, 768, 3)
    assert (picture[:384, :384] != 255).any(axis=-1).mean() > 0.2  # ground truth drawn
    assert (picture[:384, 384:] != 255).any(axis=-1).mean() > 0.2  # reconstruction drawn


def test_another_identitys_latent_is_measurably_worse(report):
    result, _ = report
    right = result["train"]["heads"][0]["head"]
    split, latents = load_head_split(LATENTS), load_head_latents(LATENTS, "codebooks")
    model = MonoNPHM.from_pretrained(DECODER)
    truth = GroundTruthHeads(load_ict()).mesh(split, int(latents.identities[0]), 0)
    other = decode_mesh(model, latents.z_geo[1], latents.z_exp[1, 0], latents.z_app[1], RESOLUTION, colours=False)
    wrong = compare_head(other.vertices, other.faces, truth, POINTS, seed=0, with_floor=False)["head"]
    assert wrong["chamfer_l1_mm"] > 1.5 * right["chamfer_l1_mm"]
    assert wrong["f_score_2.5mm"] < right["f_score_2.5mm"] - 0.1


def test_evaluation_refuses_unknown_split():
    with pytest.raises(ValueError, match="train, heldout"):
        evaluate_decoder(DECODER, LATENTS, which=("test",))


def test_sphere_renders_as_a_lit_disc_with_its_vertex_colours():
    sphere = trimesh.creation.icosphere(subdivisions=4)
    colours = np.tile([1.0, 0.1, 0.1], (len(sphere.vertices), 1))
    colours[sphere.vertices[:, 0] > 0] = [0.1, 0.1, 1.0]  # right half (+x, image right) blue
    image = render_mesh(
        torch.tensor(sphere.vertices, dtype=torch.float32),
        sphere.faces,
        colours,
        size=128,
        center=(0, 0, 0),
        half_extent=1.25,
    )
    assert image.shape == (128, 128, 3) and image.dtype == np.uint8
    rows, cols = np.mgrid[:128, :128]
    radius = np.hypot(cols + 0.5 - 64, rows + 0.5 - 64) / 64 * 1.25
    drawn = (image != 255).any(axis=-1)
    assert drawn[radius < 0.95].all() and not drawn[radius > 1.05].any()
    assert image[64, 32, 0] > 3 * image[64, 32, 2]  # left: red
    assert image[64, 96, 2] > 3 * image[64, 96, 0]  # right: blue
    # The light comes from the upper left, in front: brighter there than lower right.
    assert image[40, 40, 0] > image[88, 40, 0] and image[40, 88, 2] > image[88, 88, 2]
    assert image[40, 40, 0] > image[64, 16, 0]  # the rim, lit at a grazing angle, is darker than the lit side
