"""FaRL encoder: the `.pth` converter against an independent OpenAI-CLIP forward, and preprocessing."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import CLIPImageProcessor, CLIPImageProcessorPil, CLIPVisionModelWithProjection

from diffnphr.encoders import CheckpointMismatchError, FaceEncoder, convert_farl_checkpoint, farl_vision_config

WIDTH, LAYERS, HEADS, PATCH, IMAGE, OUT = 256, 2, 4, 16, 224, 128
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def openai_visual_state(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random OpenAI-CLIP `VisualTransformer` state dict (names without `visual.`), non-trivial norms."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    def norm(prefix: str) -> dict[str, torch.Tensor]:
        return {f"{prefix}.weight": 1 + rand(WIDTH, scale=0.2), f"{prefix}.bias": rand(WIDTH, scale=0.2)}

    tokens = (IMAGE // PATCH) ** 2 + 1
    state = {
        "class_embedding": rand(WIDTH, scale=0.5),
        "positional_embedding": rand(tokens, WIDTH, scale=0.5),
        "proj": rand(WIDTH, OUT, scale=WIDTH**-0.5),
        "conv1.weight": rand(WIDTH, 3, PATCH, PATCH, scale=(3 * PATCH * PATCH) ** -0.5),
        **norm("ln_pre"),
        **norm("ln_post"),
    }
    for layer in range(LAYERS):
        block = f"transformer.resblocks.{layer}."
        state.update(
            {
                block + "attn.in_proj_weight": rand(3 * WIDTH, WIDTH, scale=WIDTH**-0.5),
                block + "attn.in_proj_bias": rand(3 * WIDTH, scale=0.1),
                block + "attn.out_proj.weight": rand(WIDTH, WIDTH, scale=WIDTH**-0.5),
                block + "attn.out_proj.bias": rand(WIDTH, scale=0.1),
                block + "mlp.c_fc.weight": rand(4 * WIDTH, WIDTH, scale=WIDTH**-0.5),
                block + "mlp.c_fc.bias": rand(4 * WIDTH, scale=0.1),
                block + "mlp.c_proj.weight": rand(WIDTH, 4 * WIDTH, scale=(4 * WIDTH) ** -0.5),
                block + "mlp.c_proj.bias": rand(WIDTH, scale=0.1),
                **norm(block + "ln_1"),
                **norm(block + "ln_2"),
            }
        )
    return state


def farl_checkpoint(visual: dict[str, torch.Tensor]) -> dict:
    """Wrap an image tower as the released FaRL `.pth` is: text tower and MIM leftovers beside it."""
    state = {f"visual.{key}": value for key, value in visual.items()}
    state.update(
        {
            "visual.mask_token": torch.zeros(1, 1, WIDTH),
            "visual.lm_transformer.resblocks.0.attn.in_proj_weight": torch.randn(3 * WIDTH, WIDTH),
            "visual.ln_lm.weight": torch.ones(WIDTH),
            "visual.lm_head.weight": torch.randn(64, WIDTH),
            "token_embedding.weight": torch.randn(100, 32),
            "positional_embedding": torch.randn(77, 32),
            "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32),
            "ln_final.weight": torch.ones(32),
            "text_projection": torch.randn(32, 32),
            "logit_scale": torch.tensor(4.6),
        }
    )
    return {"state_dict": state}


def reference_forward(visual: dict[str, torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """OpenAI CLIP's VisualTransformer written out in plain float64 PyTorch: the projected CLS token."""
    p = {key: value.double() for key, value in visual.items()}
    x = F.conv2d(images.double(), p["conv1.weight"], stride=PATCH)  # no bias
    x = x.flatten(2).transpose(1, 2)
    cls = p["class_embedding"].expand(x.shape[0], 1, WIDTH)
    x = torch.cat([cls, x], dim=1) + p["positional_embedding"]

    def layer_norm(t: torch.Tensor, prefix: str) -> torch.Tensor:
        return F.layer_norm(t, (WIDTH,), p[f"{prefix}.weight"], p[f"{prefix}.bias"], eps=1e-5)

    x = layer_norm(x, "ln_pre")
    head = WIDTH // HEADS
    for layer in range(LAYERS):
        b = f"transformer.resblocks.{layer}."
        h = layer_norm(x, b + "ln_1")
        q, k, v = (h @ p[b + "attn.in_proj_weight"].T + p[b + "attn.in_proj_bias"]).chunk(3, dim=-1)
        q, k, v = (t.unflatten(-1, (HEADS, head)).transpose(1, 2) for t in (q, k, v))
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(head), dim=-1)
        attended = (weights @ v).transpose(1, 2).flatten(2)
        x = x + attended @ p[b + "attn.out_proj.weight"].T + p[b + "attn.out_proj.bias"]
        h = layer_norm(x, b + "ln_2") @ p[b + "mlp.c_fc.weight"].T + p[b + "mlp.c_fc.bias"]
        h = h * torch.sigmoid(1.702 * h)  # QuickGELU
        x = x + h @ p[b + "mlp.c_proj.weight"].T + p[b + "mlp.c_proj.bias"]
    return layer_norm(x[:, 0], "ln_post") @ p["proj"]


def face_like_image(height: int, width: int, seed: int) -> Image.Image:
    """A smooth colour field with edges and mild noise, like a photo crop (not white noise)."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)).resize((width, height), Image.BICUBIC)
    pixels = np.asarray(coarse).astype(np.float32)
    pixels[height // 3 : height // 2, width // 4 : 3 * width // 4] = (200, 60, 40)
    pixels += rng.normal(0, 6, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, torch.Tensor], Path]:
    root = tmp_path_factory.mktemp("farl")
    visual = openai_visual_state()
    torch.save(farl_checkpoint(visual), root / "FaRL.pth")
    return visual, convert_farl_checkpoint(root / "FaRL.pth", root / "encoder")


def test_converted_encoder_matches_openai_clip_forward(converted):
    visual, folder = converted
    encoder = FaceEncoder.from_pretrained(folder)
    images = torch.randn(2, 3, IMAGE, IMAGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        z_cond = encoder(images)
    expected = reference_forward(visual, images)
    assert z_cond.shape == (2, OUT)
    assert expected.abs().max() > 0.5  # the comparison is not between near-zero vectors
    torch.testing.assert_close(z_cond.double(), expected, rtol=0, atol=1e-5)


def test_converted_folder_loads_with_plain_transformers(converted):
    visual, folder = converted
    model = CLIPVisionModelWithProjection.from_pretrained(folder)
    assert model.config.hidden_act == "quick_gelu"
    assert (model.config.patch_size, model.config.image_size) == (PATCH, IMAGE)
    assert model.config.num_attention_heads == HEADS
    torch.testing.assert_close(model.visual_projection.weight, visual["proj"].T)
    assert list(folder.glob("*.safetensors"))
    assert CLIPImageProcessor.from_pretrained(folder).crop_size == {"height": IMAGE, "width": IMAGE}


def test_checkpoint_missing_a_tensor_is_refused_with_its_name(tmp_path):
    visual = openai_visual_state()
    del visual["transformer.resblocks.1.ln_2.bias"]
    torch.save(farl_checkpoint(visual), tmp_path / "FaRL.pth")
    with pytest.raises(CheckpointMismatchError, match=r"missing 1 \(visual\.transformer\.resblocks\.1\.ln_2\.bias\)"):
        convert_farl_checkpoint(tmp_path / "FaRL.pth", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_checkpoint_with_misshaped_or_unknown_visual_tensor_is_refused(tmp_path):
    visual = openai_visual_state()
    visual["transformer.resblocks.0.mlp.c_proj.bias"] = torch.zeros(WIDTH + 1)
    visual["attnpool.weight"] = torch.zeros(3)
    torch.save(farl_checkpoint(visual), tmp_path / "FaRL.pth")
    with pytest.raises(CheckpointMismatchError) as caught:
        convert_farl_checkpoint(tmp_path / "FaRL.pth", tmp_path / "out")
    message = str(caught.value)
    assert "extra 1 (visual.attnpool.weight)" in message
    assert "visual.transformer.resblocks.0.mlp.c_proj.bias (257,) instead of (256,)" in message


def test_cli_exits_2_with_a_sentence_on_a_bad_file(tmp_path):
    bad = tmp_path / "FaRL.pth"
    bad.write_text("not a checkpoint")
    result = subprocess.run(
        [sys.executable, "-m", "diffnphr", "convert-farl", str(bad), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and "PyTorch checkpoint" in result.stderr


def test_pil_preprocess_equals_stock_clip_processor_and_plain_bicubic():
    # The PIL backend is the stock processor without torchvision, and what OpenAI CLIP's own preprocessing does.
    encoder = FaceEncoder.from_config(farl_vision_config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1))
    crops = [face_like_image(512, 512, seed) for seed in (0, 1)]
    pixel_values = encoder.preprocess(crops)
    assert pixel_values.shape == (2, 3, 224, 224)
    stock = CLIPImageProcessorPil()(images=crops, return_tensors="pt")["pixel_values"]
    assert torch.equal(pixel_values, stock)
    resized = np.asarray(crops[0].resize((224, 224), Image.BICUBIC), dtype=np.float32) / 255.0
    plain = (resized - np.array(OPENAI_CLIP_MEAN, dtype=np.float32)) / np.array(OPENAI_CLIP_STD, dtype=np.float32)
    np.testing.assert_allclose(pixel_values[0].permute(1, 2, 0).numpy(), plain, atol=1e-6)


@pytest.mark.parametrize("size", [(512, 512), (300, 400)])
def test_tensor_preprocess_is_close_to_pil_for_uint8_and_float_layouts(size):
    encoder = FaceEncoder.from_config(farl_vision_config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1))
    crops = [face_like_image(*size, seed) for seed in (2, 3)]
    reference = encoder.preprocess(crops)
    channels_last = torch.from_numpy(np.stack([np.asarray(crop) for crop in crops]))
    for batch in (channels_last, channels_last.permute(0, 3, 1, 2).float() / 255.0):
        pixel_values = encoder.preprocess(batch)
        assert pixel_values.shape == reference.shape
        assert (pixel_values - reference).abs().mean() < 2e-2


def test_preprocess_refuses_inputs_it_cannot_read():
    encoder = FaceEncoder.from_config(farl_vision_config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.preprocess(torch.full((1, 64, 64, 3), 255.0))
    with pytest.raises(ValueError, match="batch"):
        encoder.preprocess(torch.zeros(64, 64, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="PIL"):
        encoder.preprocess([])


def test_freeze_stops_gradients_and_encode_gives_one_vector_per_image():
    encoder = FaceEncoder.from_config(farl_vision_config(hidden_size=64, num_hidden_layers=1, num_attention_heads=1))
    assert encoder.freeze() is encoder
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    assert not encoder.training
    z_cond = encoder.encode(face_like_image(512, 512, 4))
    assert z_cond.shape == (1, 512) and not z_cond.requires_grad


def test_full_size_farl_config_has_vit_b16_parameter_count():
    with torch.device("meta"):
        model = CLIPVisionModelWithProjection(farl_vision_config())
    assert sum(parameter.numel() for parameter in model.parameters()) == 86_192_640
