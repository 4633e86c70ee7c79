"""`python -m diffnphr bench --only`: a person short of time runs just the cases they name."""

from __future__ import annotations

import pytest

from diffnphr.bench import run_benchmarks


def test_only_the_named_cases_run_and_unknown_names_are_refused():
    report = run_benchmarks(device="cpu", quick=True, only=["baseline", "unet_step_batch1"])
    assert [row["name"] for row in report["results"]] == ["baseline", "unet_step_batch1"]
    assert "error" not in report["results"][1] and report["results"][1]["peak_rss_mib"] > 0
    with pytest.raises(ValueError, match="unknown bench cases pipeline_fast; choose from baseline"):
        run_benchmarks(device="cpu", quick=True, only=["pipeline_fast"])
