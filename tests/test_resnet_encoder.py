"""The ResNet encoder: torchvision's architecture, a self-describing folder either kind of encoder loads from,
and the same preprocessing contract as the FaRL encoder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from diffnphr.baselines.regression import LatentRegressor, RegressionHead, RegressionHeadConfig
from diffnphr.encoders import (
    FaceEncoder,
    ResNetEncoderConfig,
    ResNetFaceEncoder,
    build_face_encoder,
    farl_vision_config,
    load_face_encoder,
)
from diffnphr.encoders.resnet import RESNET_LAYOUTS, ResNet

TINY = dict(depth=18, width=8, image_size=32, projection_dim=16)


def crop_image(seed: int, size: tuple[int, int] = (512, 512)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray((rng.random((size[1], size[0], 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    ("depth", "parameters", "tensors"),
    # torchvision's ResNet-18/34/50 at num_classes=1000: parameter counts from its model documentation, and the
    # number of state-dict entries its resnet18/34/50 have (checked against torchvision 0.28's code)
    [(18, 11_689_512, 122), (34, 21_797_672, 218), (50, 25_557_032, 320)],
)
def test_the_trunk_is_torchvisions_resnet(depth, parameters, tensors):
    block, layers = RESNET_LAYOUTS[depth]
    with torch.device("meta"):
        model = ResNet(block, layers, num_classes=1000)
    assert sum(p.numel() for p in model.parameters()) == parameters
    state = model.state_dict()
    assert len(state) == tensors
    assert {"conv1.weight", "bn1.running_var", "layer2.0.downsample.1.running_mean", "fc.bias"} <= set(state)
    assert ("layer1.0.downsample.0.weight" in state) == (depth == 50)  # only a Bottleneck widens layer1
    if depth == 50:  # the stride sits on the 3×3 convolution ("v1.5"), as in torchvision
        assert model.layer2[0].conv2.stride == (2, 2) and model.layer2[0].conv1.stride == (1, 1)


def test_a_torchvision_state_dict_loads_with_or_without_its_classifier():
    torch.manual_seed(0)
    source = ResNet(*RESNET_LAYOUTS[18], num_classes=1000, width=8)
    encoder = ResNetFaceEncoder(ResNetEncoderConfig(**TINY))
    assert encoder.load_torchvision_state_dict(source.state_dict()) is False  # an ImageNet fc: the trunk only
    assert torch.equal(encoder.model.layer3[1].conv2.weight, source.layer3[1].conv2.weight)
    projection = ResNet(*RESNET_LAYOUTS[18], num_classes=16, width=8)
    assert encoder.load_torchvision_state_dict(projection.state_dict()) is True
    assert torch.equal(encoder.model.fc.weight, projection.fc.weight)
    with pytest.raises(ValueError, match="ResNet-18 of width 8"):
        encoder.load_torchvision_state_dict(ResNet(*RESNET_LAYOUTS[34], num_classes=16, width=8).state_dict())


def test_the_folder_says_what_it_holds_and_loads_as_saved(tmp_path):
    torch.manual_seed(0)
    encoder = ResNetFaceEncoder(ResNetEncoderConfig(**TINY, image_mean=(0.5, 0.5, 0.5), image_std=(0.25, 0.5, 1.0)))
    encoder.train()
    encoder(encoder.preprocess(torch.rand(4, 3, 32, 32)))  # move the BatchNorm statistics off their start
    encoder.eval()
    folder = encoder.save_pretrained(tmp_path / "encoder", dtype=torch.float16)
    stored = json.loads((folder / "config.json").read_text())
    assert stored["encoder_type"] == "resnet" and stored["image_size"] == 32 and stored["image_std"] == [0.25, 0.5, 1]
    loaded = load_face_encoder(folder)
    assert isinstance(loaded, ResNetFaceEncoder) and not loaded.training
    assert loaded.config == encoder.config
    parameters = dict(encoder.named_parameters())
    for name, value in loaded.state_dict().items():  # parameters in float16, statistics kept in float32
        reference = encoder.state_dict()[name]
        assert torch.equal(value, reference.half().float() if name in parameters else reference), name
    crops = torch.rand(2, 3, 32, 32)
    assert torch.allclose(loaded(loaded.preprocess(crops)), encoder(encoder.preprocess(crops)), atol=1e-2)
    with pytest.raises(ValueError, match="load_face_encoder"):
        FaceEncoder.from_pretrained(folder)


def test_either_kind_of_encoder_folder_loads_through_one_loader(tmp_path):
    farl = FaceEncoder.from_config(farl_vision_config(hidden_size=32, num_hidden_layers=1, num_attention_heads=1))
    farl.save_pretrained(tmp_path / "farl")
    assert isinstance(load_face_encoder(tmp_path / "farl"), FaceEncoder)
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"encoder_type": "vgg"}))
    with pytest.raises(ValueError, match="'vgg'"):
        load_face_encoder(tmp_path / "odd")
    with pytest.raises(ValueError, match="encoder_type must be one of"):
        build_face_encoder("vgg", {})
    assert isinstance(build_face_encoder("farl", {"hidden_size": 32, "num_attention_heads": 1}), FaceEncoder)


def test_a_regression_baseline_with_a_resnet_encoder_round_trips(tmp_path):
    torch.manual_seed(0)
    encoder = ResNetFaceEncoder(ResNetEncoderConfig(**TINY)).eval()
    head = RegressionHead(RegressionHeadConfig(cond_dim=16, hidden_dim=8))
    LatentRegressor(encoder, head).save_pretrained(tmp_path / "regression")
    loaded = LatentRegressor.from_pretrained(tmp_path / "regression")
    assert isinstance(loaded.encoder, ResNetFaceEncoder)
    crops = torch.rand(1, 3, 32, 32)
    assert torch.allclose(loaded.predict(loaded.encoder.preprocess(crops)), head(encoder(encoder.preprocess(crops))))


def test_pil_and_tensor_inputs_agree_and_bad_inputs_are_named():
    encoder = ResNetFaceEncoder(ResNetEncoderConfig(**{**TINY, "image_size": 64}))
    crops = [crop_image(0), crop_image(1, (300, 400))]
    pil = encoder.preprocess(crops)
    assert pil.shape == (2, 3, 64, 64)
    resized = np.asarray(crops[0].resize((64, 64), Image.BICUBIC), dtype=np.float32) / 255.0
    plain = (resized - np.array((0.485, 0.456, 0.406), np.float32)) / np.array((0.229, 0.224, 0.225), np.float32)
    np.testing.assert_allclose(pil[0].permute(1, 2, 0).numpy(), plain, atol=1e-5)
    as_tensor = torch.from_numpy(np.array(crops[0]))[None]
    assert (encoder.preprocess(as_tensor) - pil[:1]).abs().mean() < 2e-2
    assert encoder.encode(crops[0]).shape == (1, 16)
    with pytest.raises(ValueError, match="PIL"):
        encoder.preprocess([])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        encoder.preprocess(torch.full((1, 3, 64, 64), 2.0))
    with pytest.raises(ValueError, match="depth"):
        ResNetEncoderConfig(depth=20)


def test_freeze_stops_gradients_and_batchnorm_updates():
    encoder = ResNetFaceEncoder(ResNetEncoderConfig(**TINY)).freeze()
    before = encoder.model.bn1.running_mean.clone()
    encoder(encoder.preprocess(torch.rand(3, 3, 32, 32)))
    assert torch.equal(encoder.model.bn1.running_mean, before)
    assert not any(p.requires_grad for p in encoder.parameters()) and encoder.cond_dim == 16


def test_a_pipeline_folder_with_a_resnet_encoder_loads_and_reconstructs(tiny_weights_dir, face_photo_file, tmp_path):
    """The shipped default encoder is a ResNet: `from_pretrained` must read whichever kind the folder holds."""
    import shutil

    from diffnphr.pipeline import HeadReconstructionPipeline

    folder = tmp_path / "weights"
    shutil.copytree(tiny_weights_dir, folder)
    shutil.rmtree(folder / "encoder")
    torch.manual_seed(0)
    ResNetFaceEncoder(ResNetEncoderConfig(**{**TINY, "projection_dim": 512})).save_pretrained(folder / "encoder")
    pipeline = HeadReconstructionPipeline.from_pretrained(folder, device="cpu")
    assert isinstance(pipeline.encoder, ResNetFaceEncoder)
    result = pipeline(face_photo_file, seed=0)
    assert len(result.mesh.faces) > 0 and result.seed == 0
