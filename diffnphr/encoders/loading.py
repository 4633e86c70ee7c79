"""Which encoder a folder holds, and building one for training: the one place that knows both kinds.

An encoder folder describes itself: a ResNet folder's config.json says `"encoder_type": "resnet"`
(`ResNetFaceEncoder`); a folder without `encoder_type` is a `transformers`
`CLIPVisionModelWithProjection` folder (`FaceEncoder`: the FaRL ViT, ours or a converted official
one, whose config.json says `"model_type": "clip_vision_model"`). `load_face_encoder` reads
either; both classes share one interface (`preprocess`, `forward`, `encode`, `freeze`,
`save_pretrained`, `device`, `image_size`, `cond_dim`).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

from diffnphr.encoders.farl import FaceEncoder, farl_vision_config
from diffnphr.encoders.resnet import RESNET_TYPE, ResNetEncoderConfig, ResNetFaceEncoder
from diffnphr.weights import CONFIG_NAME, WeightsNotFoundError, resolve_weights_dir

FARL_TYPE = "farl"
ENCODER_TYPES = (RESNET_TYPE, FARL_TYPE)
ImageEncoder = FaceEncoder | ResNetFaceEncoder
"""Either image encoder: face crops -> `z_cond`."""


def load_face_encoder(
    path_or_hub_id: str | os.PathLike, subfolder: str | None = None, device: str | torch.device = "cpu"
) -> ImageEncoder:
    """Load the encoder a folder (local or a Hub id) holds, whichever kind its config.json names (module docstring)."""
    directory = resolve_weights_dir(path_or_hub_id, subfolder)
    config_path = directory / CONFIG_NAME
    if not config_path.is_file():
        raise WeightsNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not an encoder weights folder.")
    try:
        stored = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON ({error}).") from error
    encoder_type = stored.get("encoder_type")
    if encoder_type is None:
        return FaceEncoder.from_pretrained(directory, device=device)
    if encoder_type == RESNET_TYPE:
        return ResNetFaceEncoder.from_pretrained(directory, device=device)
    raise ValueError(
        f"The encoder folder {directory} names encoder_type {encoder_type!r}; this diffnphr reads "
        f"{RESNET_TYPE!r} folders and CLIP vision folders (no encoder_type)."
    )


def build_face_encoder(encoder_type: str, overrides: dict[str, Any]) -> ImageEncoder:
    """A new, randomly initialised encoder for training: `ResNetEncoderConfig` or `farl_vision_config` fields
    from `overrides` over the kind's defaults."""
    if encoder_type == RESNET_TYPE:
        return ResNetFaceEncoder(ResNetEncoderConfig(**overrides))
    if encoder_type == FARL_TYPE:
        return FaceEncoder.from_config(farl_vision_config(**overrides))
    raise ValueError(f"encoder_type must be one of {', '.join(ENCODER_TYPES)}; got {encoder_type!r}.")
