"""Training on fresh heads: every render a new random head with its own hair, its exact latent from the factor
map; and a ResNet run on them that resumes and exports weights the pipeline's loader reads."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig
from diffnphr.diffusion import LatentDiffusion
from diffnphr.encoders import ResNetFaceEncoder, load_face_encoder
from diffnphr.nphm.factor_map import FactorMap
from diffnphr.nphm.latents import pack
from diffnphr.train.config import ReconstructionTrainingConfig
from diffnphr.train.reconstruction import export_reconstruction, train_reconstruction
from diffnphr.train.reconstruction_data import FreshHeadBatches, TrainingHeads

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
LATENTS, FACTOR_MAP = WEIGHTS / "decoder_latents", WEIGHTS / "factor_map"
TINY_RESNET = dict(depth=18, width=8, image_size=32, projection_dim=16)
TINY_DIFFUSION = dict(
    base_channels=8,
    channel_mults=[1, 2],
    attention_levels=[],
    attention_heads=2,
    norm_groups=4,
    time_embed_dim=16,
    cond_tokens=1,
    mean_head_hidden=16,
)


def tiny_resnet_config(**changes) -> ReconstructionTrainingConfig:
    """A tiny ResNet-18 run on fresh heads (the defaults' path)."""
    values = dict(
        encoder=TINY_RESNET,
        diffusion=TINY_DIFFUSION,
        factor_map=str(FACTOR_MAP),
        regression_hidden=32,
        batch_size=4,
        total_steps=50,
        warmup_steps=2,
        log_every=1,
        validate_every=3,
        validation_renders=2,
        checkpoint_every=100,
        bf16=False,
    )
    return ReconstructionTrainingConfig(**{**values, **changes})


@pytest.fixture(scope="module")
def fresh_batches() -> FreshHeadBatches:
    config = tiny_resnet_config()
    renderer = HeadRenderer(load_ict(), torch.device("cpu"), RenderConfig(image_size=32))
    heads = TrainingHeads.load(LATENTS, codebooks=False)
    return FreshHeadBatches(config, heads, FactorMap.from_pretrained(FACTOR_MAP), renderer, torch.device("cpu"))


def test_every_batch_is_new_heads_with_their_exact_latents_and_own_hair(fresh_batches, monkeypatch):
    seen_hair = []
    sample = fresh_batches.renderer.sample_scenes

    def recording(*args, **kwargs):
        seen_hair.append(kwargs["hair"])
        return sample(*args, **kwargs)

    monkeypatch.setattr(fresh_batches.renderer, "sample_scenes", recording)
    batch = fresh_batches.training(seed=11, count=3)
    heads = fresh_batches.draw(3, 11)
    assert batch.crops.shape == (3, 3, 32, 32) and batch.factors.shape == (3, fresh_batches.factor_dim)
    with torch.no_grad():
        assert torch.allclose(batch.latents, pack(*fresh_batches.factor_map.latents(heads)))
    assert torch.equal(seen_hair[0].kind, heads.hair.kind) and torch.equal(seen_hair[0].length, heads.hair.length)
    again, other = fresh_batches.training(seed=11, count=3), fresh_batches.training(seed=12, count=3)
    assert torch.equal(again.crops, batch.crops) and torch.equal(again.latents, batch.latents)
    assert not torch.allclose(other.latents, batch.latents)  # another seed, other heads
    assert not torch.equal(heads.identity[0], heads.identity[1])  # and no head twice in a batch
    # the read-out's factors: the factor map's inputs, standardised by a fixed sample of fresh heads
    many = fresh_batches.factors(fresh_batches.draw(512, 5))
    assert many.mean(0).abs().max() < 0.4 and (many.std(0) - 1).abs().median() < 0.1


def test_copies_per_head_repeat_each_heads_target_and_factors_over_its_relit_renders(fresh_batches):
    copied = FreshHeadBatches(
        replace(fresh_batches.config, copies_per_head=2),
        fresh_batches.heads,
        fresh_batches.factor_map,
        fresh_batches.renderer,
        torch.device("cpu"),
    )
    batch = copied.training(seed=11, count=4)
    heads = copied.draw(2, 11)  # two heads, two renders each
    with torch.no_grad():
        exact = pack(*copied.factor_map.latents(heads))
    assert batch.crops.shape == (4, 3, 32, 32)
    assert torch.allclose(batch.latents, exact.repeat_interleave(2, 0))
    assert torch.equal(batch.factors[0], batch.factors[1]) and not torch.equal(batch.factors[1], batch.factors[2])
    assert not torch.equal(batch.crops[0], batch.crops[1])
    with pytest.raises(ValueError, match="copies of 2"):
        copied.training(seed=11, count=3)


def test_fresh_heads_validate_on_held_out_identities_with_their_fitted_latents(fresh_batches):
    batch = fresh_batches.heldout(count=2)
    fitted = fresh_batches.heads.heldout_latents
    assert batch is not None and batch.crops.shape == (2, 3, 32, 32)
    assert all((fitted == row).all(1).any() for row in batch.latents)


def test_a_resnet_run_on_fresh_heads_resumes_and_exports_what_the_loader_reads(tmp_path):
    run = tmp_path / "run"
    first = train_reconstruction(run, LATENTS, 600, tiny_resnet_config(), device="cpu", stop_after_steps=3)
    assert first["step"] == 3 and first["draws"] == 3 and first["world_size"] == 1
    second = train_reconstruction(run, LATENTS, 600, device="cpu", stop_after_steps=1)
    assert second["step"] == 4 and second["draws"] == 4
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["heads"] for r in log if r.get("event") == "start"] == ["fresh", "fresh"]
    losses = [r for r in log if "diffusion" in r]
    assert all(r["diffusion_readout"] > 0 and r["regression"] > 0 for r in losses)
    assert any("val_heldout_diffusion_mean" in r for r in log)

    paths = export_reconstruction(run, tmp_path / "weights")
    encoder = load_face_encoder(paths["encoder"])
    assert isinstance(encoder, ResNetFaceEncoder) and encoder.config.width == 8
    # the exported encoder holds the run's averaged BatchNorm statistics, not the initial ones
    assert not torch.equal(encoder.model.bn1.running_var, torch.ones_like(encoder.model.bn1.running_var))
    diffusion = LatentDiffusion.from_pretrained(paths["diffusion"])
    z_cond = encoder(encoder.preprocess(torch.rand(2, 3, 32, 32)))
    assert diffusion.sample(z_cond, num_steps=2, seed=0).shape == (2, 4456)


def test_configs_from_before_the_resnet_still_mean_a_vit_on_the_split():
    stored = json.loads(
        (Path(__file__).resolve().parents[1] / "docs/training/reconstruction_v2_config.json").read_text()
    )
    old = ReconstructionTrainingConfig.from_dict(stored)
    assert (old.encoder_type, old.heads, old.encoder["hidden_size"]) == ("farl", "split", 192)
    new = ReconstructionTrainingConfig.from_dict({"batch_size": 8})
    assert (new.encoder_type, new.heads) == ("resnet", "fresh")
    with pytest.raises(ValueError, match="heads"):
        ReconstructionTrainingConfig(heads="codebooks")
    with pytest.raises(ValueError, match="copies_per_head"):
        ReconstructionTrainingConfig(heads="split", copies_per_head=2)
    # a run may change its copies per head when it resumes (the models do not depend on it)
    given = ReconstructionTrainingConfig.from_dict({**new.to_dict(), "copies_per_head": 4})
    resumed = ReconstructionTrainingConfig.for_run(given, new.to_dict(), None)
    assert resumed.copies_per_head == 4
