"""Decoder evaluation with the shipped decoder and factor map on a held-out head with hair, and the mesh
renderer behind its pictures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from diffnphr.data.head_geometry import HeadGeometry
from diffnphr.data.ict import load_ict
from diffnphr.eval.decoder import evaluate_decoder, format_summary
from diffnphr.eval.heads import GroundTruthHeads, compare_head, decode_mesh
from diffnphr.heads.split import load_head_split
from diffnphr.nphm import MonoNPHM
from diffnphr.nphm.factor_map import FactorMap
from diffnphr.render import render_mesh

WEIGHTS = "weights"
RESOLUTION, POINTS = 64, 20_000


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    renders, out = tmp_path_factory.mktemp("renders"), tmp_path_factory.mktemp("decoder_eval")
    result = evaluate_decoder(
        WEIGHTS, count=1, resolution=RESOLUTION, points=POINTS, device="cpu", renders_dir=renders, out_dir=out
    )
    return result, renders, out


def test_held_out_head_is_reconstructed_from_its_factors(report):
    result, renders, _ = report
    head = result["mapped"]["heads"][0]
    assert head["slot"] == 0 and head["head"]["chamfer_l1_mm"] < 5.0
    assert head["head"]["f_score_5mm"] > 0.5 and head["face"]["f_score_5mm"] > 0.5
    assert head["aligned_head"]["chamfer_l1_mm"] <= head["head"]["chamfer_l1_mm"] + 0.05
    # The ground truth against itself stays below the reconstruction: the floor is a floor.
    assert head["floor_head"]["chamfer_l1_mm"] < head["head"]["chamfer_l1_mm"]
    # Knowing the head's factors beats knowing nothing about it.
    mean = result["mean latent"]["heads"][0]
    assert mean["head"]["chamfer_l1_mm"] > 1.2 * head["head"]["chamfer_l1_mm"]
    assert result["paired"]["mean latent - mapped"] == {}  # one head: no interval to give
    # Eyes read as eyes: the decoded colour at the front of each eyeball is white round a dark pupil.
    assert head["eyes"]["sclera"] > 0.6 and head["eyes"]["pupil"] < 0.3
    assert "fit" in result["notes"]["fitted"]  # no fitted latents given: skipped with a pointer
    assert "mapped" in format_summary(result)
    (picture_path,) = renders.glob("heldout_*_slot0.png")
    picture = np.asarray(Image.open(picture_path))
    assert picture.shape == (768, 768, 3)  # ground truth | mapped, front and 45°
    assert (picture[:384, :384] != 255).any(axis=-1).mean() > 0.2  # ground truth drawn
    assert (picture[:384, 384:] != 255).any(axis=-1).mean() > 0.2  # reconstruction drawn


def test_a_run_cut_short_keeps_its_heads_and_the_next_call_goes_on_from_them(report):
    """A device command's time limit must not lose the heads measured so far (their lines are on disk)."""
    first, _, out = report
    assert first["complete"] == {"heads": 1, "of": 1}
    assert len((out / "heads.jsonl").read_text().splitlines()) == 2  # mapped and mean latent (no fitted)
    again = evaluate_decoder(
        WEIGHTS, count=2, resolution=RESOLUTION, points=POINTS, device="cpu", out_dir=out, max_minutes=0
    )
    assert again["complete"] == {"heads": 1, "of": 2}  # nothing new started, the stored head kept
    assert again["mapped"]["heads"] == first["mapped"]["heads"]
    assert (out / "report.json").is_file()
    with pytest.raises(ValueError, match="other settings"):
        evaluate_decoder(WEIGHTS, count=1, resolution=RESOLUTION + 16, points=POINTS, device="cpu", out_dir=out)


def test_another_heads_latent_is_measurably_worse(report):
    result, _, _ = report
    right = result["mapped"]["heads"][0]["head"]
    split = load_head_split(f"{WEIGHTS}/decoder_latents")
    model = MonoNPHM.from_pretrained(f"{WEIGHTS}/decoder")
    factor_map = FactorMap.from_pretrained(f"{WEIGHTS}/factor_map")
    identity, other = (int(i) for i in split.heldout_identities[:2])
    truth = GroundTruthHeads(HeadGeometry(load_ict())).mesh(split, identity, 0)
    with torch.no_grad():
        latents = [z[0] for z in factor_map.latents(split.factors(torch.tensor([other]), torch.tensor([0])))]
    wrong_mesh = decode_mesh(model, *latents, RESOLUTION, colours=False)
    wrong = compare_head(wrong_mesh.vertices, wrong_mesh.faces, truth, POINTS, seed=0, with_floor=False)["head"]
    assert wrong["chamfer_l1_mm"] > 1.5 * right["chamfer_l1_mm"]
    assert wrong["f_score_2.5mm"] < right["f_score_2.5mm"] - 0.1


def test_evaluation_refuses_bad_counts():
    with pytest.raises(ValueError, match="positive"):
        evaluate_decoder(WEIGHTS, count=0)


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
