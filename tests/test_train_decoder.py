"""Decoder + factor map training on fresh ICT heads with hair (CPU smoke runs with tiny MLPs and the real latent
layout), resume (also from a slimmed checkpoint), export, fitting from the mapped latents."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from diffnphr.data.ict import load_ict
from diffnphr.data.samples import SamplingConfig
from diffnphr.data.sampling import HeadSampler
from diffnphr.heads.latents import LATENT_STATISTICS_FILE, load_head_latents, load_latent_statistics
from diffnphr.heads.split import HEADS_FILE, SPLIT_FILE, load_head_split, make_head_split
from diffnphr.nphm import MonoNPHM, MonoNPHMConfig
from diffnphr.nphm.factor_map import FactorMap, FactorMapConfig
from diffnphr.nphm.latents import PADDED
from diffnphr.train.checkpoints import OPTIMIZER_FILE, list_checkpoints, load_checkpoint, slim_checkpoint
from diffnphr.train.config import DecoderTrainingConfig
from diffnphr.train.decoder import export_decoder, factor_map_config, train_decoder, training_heads
from diffnphr.train.fit import FitConfig, fit_heads, identity_heads
from diffnphr.train.losses import LossWeights, head_loss_terms, total_loss

TINY_MODEL = MonoNPHMConfig(
    hidden_dim_geo=16, n_layers_geo=2, hidden_dim_app=16, n_layers_app=2, hidden_dim_ex=16, n_layers_ex=2
)
TINY_SAMPLING = SamplingConfig(surface_points=128, near_points=64, uniform_points=16, correspondences=32)
TINY = DecoderTrainingConfig(
    train_identities=3,
    heldout_identities=2,
    expressions_per_identity=2,
    model=TINY_MODEL,
    sampling=TINY_SAMPLING,
    factor_map=FactorMapConfig(hidden_dim=32, expression_hidden_dim=16, layers=2),
    heads_per_step=2,
    far_points=8,
    total_steps=12,
    lr_network=2e-3,
    lr_halving_fractions=(),
    checkpoint_every=6,
    log_every=3,
)


@pytest.fixture(scope="module")
def ict():
    return load_ict()


@pytest.fixture(scope="module")
def sampler(ict):
    return HeadSampler(ict, "cpu", TINY_SAMPLING)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 12-step run with checkpoints at steps 6 and 12, and a 0-step run of the same config (the initial state)."""
    root = tmp_path_factory.mktemp("decoder_runs")
    summary = train_decoder(root / "run", time_budget_s=600, config=TINY, device="cpu")
    train_decoder(root / "initial", time_budget_s=600, config=TINY, device="cpu", stop_after_steps=0)
    return root, summary


def _fixed_loss(sampler, model, z_geo, z_exp, z_app, heads) -> float:
    """Total loss (default weights, no schedule) of heads (`HeadFactors`) on a fixed batch of samples."""
    batch = sampler.sample(heads, 12345)
    neutral = (heads.expression == 0).all(-1)
    terms = head_loss_terms(model, z_geo, z_exp, z_app, batch, neutral, TINY_SAMPLING.uniform_points)
    return float(total_loss(terms, LossWeights()).detach())


def _state(path, ict):
    checkpoint = load_checkpoint(path)
    model = MonoNPHM(TINY_MODEL, checkpoint.tensors["anchor_template"])
    model.load_state_dict({k[6:]: v for k, v in checkpoint.tensors.items() if k.startswith("model.")})
    factor_map = FactorMap(factor_map_config(ict, TINY))
    factor_map.load_state_dict({k[11:]: v for k, v in checkpoint.tensors.items() if k.startswith("factor_map.")})
    return checkpoint, model, factor_map


def test_split_is_written_fixed_by_its_seed_and_disjoint(run, ict):
    root, _ = run
    assert (root / "run" / SPLIT_FILE).is_file() and (root / "run" / HEADS_FILE).is_file()
    split = load_head_split(root / "run")
    train, heldout = set(split.train_identities.tolist()), set(split.heldout_identities.tolist())
    assert len(train) == 3 and len(heldout) == 2 and not train & heldout
    assert train | heldout == set(range(5))
    assert torch.all(split.expression_weights[:, 0] == 0)  # slot 0 is the neutral face
    assert split.expression_weights[:, 1].abs().sum() > 0
    again = make_head_split(ict, seed=0, train_identities=3, heldout_identities=2, expressions_per_identity=2)
    assert again.fingerprint() == split.fingerprint()
    other = make_head_split(ict, seed=1, train_identities=3, heldout_identities=2, expressions_per_identity=2)
    assert other.fingerprint() != split.fingerprint()
    listed = json.loads((root / "run" / SPLIT_FILE).read_text())
    assert sorted(listed["train_identities"]) == sorted(train)


def test_training_lowers_the_loss_of_new_heads(run, sampler, ict):
    """Trained on fresh heads, decoder and map do better on heads neither has seen."""
    root, summary = run
    assert summary["step"] == 12 and summary["done"]
    initial, initial_model, initial_map = _state(list_checkpoints(root / "initial")[-1], ict)
    trained, trained_model, trained_map = _state(list_checkpoints(root / "run")[-1], ict)
    assert initial.step == 0 and trained.step == 12
    unseen = training_heads(ict, 4, seed=424242)
    losses = []
    for model, factor_map in ((initial_model, initial_map), (trained_model, trained_map)):
        losses.append(_fixed_loss(sampler, model, *factor_map.latents(unseen), unseen))
    assert losses[1] < 0.8 * losses[0]
    log = [json.loads(line) for line in (root / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [3, 6, 9, 12]
    assert all(r["steps_per_s"] > 0 for r in log if "loss" in r)


def test_every_step_draws_new_heads_one_in_eight_neutral(ict):
    first, second = training_heads(ict, 16, seed=1), training_heads(ict, 16, seed=2)
    assert not torch.equal(first.identity, second.identity)
    assert torch.equal(training_heads(ict, 16, seed=1).identity, first.identity)
    neutral = (first.expression == 0).all(dim=1)
    assert neutral[::8].all() and neutral.float().mean() < 0.5


def test_resume_continues_at_the_same_step_with_identical_state(run, tmp_path):
    root, _ = run
    checkpoints = list_checkpoints(root / "run")
    assert [load_checkpoint(p).step for p in checkpoints] == [6, 12]
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in (SPLIT_FILE, HEADS_FILE):
        shutil.copy(root / "run" / name, resumed / name)
    shutil.copytree(checkpoints[0], resumed / checkpoints[0].name)

    summary = train_decoder(resumed, time_budget_s=600, device="cpu")
    assert summary["step"] == 12 and summary["steps_this_call"] == 6
    start = json.loads((resumed / "train_log.jsonl").read_text().splitlines()[0])
    assert start["event"] == "start" and start["step"] == 6 and start["optimizer_restored"]
    # The same state as the uninterrupted run, up to float rounding (BLAS results can differ in the
    # last bit with memory alignment); the sampling RNG state is exactly the same.
    expected, got = load_checkpoint(checkpoints[1]), load_checkpoint(list_checkpoints(resumed)[-1])
    assert got.step == expected.step == 12
    assert expected.tensors.keys() == got.tensors.keys()
    assert torch.equal(expected.tensors["rng.batches"], got.tensors["rng.batches"])
    for name, tensor in expected.tensors.items():
        torch.testing.assert_close(got.tensors[name], tensor, rtol=1e-5, atol=1e-8, msg=name)
    for key in ("network",):
        assert expected.optimizers[key]["state"].keys() == got.optimizers[key]["state"].keys()
        for slot, state in expected.optimizers[key]["state"].items():
            for name, value in state.items():
                torch.testing.assert_close(
                    torch.as_tensor(got.optimizers[key]["state"][slot][name]),
                    torch.as_tensor(value),
                    rtol=1e-5,
                    atol=1e-8,
                )


def test_resume_from_a_slimmed_checkpoint_warms_up_again(run, tmp_path):
    """A run slimmed to carry it to a GPU (newest checkpoint only, float16, no optimiser) resumes."""
    root, _ = run
    travelled = tmp_path / "travelled"
    shutil.copytree(root / "run", travelled)
    newest = slim_checkpoint(travelled)
    assert list_checkpoints(travelled) == [newest] and not (newest / OPTIMIZER_FILE).exists()
    slimmed = load_checkpoint(newest).tensors
    assert (
        slimmed["model.id_decoder.anchor_template"].dtype == torch.float16
        if "model.id_decoder.anchor_template" in (slimmed)
        else all(t.dtype == torch.float16 for k, t in slimmed.items() if k.startswith("model."))
    )
    assert slimmed["rng.batches"].dtype == torch.uint8
    summary = train_decoder(travelled, time_budget_s=600, total_steps=13, device="cpu")
    assert summary["step"] == 13
    log = [json.loads(line) for line in (travelled / "train_log.jsonl").read_text().splitlines()]
    restart = [r for r in log if r.get("event") == "start"][-1]
    assert restart["step"] == 12 and not restart["optimizer_restored"]
    assert log[-1]["lr_factor"] < 1.0


def test_a_run_refuses_a_different_config(run):
    root, _ = run
    with pytest.raises(ValueError, match="different settings"):
        train_decoder(root / "run", config=DecoderTrainingConfig(), device="cpu")


def test_export_and_fitting_held_out_heads(run, sampler, ict, tmp_path):
    root, _ = run
    exported = export_decoder(root / "run", tmp_path / "weights")
    decoder = MonoNPHM.from_pretrained(exported["decoder"])
    assert decoder.config == TINY_MODEL
    factor_map = FactorMap.from_pretrained(exported["factor_map"])
    codebooks = load_head_latents(exported["latents"], "codebooks")
    split = load_head_split(exported["latents"])
    assert torch.equal(codebooks.identities, split.train_identities)
    assert codebooks.flat().shape == (3 * 2, PADDED)
    heads = identity_heads(split, split.train_identities[:1], 2)
    z_geo, z_exp, _ = factor_map.latents(heads)
    torch.testing.assert_close(codebooks.z_geo[0], z_geo[0].detach(), atol=1e-3, rtol=0)  # the map's latents
    torch.testing.assert_close(codebooks.z_exp[0], z_exp.detach(), atol=1e-3, rtol=0)
    statistics = load_latent_statistics(exported["latents"] / LATENT_STATISTICS_FILE)
    assert statistics.mean.shape == (PADDED,) and torch.all(statistics.std > 0)
    assert all(f.stat().st_size <= 16 * 2**20 for f in tmp_path.rglob("*") if f.is_file())

    config = FitConfig(
        steps=10, sampling=TINY_SAMPLING, lr_shape_codes=1e-2, lr_expression_codes=2e-2, precision="fp32"
    )

    def fit(folder):
        return fit_heads(
            exported["decoder"],
            exported["latents"],
            folder,
            count=1,
            expressions=1,
            config=config,
            factor_map_dir=exported["factor_map"],
            device="cpu",
        )

    summary = fit(tmp_path / "fitted")
    assert summary["fitted"] == 1 and summary["remaining"] == 0
    fitted = load_head_latents(tmp_path / "fitted", "fitted_heldout")
    identity = int(split.heldout_identities[0])
    assert fitted.identities.tolist() == [identity] and fitted.z_exp.shape == (1, 1, 100)
    decoder.requires_grad_(False)
    head = identity_heads(split, torch.tensor([identity]), 1)
    mapped = _fixed_loss(sampler, decoder, *(z.detach() for z in factor_map.latents(head)), head)
    fit_loss = _fixed_loss(sampler, decoder, fitted.z_geo, fitted.z_exp[:, 0], fitted.z_app, head)
    assert fit_loss < mapped  # fitting starts from the map and improves on it
    assert fit(tmp_path / "fitted")["last_group_loss"] is None  # nothing left to fit
