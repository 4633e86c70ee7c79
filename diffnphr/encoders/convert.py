"""Official FaRL `.pth` -> a `transformers` `CLIPVisionModelWithProjection` folder.

The released FaRL files are `{"state_dict": ...}` in OpenAI-CLIP names: the image tower under
`visual.`, plus the text tower and, possibly, masked-image-modelling leftovers. Only the image
tower is kept, every one of its tensors must be present with the right shape (no silent
fallback to random weights), and the result is saved as a folder that plain
`CLIPVisionModelWithProjection.from_pretrained` reads.
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import torch
from transformers import CLIPVisionConfig

from diffnphr.encoders.farl import FaceEncoder, farl_vision_config

VISUAL_PREFIX = "visual."
MIM_LEFTOVERS = ("mask_token", "lm_transformer.", "ln_lm.", "lm_head.")
HEAD_WIDTH = 64  # OpenAI CLIP and FaRL build their image towers with width // 64 heads.
ARCHITECTURE_KEYS = ("conv1.weight", "positional_embedding", "proj")
_BLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


class CheckpointMismatchError(ValueError):
    """Raised when a checkpoint's image tower is not a complete OpenAI-CLIP ViT."""


def convert_farl_checkpoint(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert a FaRL (or OpenAI-CLIP-layout) `.pth` into an encoder folder at `out_dir`; return it.

    The architecture (width, depth, patch, image size, projection) is read from the tensor
    shapes, so any ViT of that layout converts, not only ViT-B/16.
    """
    path = Path(checkpoint)
    visual = _load_visual_state(path)
    config = _infer_config(visual, path)
    _check_keys(visual, _expected_shapes(config), path)
    encoder = FaceEncoder.from_config(config)
    encoder.model.load_state_dict(_to_transformers_names(visual, config.num_hidden_layers), strict=True)
    return encoder.save_pretrained(out_dir)


def _load_visual_state(path: Path) -> dict[str, torch.Tensor]:
    """The `visual.` tensors of the checkpoint, prefix stripped, MIM leftovers dropped."""
    if not path.is_file():
        raise FileNotFoundError(f"No FaRL checkpoint at {path}.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails on garbage with many types (KeyError, RuntimeError, ...)
        detail = str(error).splitlines()[:1]
        reason = ": ".join([type(error).__name__, *detail])
        raise ValueError(f"{path} could not be read as a tensors-only PyTorch checkpoint ({reason}).") from error
    state = loaded.get("state_dict", loaded) if isinstance(loaded, dict) else None
    if not isinstance(state, dict):
        raise CheckpointMismatchError(f"{path} does not hold a state dict of tensors.")
    visual = {
        key[len(VISUAL_PREFIX) :]: value
        for key, value in state.items()
        if isinstance(key, str)
        and isinstance(value, torch.Tensor)
        and key.startswith(VISUAL_PREFIX)
        and not key[len(VISUAL_PREFIX) :].startswith(MIM_LEFTOVERS)
    }
    if not visual:
        raise CheckpointMismatchError(
            f"{path} holds no 'visual.' tensors, so it is not a FaRL or OpenAI-CLIP checkpoint."
        )
    return visual


def _infer_config(visual: dict[str, torch.Tensor], path: Path) -> CLIPVisionConfig:
    """The `CLIPVisionConfig` that the image tower's tensor shapes describe."""
    missing = [VISUAL_PREFIX + key for key in ARCHITECTURE_KEYS if key not in visual]
    if missing:
        raise CheckpointMismatchError(f"{path} lacks {', '.join(missing)}, needed to read the image tower's size.")
    conv, positions, proj = (visual[key] for key in ARCHITECTURE_KEYS)
    square_conv = conv.ndim == 4 and conv.shape[1] == 3 and conv.shape[2] == conv.shape[3]
    if not square_conv or positions.ndim != 2 or positions.shape[0] < 2 or proj.ndim != 2:
        raise CheckpointMismatchError(
            f"{path} has mis-shaped architecture tensors: conv1.weight {tuple(conv.shape)}, "
            f"positional_embedding {tuple(positions.shape)}, proj {tuple(proj.shape)}."
        )
    width, patch = conv.shape[0], conv.shape[2]
    grid = math.isqrt(positions.shape[0] - 1)
    if not width or width % HEAD_WIDTH or grid * grid != positions.shape[0] - 1:
        raise CheckpointMismatchError(
            f"{path} has an image tower of width {width} with {positions.shape[0]} positions; "
            f"expected a width divisible by {HEAD_WIDTH} and a square patch grid plus one class token."
        )
    layers = 1 + max((int(m.group(1)) for key in visual if (m := _BLOCK.match(key))), default=-1)
    if layers == 0:
        raise CheckpointMismatchError(
            f"{path} has no visual.transformer.resblocks.* tensors, so its image tower is empty."
        )
    fc = visual.get("transformer.resblocks.0.mlp.c_fc.weight")
    return farl_vision_config(
        hidden_size=width,
        intermediate_size=fc.shape[0] if fc is not None and fc.ndim == 2 else 4 * width,
        num_hidden_layers=layers,
        num_attention_heads=width // HEAD_WIDTH,
        image_size=grid * patch,
        patch_size=patch,
        projection_dim=proj.shape[1],
    )


def _expected_shapes(config: CLIPVisionConfig) -> dict[str, tuple[int, ...]]:
    """Every OpenAI-CLIP image-tower tensor name (without `visual.`) and its shape for `config`."""
    width, hidden = config.hidden_size, config.intermediate_size
    tokens = (config.image_size // config.patch_size) ** 2 + 1
    shapes: dict[str, tuple[int, ...]] = {
        "conv1.weight": (width, 3, config.patch_size, config.patch_size),
        "class_embedding": (width,),
        "positional_embedding": (tokens, width),
        "ln_pre.weight": (width,),
        "ln_pre.bias": (width,),
    }
    for layer in range(config.num_hidden_layers):
        block = f"transformer.resblocks.{layer}."
        shapes.update(
            {
                block + "attn.in_proj_weight": (3 * width, width),
                block + "attn.in_proj_bias": (3 * width,),
                block + "attn.out_proj.weight": (width, width),
                block + "attn.out_proj.bias": (width,),
                block + "ln_1.weight": (width,),
                block + "ln_1.bias": (width,),
                block + "mlp.c_fc.weight": (hidden, width),
                block + "mlp.c_fc.bias": (hidden,),
                block + "mlp.c_proj.weight": (width, hidden),
                block + "mlp.c_proj.bias": (width,),
                block + "ln_2.weight": (width,),
                block + "ln_2.bias": (width,),
            }
        )
    shapes.update({"ln_post.weight": (width,), "ln_post.bias": (width,), "proj": (width, config.projection_dim)})
    return shapes


def _check_keys(visual: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]], path: Path) -> None:
    """Refuse, in one sentence, an image tower with missing, extra or mis-shaped tensors."""
    missing = sorted(VISUAL_PREFIX + key for key in set(expected) - set(visual))
    extra = sorted(VISUAL_PREFIX + key for key in set(visual) - set(expected))
    misshaped = sorted(
        f"{VISUAL_PREFIX}{key} {tuple(visual[key].shape)} instead of {expected[key]}"
        for key in set(expected) & set(visual)
        if tuple(visual[key].shape) != expected[key]
    )
    problems = [
        f"{label} {_listing(keys)}"
        for label, keys in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped))
        if keys
    ]
    if problems:
        raise CheckpointMismatchError(
            f"{path} is not a complete FaRL/OpenAI-CLIP image tower ({len(expected)} tensors expected): "
            + "; ".join(problems)
            + "."
        )


def _listing(items: list[str], shown: int = 6) -> str:
    """`n (a, b, c, ...)`: a count and the first few items, to keep error sentences short."""
    more = ", ..." if len(items) > shown else ""
    return f"{len(items)} ({', '.join(items[:shown])}{more})"


def _to_transformers_names(visual: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The image tower renamed (and split/transposed) to `CLIPVisionModelWithProjection` keys, in fp32."""
    out = {
        "vision_model.embeddings.patch_embedding.weight": visual["conv1.weight"],
        "vision_model.embeddings.class_embedding": visual["class_embedding"],
        "vision_model.embeddings.position_embedding.weight": visual["positional_embedding"],
        "vision_model.pre_layrnorm.weight": visual["ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": visual["ln_pre.bias"],
        "vision_model.post_layernorm.weight": visual["ln_post.weight"],
        "vision_model.post_layernorm.bias": visual["ln_post.bias"],
        "visual_projection.weight": visual["proj"].t(),
    }
    renames = {
        "attn.out_proj": "self_attn.out_proj",
        "ln_1": "layer_norm1",
        "ln_2": "layer_norm2",
        "mlp.c_fc": "mlp.fc1",
        "mlp.c_proj": "mlp.fc2",
    }
    for layer in range(layers):
        source, target = f"transformer.resblocks.{layer}.", f"vision_model.encoder.layers.{layer}."
        for kind in ("weight", "bias"):
            packed = visual[f"{source}attn.in_proj_{kind}"]
            for name, part in zip(("q_proj", "k_proj", "v_proj"), packed.chunk(3, dim=0)):
                out[f"{target}self_attn.{name}.{kind}"] = part
            for old, new in renames.items():
                out[f"{target}{new}.{kind}"] = visual[f"{source}{old}.{kind}"]
    return {key: value.float().contiguous() for key, value in out.items()}
