"""Image encoders: a face crop -> the 512-d condition `z_cond`.

`ResNetFaceEncoder` (a torchvision-layout ResNet, the default trained from scratch) and
`FaceEncoder` (FaRL's ViT via `transformers`; ours or a converted official FaRL); an encoder
folder says which it holds, and `load_face_encoder` reads either.
"""

from diffnphr.encoders.convert import CheckpointMismatchError, convert_farl_checkpoint
from diffnphr.encoders.farl import FaceEncoder, farl_vision_config
from diffnphr.encoders.loading import ENCODER_TYPES, ImageEncoder, build_face_encoder, load_face_encoder
from diffnphr.encoders.resnet import ResNetEncoderConfig, ResNetFaceEncoder

__all__ = [
    "ENCODER_TYPES",
    "CheckpointMismatchError",
    "FaceEncoder",
    "ImageEncoder",
    "ResNetEncoderConfig",
    "ResNetFaceEncoder",
    "build_face_encoder",
    "convert_farl_checkpoint",
    "farl_vision_config",
    "load_face_encoder",
]
