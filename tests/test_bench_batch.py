"""The bench's batch row: heads per second through one pipeline call of several photos, and the mesh unmoved."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from diffnphr.bench import batch


def test_the_batch_row_reports_heads_per_second_and_that_batching_keeps_the_mesh(monkeypatch):
    models = batch.bench_pipeline_models

    def fewer_steps(device):  # the shipped weights with 2 steps of 2 samples, so the row runs in seconds
        pipeline, weights = models(device)
        pipeline.defaults = dataclasses.replace(pipeline.defaults, steps=2, samples=2)
        return pipeline, weights

    monkeypatch.setattr(batch, "bench_pipeline_models", fewer_steps)
    row = batch.bench_batch(torch.device("cpu"), quick=True, resolution=24, batch_sizes=(1, 2))
    assert row["weights"] == "trained" and row["extraction"] == "head by head" and row["samples"] == 2
    assert [one["heads"] for one in row["batches"]] == [1, 2]
    for one in row["batches"]:
        assert (
            one["heads_per_s"] == pytest.approx(one["heads"] / one["seconds"], rel=2e-3, abs=1e-3)
            and one["heads_per_s"] > 0
        )
        assert set(one["seconds_per_stage"]) == {"crop", "encode", "diffusion", "extraction", "colour", "total"}
    assert row["head0_offset_from_alone_mm"] is not None and row["head0_offset_from_alone_mm"] <= 0.05


def test_the_served_batches_row_compares_batched_with_one_at_a_time(monkeypatch):
    models = batch.bench_pipeline_models

    def fewer_steps(device):
        pipeline, weights = models(device)
        pipeline.defaults = dataclasses.replace(pipeline.defaults, steps=2, samples=2)
        return pipeline, weights

    monkeypatch.setattr(batch, "bench_pipeline_models", fewer_steps)
    row = batch.bench_served_batches(torch.device("cpu"), quick=True, max_batch_size=4, resolution=24)
    assert row["clients"] == 4 and row["requests_each"] == 2 and row["max_batch_size"] == 4
    assert sum(size * count for size, count in row["batch_sizes"].items()) == 8  # every batched request, once
    assert max(row["batch_sizes"]) > 1  # 4 clients at once: batches formed
    for mode in ("batched", "one_at_a_time"):
        assert 0 < row[mode]["latency_p50_s"] <= row[mode]["latency_p95_s"] and row[mode]["requests_per_s"] > 0
    assert row["single_request_s"] > 0 and row["batched_p95_over_single"] > 0
