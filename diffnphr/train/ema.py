"""Exponential moving averages of trained weights, which the exports use."""

from __future__ import annotations

import copy

import torch
from torch import nn


class ExponentialAverage:
    """EMA copies of some modules' parameters; their buffers (BatchNorm statistics) follow the live modules'."""

    def __init__(self, modules: dict[str, nn.Module], decay: float) -> None:
        self.modules = modules
        self.decay = decay
        self.shadow = {name: copy.deepcopy(module).requires_grad_(False) for name, module in modules.items()}

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Move the averages towards the current weights (decay warms up as (1 + step) / (10 + step)) and copy
        the current buffers: running statistics are already averages, and an average of weights with the
        statistics of the initial ones would normalise by the wrong scale."""
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, module in self.modules.items():
            averaged = list(self.shadow[name].parameters())
            current = [p.detach() for p in module.parameters()]
            torch._foreach_lerp_(averaged, current, 1.0 - decay)
            for shadow_buffer, buffer in zip(self.shadow[name].buffers(), module.buffers()):
                shadow_buffer.copy_(buffer)
