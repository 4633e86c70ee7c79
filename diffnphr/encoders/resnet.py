"""ResNet image encoder: face crop -> `z_cond` ∈ R^512, a CNN trained from scratch on renders.

The trunk is torchvision's ResNet, written out here (torchvision's wheel for this torch needs
CUDA libraries the CPU wheel lacks, so it does not import beside it): the same `BasicBlock`
(ResNet-18/34) and `Bottleneck` (ResNet-50/101/152, stride on the 3×3 convolution, "ResNet
v1.5"), the same module names (`conv1`, `bn1`, `layer1`..`layer4`, `fc`, `downsample.0/1`) and
the same initialisation (Kaiming-normal fan-out convolutions, BatchNorm weight 1 and bias 0),
so a torchvision ResNet state dict loads into `ResNetFaceEncoder.model` as it is. Its final
`fc` is the projection to `z_cond` (torchvision's `num_classes` = `projection_dim`).

Input: `image_size` px (224 by default) normalised by `image_mean` / `image_std` (ImageNet's by
default), both stored in the folder's config.json, which also says `"encoder_type": "resnet"`
so `diffnphr.encoders.load_face_encoder` knows which class reads the folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from diffnphr.encoders.images import ImageBatch, normalise, pil_batch, pil_pixels, resize_centre_crop, unit_pixels
from diffnphr.weights import CONFIG_NAME, PretrainedModule, WeightsNotFoundError, resolve_weights_dir

RESNET_TYPE = "resnet"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    """torchvision's two 3×3 convolution block (ResNet-18/34)."""

    expansion: ClassVar[int] = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """conv-bn-relu-conv-bn plus the (downsampled) input, then relu."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    """torchvision's 1×1-3×3-1×1 block with the stride on the 3×3 convolution (ResNet-50/101/152)."""

    expansion: ClassVar[int] = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        """Three conv-bn stages (relu between) plus the (downsampled) input, then relu."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


RESNET_LAYOUTS: dict[int, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, int, int, int]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
"""Block type and blocks per stage of each depth, as torchvision builds them."""


class ResNet(nn.Module):
    """torchvision's `ResNet` (stem, four stages, global average pool, `fc`), `width` channels in the stem."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, int, int, int],
        num_classes: int,
        width: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self.inplanes = width
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, width, layers[0])
        self.layer2 = self._make_layer(block, 2 * width, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 4 * width, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 8 * width, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(8 * width * block.expansion, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017)
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.constant_(module.bn3.weight, 0)
                elif isinstance(module, BasicBlock):
                    nn.init.constant_(module.bn2.weight, 0)

    def _make_layer(
        self, block: type[BasicBlock] | type[Bottleneck], planes: int, blocks: int, stride: int = 1
    ) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """[B, 3, H, W] -> [B, num_classes]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


@dataclass
class ResNetEncoderConfig:
    """What a ResNet encoder folder's config.json holds (`encoder_type` names the class that reads it)."""

    encoder_type: str = RESNET_TYPE
    depth: int = 18
    width: int = 64  # stem / first-stage channels (torchvision: 64); stages double it
    image_size: int = 224
    projection_dim: int = 512
    image_mean: tuple[float, float, float] = IMAGENET_MEAN
    image_std: tuple[float, float, float] = IMAGENET_STD
    zero_init_residual: bool = False  # torchvision's default, as in the weights=None runs the issue measured

    def __post_init__(self) -> None:
        self.image_mean, self.image_std = tuple(self.image_mean), tuple(self.image_std)
        if self.encoder_type != RESNET_TYPE:
            raise ValueError(f"A ResNetEncoderConfig is for encoder_type {RESNET_TYPE!r}, got {self.encoder_type!r}.")
        if self.depth not in RESNET_LAYOUTS:
            raise ValueError(f"ResNet depth must be one of {sorted(RESNET_LAYOUTS)}, got {self.depth}.")
        if min(self.width, self.projection_dim) < 1 or self.image_size < 32:
            raise ValueError(
                f"ResNet width and projection_dim must be positive and image_size at least 32 px "
                f"(five stride-2 stages); got {self.width}, {self.projection_dim}, {self.image_size}."
            )
        if len(self.image_mean) != 3 or len(self.image_std) != 3 or min(self.image_std) <= 0:
            raise ValueError(f"image_mean and image_std need 3 values each, std positive; got {self.image_std}.")


class ResNetFaceEncoder(PretrainedModule):
    """Face crops -> `z_cond` [B, projection_dim]: a torchvision-layout ResNet whose `fc` is the projection."""

    config_class = ResNetEncoderConfig

    def __init__(self, config: ResNetEncoderConfig) -> None:
        super().__init__(config)
        block, layers = RESNET_LAYOUTS[config.depth]
        self.model = ResNet(block, layers, config.projection_dim, config.width, config.zero_init_residual)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        subfolder: str | None = None,
        device: str | torch.device = "cpu",
    ) -> ResNetFaceEncoder:
        """Load a folder written by `save_pretrained` (local or a Hub id); float32, eval mode."""
        directory = resolve_weights_dir(path_or_hub_id, subfolder)
        if not (directory / CONFIG_NAME).is_file():
            raise WeightsNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not an encoder weights folder.")
        return super().from_pretrained(directory, device=device)

    def load_torchvision_state_dict(self, state: dict[str, Tensor]) -> bool:
        """Load a torchvision ResNet state dict of this depth and width into the trunk; returns whether `fc` was
        taken too (only when its shape is this encoder's projection; an ImageNet classifier's is not)."""
        fc_fits = state.get("fc.weight") is not None and state["fc.weight"].shape == self.model.fc.weight.shape
        trunk = {key: value for key, value in state.items() if fc_fits or not key.startswith("fc.")}
        missing, unexpected = self.model.load_state_dict(trunk, strict=False)
        missing = [key for key in missing if fc_fits or not key.startswith("fc.")]
        if missing or unexpected:
            raise ValueError(
                f"The state dict is not a torchvision ResNet-{self.config.depth} of width {self.config.width}: "
                f"missing {missing[:4]}, unexpected {unexpected[:4]}."
            )
        return fc_fits

    def freeze(self) -> ResNetFaceEncoder:
        """Stop gradients into the encoder and switch it to eval mode (BatchNorm statistics frozen)."""
        self.requires_grad_(False)
        return self.eval()

    @property
    def device(self) -> torch.device:
        """The device the weights live on."""
        return self.model.fc.weight.device

    @property
    def image_size(self) -> int:
        """The side of the square input it reads."""
        return int(self.config.image_size)

    @property
    def cond_dim(self) -> int:
        """The width of `z_cond`."""
        return int(self.config.projection_dim)

    def preprocess(self, images: ImageBatch) -> Tensor:
        """Face crops -> normalised pixels [B, 3, S, S] (float32, S = `image_size`; `diffnphr.encoders.images`).

        PIL images come out on the encoder's device, tensor batches on their own.
        """
        if isinstance(images, Tensor):
            pixels = resize_centre_crop(unit_pixels(images), self.image_size)
        else:
            pixels = pil_pixels(pil_batch(images), self.image_size).to(self.device)
        return normalise(pixels, self.config.image_mean, self.config.image_std)

    def forward(self, pixel_values: Tensor) -> Tensor:
        """`z_cond` [B, projection_dim] of normalised pixels."""
        return self.model(pixel_values.to(self.model.fc.weight.dtype))

    def encode(self, images: ImageBatch) -> Tensor:
        """`preprocess` then `forward`: face crops -> `z_cond` on the encoder's device."""
        return self(self.preprocess(images).to(self.device))
