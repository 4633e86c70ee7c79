"""The weight-folder format every block shares: shards, strict round trip, clear errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from torch import nn

from diffnphr.weights import PretrainedModule, WeightsNotFoundError, resolve_weights_dir


@dataclasses.dataclass
class TinyConfig:
    width: int = 8
    depth: int = 2


class TinyModel(PretrainedModule):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig) -> None:
        super().__init__(config)
        self.layers = nn.ModuleList(nn.Linear(config.width, config.width) for _ in range(config.depth))
        self.register_buffer("scale", torch.ones(config.width))


def test_round_trip_is_bit_exact_and_keeps_config(tmp_path):
    torch.manual_seed(0)
    model = TinyModel(TinyConfig(width=16, depth=3))
    model.scale.mul_(3.0)
    model.save_pretrained(tmp_path / "tiny")
    loaded = TinyModel.from_pretrained(tmp_path / "tiny")
    assert loaded.config == model.config
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_half_precision_storage_halves_the_files_and_loads_back_as_float32(tmp_path):
    torch.manual_seed(0)
    model = TinyModel(TinyConfig(width=256, depth=2))
    model.scale.mul_(1.0 / 3.0)
    model.save_pretrained(tmp_path / "full")
    model.save_pretrained(tmp_path / "half", dtype=torch.float16)
    size = lambda folder: sum(f.stat().st_size for f in folder.glob("*.safetensors"))  # noqa: E731
    assert size(tmp_path / "half") < 0.55 * size(tmp_path / "full")
    loaded = TinyModel.from_pretrained(tmp_path / "half")
    assert loaded.layers[0].weight.dtype == torch.float32
    assert torch.equal(loaded.layers[0].weight, model.layers[0].weight.half().float())
    assert torch.equal(loaded.scale, model.scale)  # buffers keep full precision


def test_large_state_is_split_into_shards_of_at_most_15_mib(tmp_path):
    model = TinyModel(TinyConfig(width=1024, depth=6))  # ~25 MB of fp32
    model.save_pretrained(tmp_path / "big")
    shards = sorted((tmp_path / "big").glob("*.safetensors"))
    assert len(shards) >= 2
    assert all(s.stat().st_size <= 15 * 1024 * 1024 for s in shards)
    assert (tmp_path / "big" / "model.safetensors.index.json").is_file()
    loaded = TinyModel.from_pretrained(tmp_path / "big")
    assert torch.equal(loaded.layers[5].weight, model.layers[5].weight)


def test_weights_of_another_shape_are_refused(tmp_path):
    TinyModel(TinyConfig(width=8)).save_pretrained(tmp_path / "w")
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    config["width"] = 4
    (tmp_path / "w" / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="size mismatch"):
        TinyModel.from_pretrained(tmp_path / "w")


def test_missing_local_folder_says_what_to_pass(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="Pass an existing folder"):
        resolve_weights_dir(tmp_path / "nope" / "weights")


def test_unreachable_hub_id_fails_fast_with_a_sentence(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsNotFoundError, match="download the weights elsewhere"):
        resolve_weights_dir("someone/diffnphr-weights-that-do-not-exist")
