"""How the pipeline runs: TF32 and bf16 only on CUDA and off by default, batched extraction on CUDA only."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from diffnphr.pipeline import ExecutionOptions, HeadReconstructionPipeline

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_by_default_nothing_changes_precision_and_extraction_is_batched_on_cuda_only():
    options = ExecutionOptions()
    assert options.tf32 is None and options.bf16 == frozenset()
    assert options.batches_extraction(CUDA) and not options.batches_extraction(CPU)
    assert ExecutionOptions(batch_extraction=True).batches_extraction(CPU)
    assert not ExecutionOptions(batch_extraction=False).batches_extraction(CUDA)


@pytest.mark.parametrize("tf32", [True, False])
def test_tf32_is_set_on_cuda_while_inside_and_given_back_after(tf32):
    flags = torch.backends.cuda.matmul, torch.backends.cudnn
    before = [flag.allow_tf32 for flag in flags]
    options = ExecutionOptions(tf32=tf32)
    with options.precision(CUDA):
        assert [flag.allow_tf32 for flag in flags] == [tf32, tf32]
    assert [flag.allow_tf32 for flag in flags] == before
    with options.precision(CPU), ExecutionOptions().precision(CUDA):  # the CPU, and the default: torch's own
        assert [flag.allow_tf32 for flag in flags] == before


@pytest.mark.filterwarnings("ignore:CUDA is not available")
def test_bf16_autocast_only_for_the_stages_named_and_only_on_cuda():
    options = ExecutionOptions(bf16=frozenset({"sdf"}))
    assert isinstance(options.autocast(CPU, "sdf"), contextlib.nullcontext)
    assert isinstance(options.autocast(CUDA, "colour"), contextlib.nullcontext)
    assert isinstance(options.autocast(CUDA, "sdf"), torch.autocast)
    fn = torch.sin
    assert options.in_autocast(fn, CPU, "sdf") is fn and options.in_autocast(fn, CUDA, "colour") is fn
    assert options.in_autocast(fn, CUDA, "sdf") is not fn
    with pytest.raises(ValueError, match="unknown stages"):
        ExecutionOptions(bf16=frozenset({"marching"}))
    with pytest.raises(ValueError, match="max_batch_nodes must be a whole number of at least 1"):
        ExecutionOptions(max_batch_nodes=0)
    with pytest.raises(ValueError, match="chunk_size must be a whole number of at least 1"):
        ExecutionOptions(chunk_size=2.5)


def test_a_cpu_pipeline_ignores_the_gpu_precision_options(tiny_weights_dir, face_photo_file):
    pipeline = HeadReconstructionPipeline.from_pretrained(tiny_weights_dir, device="cpu")
    plain = pipeline(face_photo_file, seed=2, resolution=24)
    pipeline.execution = ExecutionOptions(tf32=True, bf16=frozenset({"encode", "diffusion", "sdf", "colour"}))
    asked = pipeline(face_photo_file, seed=2, resolution=24)
    assert torch.equal(asked.latents.z_geo, plain.latents.z_geo)
    np.testing.assert_array_equal(asked.mesh.vertices, plain.mesh.vertices)
