"""The one rule for choosing where models run."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """The given device, else CUDA when torch sees a GPU, else the CPU.

    Asking for CUDA on a machine without a usable GPU raises a `ValueError` that says to use the CPU.
    """
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA was asked for, but this machine has no usable GPU; use --device cpu.")
    return device
