"""Benchmark rows of the training renderer: renders per second of fresh heads, targets included.

What one training step asks of it (`train.reconstruction_data.FreshHeadBatches.training`): new
random heads drawn, their exact latents from the shipped factor map, scenes, rasterised crops with
backgrounds and photo degradations; with `copies` renders per rasterised head
(`HeadRenderer.render_crops`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from diffnphr.bench.common import timed

_WEIGHTS = Path(__file__).resolve().parents[2] / "weights"
_FACTOR_MAP, _LATENTS = _WEIGHTS / "factor_map", _WEIGHTS / "decoder_latents"


def bench_renders(device: torch.device, quick: bool, image_size: int, copies: int) -> dict[str, Any]:
    """Renders/s of training batches at `image_size` px with `copies` per head (a GPU batch is the run's 256)."""
    from diffnphr.data.ict import load_ict
    from diffnphr.data.renders import HeadRenderer
    from diffnphr.data.scenes import RenderConfig
    from diffnphr.nphm.factor_map import FactorMap
    from diffnphr.train.config import ReconstructionTrainingConfig
    from diffnphr.train.reconstruction_data import FreshHeadBatches, TrainingHeads

    renderer = HeadRenderer(load_ict(), device, RenderConfig(image_size=image_size))
    config = ReconstructionTrainingConfig(factor_map=str(_FACTOR_MAP), copies_per_head=copies)
    heads = TrainingHeads.load(_LATENTS, codebooks=False)
    batches = FreshHeadBatches(config, heads, FactorMap.from_pretrained(_FACTOR_MAP), renderer, device)
    count = 256 if device.type == "cuda" else (8 if quick else 16)
    with torch.inference_mode():
        seconds = timed(lambda: batches.training(seed=0, count=count), device, 1 if quick else 3)
    return {
        "renders": count,
        "copies_per_head": copies,
        "seconds": round(seconds, 4),
        "renders_per_s": round(count / seconds, 2),
    }
