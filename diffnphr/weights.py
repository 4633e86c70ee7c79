"""Weight folders: `config.json` + sharded safetensors, loaded from a local folder or the Hub.

Every model block of diffnphr (decoder, diffusion U-Net, and the pipeline folder that holds
them) is stored the same way, so one mechanism lives here:

* `resolve_weights_dir(path_or_hub_id)` turns a local folder or a Hugging Face Hub id into a
  local folder, failing fast, with a sentence saying what to do, when neither works;
* `PretrainedModule` gives an `nn.Module` whose constructor takes one config dataclass the
  `save_pretrained` / `from_pretrained` pair, with shards of at most 15 MiB so that weights
  travel to and from the GPU machine.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch
from huggingface_hub import load_torch_model, save_torch_state_dict
from torch import nn

CONFIG_NAME = "config.json"
MAX_SHARD_SIZE = "15MB"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")


class WeightsNotFoundError(FileNotFoundError):
    """Raised when weights are neither a local folder nor downloadable from the Hub."""


def resolve_weights_dir(path_or_hub_id: str | os.PathLike, subfolder: str | None = None) -> Path:
    """Return a local folder holding the weights named by a path or a Hub repo id.

    A local folder wins; otherwise an `owner/name` id is fetched with `huggingface_hub`
    (which answers at once when offline). Anything else raises `WeightsNotFoundError` with a
    sentence a person can act on.
    """
    local = Path(path_or_hub_id).expanduser()
    if local.is_dir():
        folder = local / subfolder if subfolder else local
        if not folder.is_dir():
            raise WeightsNotFoundError(f"The weights folder {local} has no '{subfolder}' sub-folder.")
        return folder
    name = str(path_or_hub_id)
    if not _HUB_ID.match(name) or local.exists():
        raise WeightsNotFoundError(
            f"No weights folder at '{name}'. Pass an existing folder (config.json + *.safetensors) "
            "or a Hugging Face Hub id such as 'owner/model'."
        )
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        root = Path(
            snapshot_download(
                name,
                allow_patterns=[f"{subfolder}/*"] if subfolder else None,
            )
        )
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ValueError) as error:
        raise WeightsNotFoundError(
            f"Could not download '{name}' from the Hugging Face Hub ({type(error).__name__}). "
            "If this machine is offline or the repo is private, download the weights elsewhere "
            "and pass the local folder instead."
        ) from error
    folder = root / subfolder if subfolder else root
    if not folder.is_dir():
        raise WeightsNotFoundError(f"The Hub repo '{name}' has no '{subfolder}' folder.")
    return folder


ConfigT = TypeVar("ConfigT")
ModuleT = TypeVar("ModuleT", bound="PretrainedModule")


class PretrainedModule(nn.Module):
    """An `nn.Module` built from one config dataclass, saved as config.json + safetensors shards.

    Subclasses set `config_class` and accept the config as their only constructor argument.
    """

    config_class: ClassVar[type]

    def __init__(self, config: Any) -> None:
        super().__init__()
        self.config = config

    def save_pretrained(self, directory: str | os.PathLike, dtype: torch.dtype | None = None) -> Path:
        """Write config.json and the state dict (shards ≤ 15 MiB) to `directory`.

        `dtype` (e.g. `torch.float16`) stores the parameters at that precision to halve the
        download; they load back into the module's own dtype. Buffers (normalisation
        statistics and the like) always keep their precision.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = dataclasses.asdict(self.config)
        (directory / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        parameters = {name for name, _ in self.named_parameters()}
        state = {
            k: (v.to(dtype) if dtype is not None and k in parameters and v.is_floating_point() else v)
            .detach()
            .contiguous()
            for k, v in self.state_dict().items()
        }
        save_torch_state_dict(state, directory, max_shard_size=MAX_SHARD_SIZE)
        self.save_extra_files(directory)
        return directory

    def save_extra_files(self, directory: Path) -> None:
        """Hook for subclasses that keep non-tensor files (e.g. arrays) beside the weights."""

    @classmethod
    def load_config(cls, directory: Path) -> Any:
        """Read config.json into `config_class`, ignoring keys it does not know."""
        raw = json.loads((directory / CONFIG_NAME).read_text())
        known = {f.name for f in dataclasses.fields(cls.config_class)}
        return cls.config_class(**{k: v for k, v in raw.items() if k in known})

    @classmethod
    def from_config_dir(cls: type[ModuleT], directory: Path, config: Any) -> ModuleT:
        """Build the (untrained) module for `config`; subclasses may read extra files here."""
        return cls(config)

    @classmethod
    def from_pretrained(
        cls: type[ModuleT],
        path_or_hub_id: str | os.PathLike,
        subfolder: str | None = None,
        device: str | torch.device = "cpu",
    ) -> ModuleT:
        """Load a module saved by `save_pretrained` from a local folder or a Hub repo id."""
        directory = resolve_weights_dir(path_or_hub_id, subfolder)
        if not (directory / CONFIG_NAME).is_file():
            raise WeightsNotFoundError(f"{directory} has no {CONFIG_NAME}; it is not a diffnphr weights folder.")
        model = cls.from_config_dir(directory, cls.load_config(directory))
        load_torch_model(model, directory, strict=True, map_location="cpu")
        return model.to(device).eval()
