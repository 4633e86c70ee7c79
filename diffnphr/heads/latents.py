"""MonoNPHM latents of the heads of a split, as files the diffusion stage reads.

`SplitLatents` holds, for some identities of a `HeadSplit`, one z_geo and one z_app per
identity and one z_exp per expression slot: the decoder's training codebooks (exported) or the
latents fitted to held-out identities (`diffnphr.train.fit`). Saved as safetensors shards of at
most 15 MB (`<name>-0000k-of-0000n.safetensors`, or `<name>.safetensors` when one is enough),
together with the per-dimension statistics the diffusion model normalises latents with.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub import split_torch_state_dict_into_shards
from safetensors.torch import load_file, save_file
from torch import Tensor

from diffnphr.nphm.latents import LatentStatistics, pack

LATENT_STATISTICS_FILE = "latent_statistics.safetensors"
CODEBOOKS_NAME = "codebooks"  # the decoder's training codebooks (`export-decoder` writes them)
FITTED_HELDOUT_NAME = "fitted_heldout"  # the held-out identities' latents (`fit --which heldout` writes them)
_MAX_SHARD_SIZE = "15MB"


@dataclass(frozen=True)
class SplitLatents:
    """Latents of N identities of a split with X expression slots each (slot 0 the neutral face)."""

    identities: Tensor  # (N,) int64 identity rows of the split
    z_geo: Tensor  # (N, 2176)
    z_exp: Tensor  # (N, X, 100)
    z_app: Tensor  # (N, 2176)

    def __post_init__(self) -> None:
        n = self.identities.shape[0]
        if self.z_geo.shape[0] != n or self.z_app.shape[0] != n or self.z_exp.dim() != 3 or self.z_exp.shape[0] != n:
            raise ValueError(
                f"SplitLatents of {n} identities need z_geo [{n}, ·], z_exp [{n}, X, ·] and z_app [{n}, ·]; got "
                f"{list(self.z_geo.shape)}, {list(self.z_exp.shape)}, {list(self.z_app.shape)}."
            )

    def flat(self) -> Tensor:
        """Padded flat latents [N·X, 4456] of every (identity, expression) head; row n·X + x is slot x of identity n."""
        slots = self.z_exp.shape[1]
        z_geo = self.z_geo.unsqueeze(1).expand(-1, slots, -1)
        z_app = self.z_app.unsqueeze(1).expand(-1, slots, -1)
        return pack(z_geo, self.z_exp, z_app).flatten(0, 1)

    def statistics(self) -> LatentStatistics:
        """Per-dimension mean and std of `flat()` (for normalising the diffusion model's targets)."""
        return LatentStatistics.from_latents(self.flat())

    def save(self, directory: str | os.PathLike, name: str, dtype: torch.dtype = torch.float32) -> list[Path]:
        """Write `name*.safetensors` into `directory` (shards ≤ 15 MB); returns the files written.

        `dtype=torch.float16` halves the files (latents load back as float32 either way).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        for stale in directory.glob(f"{name}*.safetensors"):
            stale.unlink()
        tensors = {
            "identities": self.identities.contiguous(),
            "z_geo": self.z_geo.detach().to(dtype).contiguous(),
            "z_exp": self.z_exp.detach().to(dtype).contiguous(),
            "z_app": self.z_app.detach().to(dtype).contiguous(),
        }
        split = split_torch_state_dict_into_shards(
            tensors, filename_pattern=name + "{suffix}.safetensors", max_shard_size=_MAX_SHARD_SIZE
        )
        for filename, names in split.filename_to_tensors.items():
            save_file({key: tensors[key] for key in names}, str(directory / filename))
        return [directory / filename for filename in split.filename_to_tensors]


def load_head_latents(directory: str | os.PathLike, name: str) -> SplitLatents:
    """Read latents written by `SplitLatents.save(directory, name)`."""
    directory = Path(directory)
    tensors: dict[str, Tensor] = {}
    for shard in sorted(directory.glob(f"{name}*.safetensors")):
        tensors.update(load_file(str(shard)))
    missing = {"identities", "z_geo", "z_exp", "z_app"} - set(tensors)
    if missing:
        raise FileNotFoundError(
            f"{directory} holds no complete '{name}' latents (missing {', '.join(sorted(missing))})."
        )
    return SplitLatents(
        tensors["identities"], tensors["z_geo"].float(), tensors["z_exp"].float(), tensors["z_app"].float()
    )


def save_latent_statistics(statistics: LatentStatistics, path: str | os.PathLike) -> Path:
    """Write the statistics' mean and std [4456] to a safetensors file."""
    path = Path(path)
    save_file({"mean": statistics.mean.float().contiguous(), "std": statistics.std.float().contiguous()}, str(path))
    return path


def load_latent_statistics(path: str | os.PathLike) -> LatentStatistics:
    """Read statistics written by `save_latent_statistics`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No latent statistics at {path}.")
    tensors = load_file(str(path))
    return LatentStatistics(mean=tensors["mean"], std=tensors["std"])
