"""Training the encoder + diffusion model (+ regression baseline) on renders: resumable, exportable,
and with a frozen FaRL encoder by a config switch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from diffnphr.baselines.regression import LatentRegressor
from diffnphr.data.appearance import REGIONS
from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig
from diffnphr.diffusion import LatentDiffusion
from diffnphr.encoders import FaceEncoder, farl_vision_config
from diffnphr.heads.latents import load_head_latents, load_latent_statistics
from diffnphr.nphm.latents import unpack
from diffnphr.train.checkpoints import list_checkpoints
from diffnphr.train.config import ReconstructionTrainingConfig
from diffnphr.train.ema import ExponentialAverage
from diffnphr.train.reconstruction import export_reconstruction, train_reconstruction
from diffnphr.train.reconstruction_data import RenderBatches, TrainingHeads
from diffnphr.train.reconstruction_export import initialise_from
from diffnphr.train.reconstruction_models import ReconstructionModels

LATENTS = Path(__file__).resolve().parents[1] / "weights" / "decoder_latents"
TINY_ENCODER = dict(
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=64,
    image_size=32,
    patch_size=8,
    projection_dim=16,
)
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


def tiny_config(**changes) -> ReconstructionTrainingConfig:
    """A tiny ViT run on the split's heads (the path before fresh heads; `tests/test_train_fresh_heads.py` has the
    ResNet on fresh heads)."""
    values = dict(
        encoder_type="farl",
        heads="split",
        encoder=TINY_ENCODER,
        diffusion=TINY_DIFFUSION,
        regression_hidden=32,
        batch_size=2,
        total_steps=50,
        warmup_steps=2,
        log_every=1,
        validate_every=2,
        validation_renders=2,
        checkpoint_every=100,
        bf16=False,
    )
    return ReconstructionTrainingConfig(**{**values, **changes})


def test_training_resumes_and_exports_loadable_weights(tmp_path):
    run = tmp_path / "run"
    first = train_reconstruction(run, LATENTS, 600, tiny_config(), device="cpu", stop_after_steps=2)
    assert first["step"] == 2 and len(list_checkpoints(run)) == 1
    second = train_reconstruction(run, LATENTS, 600, device="cpu", stop_after_steps=1)
    assert second["step"] == 3
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    losses = [record for record in log if "diffusion" in record]
    assert all(torch.isfinite(torch.tensor(r["diffusion"])) and r["regression"] > 0 for r in losses)
    assert all(r["diffusion_readout"] > 0 and r["regression_readout"] > 0 and r["diffusion_mean"] > 0 for r in losses)
    assert any("val_heldout_diffusion" in record for record in log)

    paths = export_reconstruction(run, tmp_path / "weights")
    encoder = FaceEncoder.from_pretrained(paths["encoder"])
    diffusion = LatentDiffusion.from_pretrained(paths["diffusion"])
    regressor = LatentRegressor.from_pretrained(paths["regression"])
    statistics = load_latent_statistics(LATENTS / "latent_statistics.safetensors")
    assert torch.equal(diffusion.data_mean, statistics.mean) and torch.equal(diffusion.data_std, statistics.std)
    crops = torch.rand(2, 3, 32, 32)
    z_cond = encoder(encoder.preprocess(crops))
    assert diffusion.sample(z_cond, num_steps=2, seed=0).shape == (2, 4456)
    assert regressor.predict(regressor.encoder.preprocess(crops)).shape == (2, 4456)
    # float16 storage: the exported encoder is half the size of a float32 save of the same weights
    stored = sum(f.stat().st_size for f in Path(paths["encoder"]).glob("*.safetensors"))
    encoder.save_pretrained(tmp_path / "fp32")
    assert stored < 0.6 * sum(f.stat().st_size for f in (tmp_path / "fp32").glob("*.safetensors"))


def test_a_run_can_start_from_exported_weights_and_add_a_mean_head(tmp_path):
    """A run continues a shipped model (here one without a mean head): everything it had carries over."""
    plain = {key: value for key, value in TINY_DIFFUSION.items() if key != "mean_head_hidden"}
    train_reconstruction(tmp_path / "run", LATENTS, 600, tiny_config(diffusion=plain), device="cpu", stop_after_steps=1)
    paths = export_reconstruction(tmp_path / "run", tmp_path / "weights")
    heads = TrainingHeads.load(LATENTS)
    models = ReconstructionModels(tiny_config(init_from=str(tmp_path / "weights")), heads, torch.device("cpu"))
    initialise_from(models, tmp_path / "weights")
    exported = {
        "encoder": FaceEncoder.from_pretrained(paths["encoder"]),
        "diffusion": LatentDiffusion.from_pretrained(paths["diffusion"]),
        "regression": LatentRegressor.from_pretrained(paths["regression"]),
    }
    for name, module in (
        ("encoder", models.encoder),
        ("diffusion", models.diffusion),
        ("regression", models.regressor),
    ):
        reference = exported[name].state_dict()
        for key, value in module.state_dict().items():
            if not key.startswith("mean_head."):
                assert torch.equal(value, reference[key].float()), (name, key)
    assert models.diffusion.mean_head is not None

    other = ReconstructionModels(tiny_config(encoder={**TINY_ENCODER, "hidden_size": 16}), heads, torch.device("cpu"))
    with pytest.raises(RuntimeError, match="size mismatch"):
        initialise_from(other, tmp_path / "weights")
    with pytest.raises(FileNotFoundError, match="diffusion"):
        initialise_from(models, tmp_path)


def test_resuming_with_other_settings_is_refused(tmp_path):
    run = tmp_path / "run"
    train_reconstruction(run, LATENTS, 600, tiny_config(), device="cpu", stop_after_steps=1)
    with pytest.raises(ValueError, match="different settings"):
        train_reconstruction(run, LATENTS, 600, tiny_config(learning_rate=1e-3), device="cpu", stop_after_steps=1)


def test_a_frozen_farl_encoder_is_switched_on_by_config_and_stays_unchanged(tmp_path):
    torch.manual_seed(0)
    farl = FaceEncoder.from_config(farl_vision_config(**TINY_ENCODER))
    farl.save_pretrained(tmp_path / "farl")
    run = tmp_path / "run"
    config = tiny_config(frozen_encoder=str(tmp_path / "farl"))
    train_reconstruction(run, LATENTS, 600, config, device="cpu", stop_after_steps=2)
    paths = export_reconstruction(run, tmp_path / "weights")
    exported = FaceEncoder.from_pretrained(paths["encoder"])
    for key, value in farl.state_dict().items():
        assert torch.equal(exported.state_dict()[key], value.half().float()), key
    regressor = LatentRegressor.from_pretrained(paths["regression"])
    assert torch.equal(
        regressor.encoder.model.vision_model.embeddings.patch_embedding.weight,
        exported.model.vision_model.embeddings.patch_embedding.weight,
    )
    initial = LatentDiffusion(diffusion_config := LatentDiffusion.load_config(Path(paths["diffusion"])))
    trained = LatentDiffusion.from_pretrained(paths["diffusion"])
    assert diffusion_config.cond_dim == 16
    assert any(not torch.equal(a, b) for a, b in zip(initial.unet.parameters(), trained.unet.parameters()))


@pytest.mark.parametrize("mix_appearance", [True, False])
def test_training_targets_describe_the_rendered_head_and_its_colours(mix_appearance):
    heads = TrainingHeads.load(LATENTS)
    renderer = HeadRenderer(load_ict(), torch.device("cpu"), RenderConfig(image_size=32))
    batches = RenderBatches(tiny_config(mix_appearance=mix_appearance), heads, renderer, torch.device("cpu"))
    batch = batches.training(seed=3, count=6)
    assert batch.crops.shape == (6, 3, 32, 32) and batch.factors.shape == (6, batches.factor_dim)
    codebooks = load_head_latents(LATENTS, "codebooks")
    split = heads.split
    z_geo, z_exp, z_app = unpack(batch.latents)
    mixed = 0
    for k in range(6):
        # the shape and expression are one training head's; the colours (and z_app) are one training identity's
        shape_row = int((codebooks.z_geo.float() == z_geo[k]).all(1).nonzero())
        colour_row = int((codebooks.z_app.float() == z_app[k]).all(1).nonzero())
        assert any(torch.equal(z_exp[k], codebooks.z_exp[shape_row, slot].float()) for slot in range(8))
        colours_of = batches.factors(
            split.train_identities[[shape_row]], torch.tensor([0]), split.train_identities[[colour_row]]
        )[0]
        shape_of = batches.factors(
            split.train_identities[[shape_row]], torch.tensor([0]), split.train_identities[[shape_row]]
        )[0]
        identity_columns = slice(0, split.identity_coefficients.shape[1])
        assert torch.allclose(batch.factors[k, identity_columns], shape_of[identity_columns])
        colour_columns = slice(-3 * len(REGIONS), None)
        assert torch.allclose(batch.factors[k, colour_columns], colours_of[colour_columns])
        mixed += shape_row != colour_row
    assert (mixed > 0) == mix_appearance


def test_exponential_average_follows_the_weights_slowly():
    live = torch.nn.Linear(2, 2)
    ema = ExponentialAverage({"net": live}, decay=0.9)
    start = ema.shadow["net"].weight.clone()
    with torch.no_grad():
        live.weight.add_(1.0)
    for step in range(1000, 1003):
        ema.update(step)
    moved = ema.shadow["net"].weight - start
    assert torch.allclose(moved, torch.full_like(moved, 1 - 0.9**3), atol=1e-5)


def test_exponential_average_takes_the_live_batchnorm_statistics():
    """Averaged weights with the statistics of the initial ones would normalise a ResNet by the wrong scale."""
    live = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4))
    ema = ExponentialAverage({"net": live}, decay=0.999)
    live(torch.randn(8, 3, 4, 4) * 5 + 3)
    ema.update(1000)
    assert torch.equal(ema.shadow["net"][1].running_var, live[1].running_var)
    assert int(ema.shadow["net"][1].num_batches_tracked) == 1
