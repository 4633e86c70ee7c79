"""Official MonoNPHM checkpoint (`checkpoint_epoch_N.tar`) -> diffnphr decoder folder.

The folder holds config.json, safetensors shards and anchors.npy, and loads with `MonoNPHM.from_pretrained`.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.nphm.config import MonoNPHMConfig
from diffnphr.nphm.decoder import MonoNPHM

_SECTIONS = ("id_decoder", "ex_decoder")
_LISTED = 4  # tensors named per kind of mismatch in an error message

# configs.yaml key -> MonoNPHMConfig field, for the keys the official model reads (reference §1.8)
_YAML_KEYS = {
    ("id", "nloc"): "n_anchors",
    ("id", "nsymm_pairs"): "n_symmetric_pairs",
    ("id", "nneigh"): "n_neighbours",
    ("id", "blend_std"): "blend_std",
    ("id", "lat_dim_glob"): "lat_dim_glob",
    ("id", "lat_dim_loc_geo"): "lat_dim_loc",
    ("id", "gnn", "hidden_dim_geo"): "hidden_dim_geo",
    ("id", "gnn", "nlayers_geo"): "n_layers_geo",
    ("id", "gnn", "hidden_dim_app"): "hidden_dim_app",
    ("id", "gnn", "nlayers_app"): "n_layers_app",
    ("ex", "lat_dim_ex"): "lat_dim_exp",
    ("ex", "lat_dim_id"): "lat_dim_id_compressed",
    ("ex", "hidden_dim"): "hidden_dim_ex",
    ("ex", "nlayers"): "n_layers_ex",
    ("ex", "nhyper"): "n_hyper",
}


class CheckpointMismatchError(ValueError):
    """The checkpoint's tensors do not match the decoder built from the config (missing, extra or mis-shaped)."""


def _lookup(tree: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            raise KeyError(key)
        tree = tree[key]
    return tree


def config_from_official_yaml(config_yaml: Path) -> MonoNPHMConfig:
    """Read the decoder sizes from a MonoNPHM training config (`configs.yaml` beside the checkpoints)."""
    try:
        import yaml
    except ImportError as error:
        raise ValueError(
            "Reading --config needs PyYAML (pip install pyyaml); without --config the official "
            "mononphm.yaml sizes are used."
        ) from error
    config_yaml = Path(config_yaml)
    if not config_yaml.is_file():
        raise FileNotFoundError(f"No MonoNPHM config file at {config_yaml}.")
    try:
        tree = yaml.safe_load(config_yaml.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{config_yaml} is not valid YAML: {error}") from error
    decoder = tree.get("decoder") if isinstance(tree, dict) else None
    if not isinstance(decoder, dict):
        raise ValueError(f"{config_yaml} has no 'decoder' section; is it MonoNPHM's configs.yaml?")
    values, missing = {}, []
    for path, field in _YAML_KEYS.items():
        try:
            values[field] = _lookup(decoder, path)
        except KeyError:
            missing.append("decoder." + ".".join(path))
    if missing:
        raise ValueError(
            f"{config_yaml} lacks {', '.join(missing)}; pass the configs.yaml written with the checkpoint, "
            "or leave --config out to use the official mononphm.yaml sizes."
        )
    mode = decoder["ex"].get("mode", "compress")
    if mode != "compress":
        raise ValueError(f"{config_yaml}: decoder.ex.mode is '{mode}'; only MonoNPHM's 'compress' mode is supported.")
    app_local = decoder["id"].get("lat_dim_loc_app", values["lat_dim_loc"])
    if app_local != values["lat_dim_loc"]:
        raise ValueError(
            f"{config_yaml}: lat_dim_loc_geo ({values['lat_dim_loc']}) and lat_dim_loc_app ({app_local}) differ; "
            "MonoNPHM requires them equal."
        )
    return MonoNPHMConfig(**values)


def _load_sections(checkpoint: Path) -> dict[str, dict[str, Tensor]]:
    if not checkpoint.is_file():
        raise FileNotFoundError(f"No checkpoint file at {checkpoint}.")
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        raise ValueError(
            f"{checkpoint} could not be read as a PyTorch checkpoint of plain tensors ({type(error).__name__}); "
            "it should be MonoNPHM's checkpoint_epoch_N.tar."
        ) from error
    if not isinstance(content, dict) or not all(isinstance(content.get(s), dict) for s in _SECTIONS):
        found = sorted(map(str, content)) if isinstance(content, dict) else type(content).__name__
        raise ValueError(
            f"{checkpoint} is not a MonoNPHM checkpoint: it needs 'id_decoder' and 'ex_decoder' state dicts "
            f"(found {found})."
        )
    for section in _SECTIONS:
        for key, value in content[section].items():
            if not isinstance(value, Tensor):
                raise ValueError(f"{checkpoint}: '{section}.{key}' is not a tensor.")
    return {section: content[section] for section in _SECTIONS}


def _listing(names: list[str]) -> str:
    shown = ", ".join(names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def _check_tensors(sections: dict[str, dict[str, Tensor]], model: MonoNPHM, source: str) -> None:
    expected = {f"{s}.{k}": v for s in _SECTIONS for k, v in getattr(model, s).state_dict().items()}
    found = {f"{s}.{k}": v for s in _SECTIONS for k, v in sections[s].items()}
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    misshaped = [
        f"{k} {tuple(found[k].shape)} instead of {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and found[k].shape != v.shape
    ]
    wrong_dtype = [
        f"{k} {found[k].dtype} instead of {v.dtype}"
        for k, v in expected.items()
        if k in found and found[k].shape == v.shape and found[k].dtype != v.dtype
    ]
    problems = [
        f"{len(names)} {kind} tensor{'s' if len(names) > 1 else ''} ({_listing(names)})"
        for kind, names in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
            ("wrongly typed", wrong_dtype),
        )
        if names
    ]
    if problems:
        raise CheckpointMismatchError(
            f"The checkpoint does not match a MonoNPHM decoder with the sizes from {source}: "
            + "; ".join(problems)
            + ". If the model was trained with other sizes, pass the configs.yaml saved with it."
        )


def _load_anchors(anchors: Path, config: MonoNPHMConfig) -> np.ndarray:
    if not anchors.is_file():
        raise FileNotFoundError(
            f"No anchor file at {anchors} (the official one is assets/anchors_{config.n_anchors}.npy)."
        )
    try:
        template = np.load(anchors, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise ValueError(f"{anchors} is not a NumPy .npy array file ({error}).") from error
    if template.shape != (config.n_anchors, 3):
        raise ValueError(
            f"{anchors} holds an array of shape {template.shape}; the anchor template must be ({config.n_anchors}, 3)."
        )
    return template


def convert_official_checkpoint(
    checkpoint: Path,
    anchors: Path,
    out_dir: Path,
    config_yaml: Path | None = None,
) -> Path:
    """Turn an official MonoNPHM checkpoint + `anchors_65.npy` into a diffnphr decoder folder; return the folder.

    Only `id_decoder` and `ex_decoder` are read (with `torch.load(weights_only=True)`); every tensor
    is kept unchanged. The model sizes come from `config_yaml` (the experiment's `configs.yaml`)
    or, without it, from the official `mononphm.yaml`. A checkpoint whose tensors do not match
    those sizes exactly is refused with `CheckpointMismatchError`.
    """
    checkpoint, anchors, out_dir = Path(checkpoint), Path(anchors), Path(out_dir)
    if config_yaml is None:
        config, source = MonoNPHMConfig(), "the official mononphm.yaml"
    else:
        config, source = config_from_official_yaml(Path(config_yaml)), str(config_yaml)
    template = _load_anchors(anchors, config)
    sections = _load_sections(checkpoint)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"The output path {out_dir} exists and is not a folder.")
    model = MonoNPHM(config, template)
    _check_tensors(sections, model, source)
    for section in _SECTIONS:
        getattr(model, section).load_state_dict(sections[section], strict=True)
    return model.save_pretrained(out_dir)
