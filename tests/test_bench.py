"""`python -m diffnphr bench`: a person short of time runs just the cases they name; the app row measures the served app."""

from __future__ import annotations

import pytest
import torch

from diffnphr.bench import run_benchmarks


def test_only_the_named_cases_run_and_unknown_names_are_refused():
    report = run_benchmarks(device="cpu", quick=True, only=["baseline", "unet_step_batch1"])
    assert [row["name"] for row in report["results"]] == ["baseline", "unet_step_batch1"]
    assert "error" not in report["results"][1] and report["results"][1]["peak_rss_mib"] > 0
    with pytest.raises(ValueError, match="unknown bench cases pipeline_fast; choose from baseline"):
        run_benchmarks(device="cpu", quick=True, only=["pipeline_fast"])


def test_the_pipeline_row_times_the_pipelines_own_stages():
    row = run_benchmarks(device="cpu", quick=True, only=["pipeline_128"])["results"][0]
    assert "error" not in row, row.get("error")
    assert row["resolution"] == 128 and row["vertices"] > 1000 and row["sdf_queries"] > 0
    assert set(row["seconds"]) == {"crop", "encode", "diffusion", "extraction", "colour", "total"}
    stages = sum(seconds for stage, seconds in row["seconds"].items() if stage != "total")
    assert row["seconds"]["total"] == pytest.approx(stages, abs=0.01) and len(row["timed_totals"]) == 1


def test_the_render_rows_report_renders_per_second_of_training_batches():
    rows = run_benchmarks(device="cpu", quick=True, only=["renders_64_copies1", "renders_64_copies4"])["results"]
    assert all("error" not in row for row in rows), rows
    assert [(row["renders"], row["copies_per_head"]) for row in rows] == [(8, 1), (8, 4)]
    assert all(row["renders_per_s"] == pytest.approx(8 / row["seconds"], rel=0.01) for row in rows)


def test_the_app_row_reconstructs_through_the_served_app_and_reports_its_peak_memory():
    row = run_benchmarks(device="cpu", quick=True, only=["app"])["results"][0]
    assert "error" not in row, row.get("error")
    assert row["vertices"] > 1000 and len(row["timed_requests_s"]) == 1
    # the request covers the pipeline's stages; the peak is the served process's, which holds the models
    assert row["request_s"] >= row["pipeline_seconds"]["total"] > 0
    # the served process holds the models (more than a bare interpreter) and stays within the README's 3 GB
    assert 400 < row["app_peak_rss_mib"] < 3 * 1024


def test_the_load_row_answers_every_request_and_counts_what_is_left():
    from diffnphr.bench.served import bench_load

    row = bench_load(torch.device("cpu"), quick=False, clients=2, requests=1, keep_results_s=2.0)
    assert row["requests"] == 2 and row["answered"] == 2 and row["failed"] == 0, row["messages"]
    assert 0 < row["latency_p50_s"] <= row["latency_p95_s"] <= row["wall_s"]
    # every client is done: once the app's keep time has passed, no photo and no result of theirs is left
    assert row["files_held_after_keep"]["results"] == 0 and row["files_held_after_keep"]["uploads"] == 0, row
