"""Exponential moving averages of trained weights, which the exports use."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialAverage:
    """EMA copies of some modules' parameters (buffers are copied as they are at export)."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.modules = modules
        self.decay = decay
        self.shadow = {name: copy.deepcopy(module).requires_grad_(False) for name, module in modules.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the averages towards the current weights (decay warms up as (1 + step) / (10 + step))."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, module in self.modules.items():
            averaged = list(self.shadow[name].parameters())
            current = [p.detach() for p in module.parameters()]
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
