"""How a pipeline runs its work, apart from what it computes: batching of the extraction, and reduced precision on a GPU.

`ExecutionOptions` is a pipeline's (`HeadReconstructionPipeline.execution`); none of it changes
what a call means. The reduced-precision options act on CUDA only (a CPU pipeline ignores them)
and are off until they are measured to keep the mesh (issue 29: Chamfer to the float32 mesh
≤ 0.05 mm); nothing about their speed has been measured yet.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from diffnphr.mesh.grid import DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)

BF16_STAGES = ("encode", "diffusion", "sdf", "colour")
# Grid nodes of one batched extraction, all heads together: 16 heads at 256³ (2 at 512³). The
# narrow band holds a float32 value and a flag per node, and its interpolation a float32 per node
# of the finest level: about 10 bytes a node, so about 3 GB at this bound (estimated, not measured).
MAX_BATCH_NODES = 16 * 257**3


@dataclass(frozen=True)
class ExecutionOptions:
    """How the pipeline runs: batched extraction, TF32 and bf16 on CUDA.

    `batch_extraction`: the heads of one call extracted together (`mesh.batch`), each grid level
    of all of them in one query, at most `max_batch_nodes` grid nodes at a time; `None` (the
    default) batches on CUDA only: on the CPU it did not pay (`docs/RESULTS.md`).
    `chunk_size`: points per decoder call in the extraction and the colours (all heads of a
    batched extraction together), for one head as for several.
    `tf32`: on CUDA, `True` lets matrix products and convolutions use TF32, `False` keeps both in
    full float32; `None` (the default) leaves torch's own setting (convolutions in TF32, matrix
    products not). `bf16`: the stages run under bfloat16 autocast on CUDA, any of
    `BF16_STAGES` (the encoder, the U-Net's steps, the SDF queries, the colour queries); none by
    default.
    """

    batch_extraction: bool | None = None
    max_batch_nodes: int = MAX_BATCH_NODES
    chunk_size: int = DEFAULT_CHUNK_SIZE
    tf32: bool | None = None
    bf16: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        unknown = sorted(set(self.bf16) - set(BF16_STAGES))
        if unknown:
            raise ValueError(f"bf16 names unknown stages {unknown}; choose from {list(BF16_STAGES)}.")
        object.__setattr__(self, "bf16", frozenset(self.bf16))
        for name in ("max_batch_nodes", "chunk_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number of at least 1; got {value!r}.")

    def batches_extraction(self, device: torch.device) -> bool:
        """Whether the heads of one call are extracted together on `device`."""
        return device.type == "cuda" if self.batch_extraction is None else self.batch_extraction

    def autocast(self, device: torch.device, stage: str) -> contextlib.AbstractContextManager:
        """bfloat16 autocast for `stage` when it is asked for and the device is CUDA, else nothing."""
        if stage not in BF16_STAGES:
            raise ValueError(f"Unknown stage {stage!r}; choose from {list(BF16_STAGES)}.")
        if device.type != "cuda" or stage not in self.bf16:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    def in_autocast(
        self, fn: Callable[[Tensor], Tensor], device: torch.device, stage: str
    ) -> Callable[[Tensor], Tensor]:
        """`fn` run under `stage`'s bfloat16 autocast when it is asked for on CUDA; `fn` itself otherwise."""
        if device.type != "cuda" or stage not in self.bf16:
            return fn

        def cast(points: Tensor) -> Tensor:
            with self.autocast(device, stage):
                return fn(points)

        return cast

    @contextlib.contextmanager
    def precision(self, device: torch.device) -> Iterator[None]:
        """TF32 as `tf32` asks while inside, on CUDA; torch's flags as they were afterwards. Nothing on the CPU.

        The flags are the process's: a server runs one pipeline call at a time on its GPU.
        """
        if device.type != "cuda" or self.tf32 is None:
            yield
            return
        before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = self.tf32
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before
