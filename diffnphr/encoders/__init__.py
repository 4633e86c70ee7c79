"""Image encoders: a face crop -> the 512-d condition `z_cond` (FaRL architecture via `transformers`)."""

from diffnphr.encoders.convert import CheckpointMismatchError, convert_farl_checkpoint
from diffnphr.encoders.farl import FaceEncoder, farl_vision_config

__all__ = ["CheckpointMismatchError", "FaceEncoder", "convert_farl_checkpoint", "farl_vision_config"]
