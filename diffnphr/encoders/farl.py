"""FaRL ViT-B/16 image encoder: face crop -> `z_cond` ∈ R^512, through `transformers`.

FaRL is OpenAI-CLIP's ViT-B/16 image tower retrained on faces, so it runs as a stock
`CLIPVisionModelWithProjection`; `z_cond` is its `image_embeds` (CLS token after the last
LayerNorm, times the projection, not L2-normalised). The same class, built from a smaller
`farl_vision_config(...)`, is the encoder this project trains from scratch.

Preprocessing is CLIP's: shortest edge to the encoder's input size (`image_size`: 224 for FaRL,
128 for the shipped encoder) with bicubic resampling, centre crop to it, then OpenAI CLIP
mean/std. The crops diffnphr feeds are 512×512, for which this is a plain resize. PIL images go through transformers' PIL-backed `CLIPImageProcessorPil`
(pinned, so results do not depend on whether torchvision is installed); tensor batches (GPU
renders in training) use torch's antialiased bicubic, which stays within about 1e-2 of the
PIL path in normalised units.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModelWithProjection

from diffnphr.encoders.images import ImageBatch, normalise, pil_batch, resize_centre_crop, unit_pixels
from diffnphr.weights import CONFIG_NAME, MAX_SHARD_SIZE, WeightsNotFoundError, resolve_weights_dir

FARL_VIT_B16 = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    num_channels=3,
    image_size=224,
    patch_size=16,
    projection_dim=512,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
)


def farl_vision_config(**overrides: object) -> CLIPVisionConfig:
    """The `CLIPVisionConfig` of FaRL ViT-B/16, with `overrides` (e.g. a smaller width or depth)."""
    return CLIPVisionConfig(**{**FARL_VIT_B16, **overrides})


class FaceEncoder(nn.Module):
    """Face crops -> `z_cond` [B, 512]: a `CLIPVisionModelWithProjection` plus its preprocessing."""

    def __init__(self, model: CLIPVisionModelWithProjection) -> None:
        super().__init__()
        self.model = model
        side = model.config.image_size
        self.processor = CLIPImageProcessorPil(size={"shortest_edge": side}, crop_size={"height": side, "width": side})

    @classmethod
    def from_config(cls, config: CLIPVisionConfig) -> FaceEncoder:
        """A randomly initialised encoder, for training from scratch."""
        return cls(CLIPVisionModelWithProjection(config))

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        subfolder: str | None = None,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> FaceEncoder:
        """Load a `CLIPVisionModelWithProjection` folder (ours, or a converted FaRL) from disk or the Hub.

        Folders holding a full `CLIPModel` also load; their text tower is ignored.
        """
        directory = resolve_weights_dir(path_or_hub_id, subfolder)
        if not (directory / CONFIG_NAME).is_file():
            raise WeightsNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not an encoder weights folder.")
        stored_type = json.loads((directory / CONFIG_NAME).read_text()).get("encoder_type")
        if stored_type is not None:
            raise ValueError(
                f"The encoder folder {directory} holds a {stored_type!r} encoder, not a CLIP vision model; "
                "load it with diffnphr.encoders.load_face_encoder."
            )
        model, info = CLIPVisionModelWithProjection.from_pretrained(directory, dtype=dtype, output_loading_info=True)
        if info["missing_keys"]:
            missing = sorted(info["missing_keys"])
            raise ValueError(
                f"The encoder folder {directory} is missing {len(missing)} weight tensors (first: {missing[0]}), "
                "so it is not a complete CLIPVisionModelWithProjection; re-save or re-convert it."
            )
        return cls(model).to(device).eval()

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json, safetensors shards (≤ 15 MB) and preprocessor_config.json to `directory`.

        The folder loads with plain `CLIPVisionModelWithProjection.from_pretrained` and
        `CLIPImageProcessor.from_pretrained`, so it is usable outside diffnphr as it is.
        `dtype` (e.g. `torch.float16`) stores the weights at that precision (half the
        download); `from_pretrained` loads them back as float32 by default.
        """
        directory = Path(directory)
        if dtype is not None and dtype != self.model.dtype:
            stored = CLIPVisionModelWithProjection(self.model.config).to(dtype)
            stored.load_state_dict(self.model.state_dict())
            stored.save_pretrained(directory, max_shard_size=MAX_SHARD_SIZE)
        else:
            self.model.save_pretrained(directory, max_shard_size=MAX_SHARD_SIZE)
        self.processor.save_pretrained(directory)
        return directory

    def freeze(self) -> FaceEncoder:
        """Stop gradients into the encoder and switch it to eval mode (the frozen-FaRL setting)."""
        self.requires_grad_(False)
        return self.eval()

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.model.device

    @property
    def image_size(self) -> int:
        """The side of the square input it reads (224 for FaRL ViT-B/16, 128 for the shipped encoder)."""
        return int(self.model.config.image_size)

    @property
    def cond_dim(self) -> int:
        """The width of `z_cond` (its projection)."""
        return int(self.model.config.projection_dim)

    def preprocess(self, images: ImageBatch) -> torch.Tensor:
        """Turn face crops into normalised `pixel_values` [B, 3, S, S] (float32; S = the config's `image_size`).

        `images` is a PIL image or a sequence of them (any size; diffnphr's crops are 512×512,
        output on the encoder's device), or a tensor batch [B, H, W, 3] or [B, 3, H, W], uint8
        in 0..255 or float in [0, 1] (output on the tensor's device).
        """
        if isinstance(images, torch.Tensor):
            pixels = resize_centre_crop(unit_pixels(images), self.image_size)
            return normalise(pixels, self.processor.image_mean, self.processor.image_std)
        pixel_values = self.processor(images=pil_batch(images), return_tensors="pt")["pixel_values"]
        return pixel_values.to(self.device)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`z_cond` [B, 512]: the projected CLS embedding (`image_embeds`), not normalised."""
        return self.model(pixel_values=pixel_values.to(self.model.dtype)).image_embeds

    def encode(self, images: ImageBatch) -> torch.Tensor:
        """`preprocess` then `forward`: face crops -> `z_cond` [B, 512] on the encoder's device."""
        return self(self.preprocess(images).to(self.device))
