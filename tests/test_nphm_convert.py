"""Official MonoNPHM checkpoint -> diffnphr folder: bit-exact tensors, and refusal of checkpoints that do not match."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from diffnphr.nphm import MonoNPHM, MonoNPHMConfig
from diffnphr.nphm.convert import CheckpointMismatchError, convert_official_checkpoint

REPO = Path(__file__).resolve().parents[1]
# a MonoNPHM training config (configs.yaml layout) with narrow MLPs, so fake checkpoints stay small
TINY_YAML = {
    "decoder": {
        "decoder_nloc": 65,
        "ex": {"hidden_dim": 32, "lat_dim_ex": 100, "lat_dim_id": 16, "mode": "compress", "nhyper": 2, "nlayers": 6},
        "id": {
            "gnn": {"hidden_dim_app": 16, "hidden_dim_geo": 24, "nlayers_app": 4, "nlayers_geo": 3},
            "lat_dim_glob": 64,
            "lat_dim_glob_app": 64,
            "lat_dim_loc_app": 32,
            "lat_dim_loc_geo": 32,
            "nloc": 65,
            "nneigh": 12,
            "nsymm_pairs": 30,
            "blend_std": 3.75,
        },
    },
    "training": {"batch_size": 16},
}
TINY = MonoNPHMConfig(hidden_dim_ex=32, hidden_dim_app=16, hidden_dim_geo=24, n_layers_geo=3)


def fake_official_files(tmp_path: Path, config: MonoNPHMConfig, edit=None) -> tuple[Path, Path, MonoNPHM]:
    """A checkpoint laid out as MonoNPHM's training writes it, from a random model, and a float64 anchor file."""
    torch.manual_seed(0)
    anchors = np.random.default_rng(0).uniform(-0.4, 0.4, size=(65, 3))
    model = MonoNPHM(config, anchors)
    content = {"id_decoder": model.id_decoder.state_dict(), "ex_decoder": model.ex_decoder.state_dict(), "epoch": 3}
    if edit is not None:
        edit(content)
    checkpoint, anchor_file = tmp_path / "checkpoint_epoch_3.tar", tmp_path / "anchors_65.npy"
    torch.save(content, checkpoint)
    np.save(anchor_file, anchors)
    return checkpoint, anchor_file, model


def tiny_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "configs.yaml"
    path.write_text(yaml.safe_dump(TINY_YAML))
    return path


def test_official_checkpoint_converts_with_every_tensor_unchanged(tmp_path):
    checkpoint, anchor_file, model = fake_official_files(tmp_path, MonoNPHMConfig())
    out = convert_official_checkpoint(checkpoint, anchor_file, tmp_path / "converted")
    loaded = MonoNPHM.from_pretrained(out)
    assert loaded.config == MonoNPHMConfig()
    original, converted = model.state_dict(), loaded.state_dict()
    assert converted.keys() == original.keys()
    assert all(torch.equal(converted[k], v) for k, v in original.items())
    expected_anchors = torch.from_numpy(np.load(anchor_file)).float()
    assert torch.equal(loaded.id_decoder.anchor_template, expected_anchors)


def test_sizes_come_from_the_official_configs_yaml(tmp_path):
    checkpoint, anchor_file, _ = fake_official_files(tmp_path, TINY)
    out = convert_official_checkpoint(checkpoint, anchor_file, tmp_path / "out", config_yaml=tiny_yaml(tmp_path))
    assert MonoNPHM.load_config(out) == TINY
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):  # same checkpoint, default (official) sizes
        convert_official_checkpoint(checkpoint, anchor_file, tmp_path / "out2")


def drop(name):
    return lambda content: content["id_decoder"].pop(name)


def add(name):
    return lambda content: content["ex_decoder"].__setitem__(name, torch.zeros(3))


def reshape(name):
    return lambda content: content["ex_decoder"].__setitem__(name, torch.zeros(5, 5))


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            drop("aggr_app.layers.7.layers.2.bias"),
            r"1 missing tensor \(id_decoder\.aggr_app\.layers\.7\.layers\.2\.bias",
        ),
        (add("defDeepSDF.lin7.weight"), r"1 unexpected tensor \(ex_decoder\.defDeepSDF\.lin7\.weight\)"),
        (reshape("defDeepSDF.lin3.weight"), r"ex_decoder\.defDeepSDF\.lin3\.weight \(5, 5\) instead of \(32, 151\)"),
    ],
    ids=["missing", "extra", "mis-shaped"],
)
def test_a_checkpoint_that_does_not_match_is_refused(tmp_path, edit, message):
    checkpoint, anchor_file, _ = fake_official_files(tmp_path, TINY, edit)
    out = tmp_path / "out"
    with pytest.raises(CheckpointMismatchError, match=message):
        convert_official_checkpoint(checkpoint, anchor_file, out, config_yaml=tiny_yaml(tmp_path))
    assert not out.exists()


def test_bad_inputs_are_explained(tmp_path):
    checkpoint, anchor_file, _ = fake_official_files(tmp_path, TINY)
    config = tiny_yaml(tmp_path)
    np.save(tmp_path / "anchors_64.npy", np.zeros((64, 3)))
    with pytest.raises(ValueError, match=r"\(65, 3\)"):
        convert_official_checkpoint(checkpoint, tmp_path / "anchors_64.npy", tmp_path / "out", config_yaml=config)
    with pytest.raises(FileNotFoundError, match="No checkpoint"):
        convert_official_checkpoint(tmp_path / "nope.tar", anchor_file, tmp_path / "out", config_yaml=config)
    torch.save({"model": {}}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="needs 'id_decoder' and 'ex_decoder'"):
        convert_official_checkpoint(tmp_path / "other.pt", anchor_file, tmp_path / "out", config_yaml=config)
    broken = json.loads(json.dumps(TINY_YAML))
    del broken["decoder"]["id"]["blend_std"]
    (tmp_path / "broken.yaml").write_text(yaml.safe_dump(broken))
    with pytest.raises(ValueError, match=r"lacks decoder\.id\.blend_std"):
        convert_official_checkpoint(checkpoint, anchor_file, tmp_path / "out", config_yaml=tmp_path / "broken.yaml")


def test_command_line_converts_and_refuses_with_exit_status_2(tmp_path):
    checkpoint, anchor_file, _ = fake_official_files(tmp_path, TINY)
    config = tiny_yaml(tmp_path)
    command = [sys.executable, "-m", "diffnphr", "convert-mononphm"]
    ok = subprocess.run(
        [*command, str(checkpoint), str(tmp_path / "out"), "--anchors", str(anchor_file), "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "out" / "config.json").is_file() and (tmp_path / "out" / "anchors.npy").is_file()

    (tmp_path / "bad").mkdir()
    bad, _, _ = fake_official_files(tmp_path / "bad", TINY, drop("mlp_pos.4.bias"))
    refused = subprocess.run(
        [*command, str(bad), str(tmp_path / "out2"), "--anchors", str(anchor_file), "--config", str(config)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: ") and "id_decoder.mlp_pos.4.bias" in refused.stderr
