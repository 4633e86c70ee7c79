"""`eval reconstruction` and its baselines, with tiny random models, a tiny split and a stand-in renderer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import trimesh

from diffnphr.baselines.landmarks import fit_ridge, landmark_features, load_landmark_predictions, mean_shape
from diffnphr.baselines.neighbours import NearestNeighbourLatents
from diffnphr.eval.reconstruction.cache import CACHE_FILE
from diffnphr.eval.reconstruction.landmarks import build_landmark_predictions
from diffnphr.eval.reconstruction.methods import AVERAGED_METHOD, METHODS, default_method
from diffnphr.eval.reconstruction.renders import eval_renders
from diffnphr.eval.reconstruction.report import (
    consistency_summary,
    format_reconstruction_summary,
    gap_closed,
    paired_differences,
)
from diffnphr.eval.reconstruction.run import evaluate_reconstruction
from diffnphr.eval.reconstruction.work import reconstruction_distances
from diffnphr.heads.latents import SplitLatents
from diffnphr.heads.split import load_head_split, make_head_split


class StandInRenderer:
    """Renders that depend on the head and the seed only: a colour from the identity plus seeded noise."""

    def sample_scenes(self, identity_coefficients, expression_weights, appearance, seed):
        assert len(identity_coefficients) == len(expression_weights) == appearance.region_colours.shape[0]
        return {"identity": identity_coefficients.cpu(), "expression": expression_weights.cpu(), "seed": seed}

    def _images(self, scenes, size):
        generator = torch.Generator().manual_seed(scenes["seed"])
        base = torch.sigmoid(scenes["identity"][:, :3] + scenes["expression"][:, :3])[:, :, None, None]
        noise = 0.05 * torch.rand(len(base), 3, size, size, generator=generator)
        return (base.expand(-1, -1, size, size) + noise).clamp(0, 1)

    def render_crops(self, scenes):
        return self._images(scenes, 64)

    def render_frames(self, scenes, size=512):
        return self._images(scenes, size)


@pytest.fixture(scope="module")
def latents_dir(tmp_path_factory):
    """A split of 6 training and 2 held-out identities × 4 slots, with random codebooks and fitted latents."""
    from diffnphr.data.ict import load_ict

    directory = tmp_path_factory.mktemp("latents")
    split = make_head_split(load_ict(), seed=0, train_identities=6, heldout_identities=2, expressions_per_identity=4)
    split.save(directory)
    generator = torch.Generator().manual_seed(0)
    for name, rows in (("codebooks", split.train_identities), ("fitted_heldout", split.heldout_identities)):
        n = len(rows)
        SplitLatents(
            rows,
            0.01 * torch.randn(n, 2176, generator=generator),
            0.01 * torch.randn(n, 4, 100, generator=generator),
            0.01 * torch.randn(n, 2176, generator=generator),
        ).save(directory, name)
    return directory


@pytest.fixture(scope="module")
def regression_dir(tmp_path_factory, tiny_weights_dir):
    from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
    from diffnphr.encoders import FaceEncoder

    encoder = FaceEncoder.from_pretrained(tiny_weights_dir, subfolder="encoder")
    head = RegressionHead(RegressionHeadConfig(cond_dim=encoder.model.config.projection_dim, hidden_dim=8))
    return LatentRegressor(encoder, head).save_pretrained(tmp_path_factory.mktemp("regression"))


def _constructed_landmarks(frames):
    """Stand-in Face Mesh: 478 points from the frame's mean colour (so they carry the identity), similarity-moved."""
    colour = frames.mean(dim=(2, 3)).numpy()
    grid = np.stack(np.meshgrid(np.linspace(0, 1, 22), np.linspace(0, 1, 22)), -1).reshape(-1, 2)[:478]
    points = grid[None] + 0.1 * colour[:, None, :2] * grid[None] ** 2
    return 300 * points + 17.0


@pytest.fixture(scope="module")
def landmarks_file(tmp_path_factory, latents_dir):
    path = tmp_path_factory.mktemp("landmarks") / "landmarks.safetensors"
    report = build_landmark_predictions(
        latents_dir,
        path,
        train_count=20,
        renderer=StandInRenderer(),
        landmarks_fn=_constructed_landmarks,
        frame_size=32,
    )
    assert report["train_failures"] == 0 and report["eval_failures"] == 0
    return path


def test_landmark_file_holds_one_prediction_per_evaluation_render(latents_dir, landmarks_file):
    split = load_head_split(latents_dir)
    renders = eval_renders(split, 4)
    latents, detected, details = load_landmark_predictions(landmarks_file, renders.fingerprint())
    assert latents.shape == (len(renders), 4456) and detected.all()
    assert details["alpha"] > 0
    assert landmarks_file.stat().st_size < 3_000_000
    with pytest.raises(ValueError, match="another evaluation set"):
        load_landmark_predictions(landmarks_file, "0" * 16)


def test_the_table_names_the_shipped_default_setting():
    """The table's default row is what the app does with the shipped weights (and with no pipeline.json)."""
    from diffnphr.pipeline import PipelineDefaults

    shipped = json.loads((Path(__file__).resolve().parents[1] / "weights" / "pipeline.json").read_text())
    for defaults in (PipelineDefaults(), PipelineDefaults(**shipped)):
        assert default_method(SimpleNamespace(defaults=defaults)) == AVERAGED_METHOD
        assert (
            AVERAGED_METHOD.name == f"diffusion_ddim{defaults.steps}_g{defaults.guidance_scale:g}_avg{defaults.samples}"
        )


def test_evaluation_set_covers_every_heldout_identity_with_neutral_first(latents_dir):
    split = load_head_split(latents_dir)
    renders = eval_renders(split, 4)
    assert len(renders) == 3 * len(split.heldout_identities)
    assert set(renders.identities.tolist()) == set(split.heldout_identities.tolist())
    assert renders.slots[::3].eq(0).all() and renders.slots.lt(4).all()
    assert renders.fingerprint() == eval_renders(split, 4).fingerprint()
    with pytest.raises(ValueError, match="at least 3 expression slots"):
        eval_renders(split, 2)


@pytest.mark.slow
def test_the_table_has_every_method(tmp_path, tiny_weights_dir, latents_dir, regression_dir, landmarks_file):
    report = evaluate_reconstruction(
        tiny_weights_dir,
        latents_dir,
        tmp_path,
        count=1,
        resolution=24,
        points=400,
        renderer=StandInRenderer(),
        regression_dir=regression_dir,
        landmarks_file=landmarks_file,
        device="cpu",
    )
    assert report["complete"] and not report["pending"]
    # the tiny pipeline's own default setting (3 steps, 2 samples averaged) is evaluated beside the shipped one's
    default = "diffusion_ddim3_g1_avg2"
    assert list(report["methods"]) == [*(m.name for m in METHODS[:-2]), default, *(m.name for m in METHODS[-2:])]
    assert report["goal"]["method"] == report["consistency"]["method"] == default
    assert report["compared_renders"] == 3
    for method, summary in report["methods"].items():
        assert summary["count"] + summary["failures"] == 3, method
    assert [row["steps"] for row in report["steps_curve"]] == [5, 5, 10, 10, 25, 25, 50, 50]
    assert report["paired"]["method"] == default
    assert set(report["paired"]["against"]) == set(report["methods"]) - {default, "sampling_floor"}
    assert all(pair["renders"] == 3 for pair in report["paired"]["against"].values())
    assert all(
        set(pair) >= {"head", "face", "aligned_head", "aligned_face"} for pair in report["paired"]["against"].values()
    )
    assert all(summary["aligned_face"] for summary in report["methods"].values() if summary["count"])
    # the tiny decoder draws one mesh for every latent, so no gap is defined; the unit test above measures one
    assert report["gap_closed"] == gap_closed(report["methods"], default) == {}
    table = format_reconstruction_summary(report)
    assert all(f"| {method} |" in table for method in report["methods"] if report["methods"][method]["count"])
    assert json.loads((tmp_path / "report.json").read_text())["compared_renders"] == 3


@pytest.mark.slow
def test_a_stopped_run_continues_and_a_rerun_reuses_the_cache(tmp_path, tiny_weights_dir, latents_dir):
    out = tmp_path / "eval"
    methods = ["decoder_fit", "mean", "nearest_neighbour", "diffusion_ddim5_g1", "sampling_floor"]
    settings = dict(methods=methods, count=1, resolution=24, points=400, renderer=StandInRenderer(), device="cpu")
    stopped = evaluate_reconstruction(tiny_weights_dir, latents_dir, out, max_minutes=1e-6, **settings)
    assert not stopped["complete"] and stopped["pending"]
    assert "Pending" in format_reconstruction_summary(stopped)
    report = evaluate_reconstruction(tiny_weights_dir, latents_dir, out, **settings)
    assert report["complete"] and not report["pending"] and report["compared_renders"] == 3
    assert list(report["methods"]) == methods
    assert report["consistency"]["pairs"] + report["consistency"]["failures"] == 3
    assert all(
        report["transfer"][m]["count"] + report["transfer"][m]["failures"] == 1
        for m in ("diffusion", "diffusion_without_transfer", "decoder_fit")
    )

    lines = (out / CACHE_FILE).read_text().splitlines()
    again = evaluate_reconstruction(tiny_weights_dir, latents_dir, out, **settings)
    assert (out / CACHE_FILE).read_text().splitlines() == lines
    assert again["methods"] == report["methods"]
    with pytest.raises(ValueError, match="other settings"):
        evaluate_reconstruction(tiny_weights_dir, latents_dir, out, **{**settings, "points": 500})


def test_shards_share_the_work_and_a_plain_call_reports_it_all(tmp_path, tiny_weights_dir, latents_dir):
    out = tmp_path / "eval"
    settings = dict(
        methods=["mean", "diffusion_ddim5_g1"],
        count=2,
        resolution=24,
        points=400,
        renderer=StandInRenderer(),
        device="cpu",
    )
    first = evaluate_reconstruction(tiny_weights_dir, latents_dir, out, shard=(0, 2), **settings)
    assert first["pending"]  # the other half is still to do
    evaluate_reconstruction(tiny_weights_dir, latents_dir, out, shard=(1, 2), **settings)
    files = sorted(path.name for path in out.glob("results*.jsonl"))
    assert files == ["results-0-of-2.jsonl", "results-1-of-2.jsonl"]
    keys = [{json.loads(line)["key"] for line in (out / name).read_text().splitlines()} for name in files]
    assert not keys[0] & keys[1]
    report = evaluate_reconstruction(tiny_weights_dir, latents_dir, out, **settings)
    assert report["complete"] and not report["pending"] and report["compared_renders"] == 6
    assert not (out / CACHE_FILE).exists()  # everything came from the shards' files
    with pytest.raises(ValueError, match="shard"):
        evaluate_reconstruction(tiny_weights_dir, latents_dir, out, shard=(2, 2), **settings)


def test_unknown_or_unavailable_methods_are_refused(tmp_path, tiny_weights_dir, latents_dir):
    with pytest.raises(ValueError, match="unknown methods"):
        evaluate_reconstruction(
            tiny_weights_dir, latents_dir, tmp_path, methods=["oracle"], device="cpu", renderer=StandInRenderer()
        )
    with pytest.raises(ValueError, match="needs --regression"):
        evaluate_reconstruction(
            tiny_weights_dir, latents_dir, tmp_path, methods=["regression"], device="cpu", renderer=StandInRenderer()
        )


def _sphere(radius: float, centre=(0.0, 0.1, -0.3)) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=4, radius=radius)
    mesh.apply_translation(centre)
    return mesh


def test_consistency_ratio_on_constructed_reconstructions():
    """Two views of a head give spheres 0.25 mm apart in radius, another head one 12.5 mm larger."""
    items = [reconstruction_distances(_sphere(0.1), _sphere(0.101), _sphere(0.15), 4000, seed) for seed in range(2)]
    summary = consistency_summary(items)
    assert summary["pairs"] == 2
    assert summary["same_head_chamfer_mm"] < 2.0
    assert summary["other_head_chamfer_mm"] == pytest.approx(12.5, abs=1.0)
    same = np.mean([item["same_head_mm"] for item in items])
    other = np.mean([item["other_head_mm"] for item in items])
    assert summary["ratio"] == pytest.approx(same / other)
    assert summary["ratio"] < 0.2


def test_consistency_counts_empty_reconstructions_as_failures():
    empty = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    items = [
        reconstruction_distances(empty, _sphere(0.3), _sphere(0.3), 1000, 0),
        reconstruction_distances(_sphere(0.3), _sphere(0.3), _sphere(0.32), 1000, 0),
    ]
    assert "error" in items[0]
    assert consistency_summary(items)["failures"] == 1 and consistency_summary(items)["pairs"] == 1


def test_paired_differences_give_each_region_raw_and_aligned_its_mean_gap_interval_and_wins():
    def record(chamfer, f_score, aligned_chamfer):
        return {
            "head": {"chamfer_l1_mm": chamfer, "f_score_2.5mm": f_score},
            "aligned_head": {"chamfer_l1_mm": aligned_chamfer, "f_score_2.5mm": f_score},
        }

    ours = [record(4.0, 0.5, 2.0), record(5.0, 0.4, 2.1), {"error": "empty mesh"}, record(3.0, 0.6, 1.9)]
    theirs = [record(4.5, 0.45, 3.0), record(4.9, 0.42, 3.2), record(4.0, 0.5, 3.0), record(3.6, 0.55, 2.8)]
    paired = paired_differences(ours, theirs)
    assert paired["renders"] == 3 and paired["head"]["ours_closer"] == 2 and paired["aligned_head"]["ours_closer"] == 3
    assert "face" not in paired  # no region the records lack
    differences = np.array([-0.5, 0.1, -0.6])
    head = paired["head"]["chamfer_l1_mm"]
    assert head["mean_difference"] == pytest.approx(differences.mean())
    assert head["standard_error"] == pytest.approx(differences.std(ddof=1) / np.sqrt(3))
    t = 4.302652729911275  # Student's t, 97.5 % quantile, 2 degrees of freedom
    assert head["ci95"] == pytest.approx(
        [differences.mean() - t * head["standard_error"], differences.mean() + t * head["standard_error"]]
    )
    assert head["ci95"][0] < 0 < head["ci95"][1]  # raw: a tie
    assert paired["aligned_head"]["chamfer_l1_mm"]["ci95"][1] < 0  # once the size is removed, ours is closer
    assert paired["head"]["f_score_2.5mm"]["mean_difference"] == pytest.approx(np.mean([0.05, -0.02, 0.05]))
    assert paired_differences(ours[:1], theirs[:1]) == {"renders": 1}


def test_gap_closed_measures_a_method_between_the_mean_latent_and_the_decoder_fit():
    def summary(head, aligned):
        return {"head": {"chamfer_l1_mm": {"mean": head}}, "aligned_head": {"chamfer_l1_mm": {"mean": aligned}}}

    table = {"mean": summary(5.0, 4.0), "ours": summary(4.5, 2.0), "decoder_fit": summary(1.0, 1.0)}
    assert gap_closed(table, "ours") == pytest.approx({"head": 0.125, "aligned_head": 2 / 3})
    assert gap_closed({"ours": summary(4.5, 2.0)}, "ours") == {}


def test_landmark_features_ignore_a_similarity_transform():
    rng = np.random.default_rng(0)
    shapes = rng.normal(size=(5, 478, 2))
    reference = mean_shape(shapes)
    angle, scale, shift = math.radians(30), 2.5, np.array([40.0, -7.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    moved = scale * shapes @ rotation.T + shift
    np.testing.assert_allclose(landmark_features(moved, reference), landmark_features(shapes, reference), atol=1e-9)
    mirrored = shapes * np.array([-1.0, 1.0])
    assert not np.allclose(landmark_features(mirrored, reference), landmark_features(shapes, reference), atol=1e-3)


def test_ridge_recovers_a_linear_map_and_picks_a_penalty_by_cross_validation():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(200, 10))
    weights = rng.normal(size=(10, 3))
    targets = features @ weights + 0.01 * rng.normal(size=(200, 3))
    model = fit_ridge(features, targets)
    assert model.alpha == min(model.cv_errors, key=model.cv_errors.get)
    np.testing.assert_allclose(model.predict(features[:5]), targets[:5], atol=0.1)
    with pytest.raises(ValueError, match="same N"):
        fit_ridge(features, targets[:10])


def test_nearest_neighbour_returns_the_latent_of_the_closest_embedding():
    embeddings = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    latents = torch.arange(3.0)[:, None].expand(-1, 4)
    baseline = NearestNeighbourLatents(embeddings, latents)
    predicted = baseline.predict(torch.tensor([[0.1, 5.0], [-3.0, 0.2]]))
    assert predicted[:, 0].tolist() == [1.0, 2.0]


@pytest.mark.slow
def test_figures_show_each_render_the_portrait_and_the_steps_chart(tmp_path, tiny_weights_dir, latents_dir):
    settings = dict(
        methods=["mean", "diffusion_ddim5_g1", "diffusion_ddim10_g1"],
        count=1,
        resolution=24,
        points=400,
        renderer=StandInRenderer(),
        device="cpu",
    )
    report = evaluate_reconstruction(
        tiny_weights_dir, latents_dir, tmp_path / "eval", figures_dir=tmp_path / "figures", figures=1, **settings
    )
    written = [Path(path).name for path in report["figures"]["written"]]
    assert written[0].startswith("reconstruction_identity") and written[0].endswith("_slot0.png")
    assert written[1:] == ["reconstruction_astronaut.png", "steps_vs_chamfer.png"]
    assert all((tmp_path / "figures" / name).stat().st_size > 1000 for name in written)
