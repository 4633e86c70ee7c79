"""Distributed training: two gloo processes on the CPU end a run with identical weights, each having drawn its
own heads, rank 0 alone writing; the run then resumes in one process and continues the count of draws."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from diffnphr.train.checkpoints import list_checkpoints, load_checkpoint
from diffnphr.train.distributed import DistributedContext, distributed_context
from diffnphr.train.reconstruction import train_reconstruction

WEIGHTS = Path(__file__).resolve().parents[1] / "weights"
LATENTS = WEIGHTS / "decoder_latents"
TINY = {
    "encoder": {"depth": 18, "width": 8, "image_size": 32, "projection_dim": 16},
    "diffusion": {
        "base_channels": 8,
        "channel_mults": [1, 2],
        "attention_levels": [],
        "attention_heads": 2,
        "norm_groups": 4,
        "time_embed_dim": 16,
        "cond_tokens": 1,
        "mean_head_hidden": 16,
    },
    "factor_map": str(WEIGHTS / "factor_map"),
    "regression_hidden": 32,
    "batch_size": 4,
    "total_steps": 50,
    "warmup_steps": 2,
    "log_every": 1,
    "validate_every": 100,
    "checkpoint_every": 100,
    "bf16": False,
}
WORLD = 2


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _rank(rank: int, run: str, config: str, port: int, out: str) -> None:
    """One torchrun-like process: its environment, two steps, its summary in a file."""
    torch.set_num_threads(1)
    os.environ.update(
        {
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(WORLD),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
    )
    summary = train_reconstruction(run, LATENTS, 600, config, device="cpu", stop_after_steps=2)
    Path(out, f"rank{rank}.json").write_text(json.dumps(summary, default=str))


@pytest.mark.slow
def test_two_gloo_processes_end_identical_and_the_run_resumes_in_one(tmp_path):
    run, config = tmp_path / "run", tmp_path / "config.json"
    config.write_text(json.dumps(TINY))
    mp.spawn(_rank, args=(str(run), str(config), _free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    summaries = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(WORLD)]
    assert [s["step"] for s in summaries] == [2, 2] and [s["world_size"] for s in summaries] == [2, 2]
    assert summaries[0]["weights_sha256"] == summaries[1]["weights_sha256"]  # weights, statistics, averages
    assert summaries[0]["checkpoint"] and summaries[1]["checkpoint"] is None  # rank 0 alone writes
    (checkpoint,) = list_checkpoints(run)
    state = load_checkpoint(checkpoint).state
    assert (state["step"], state["draws"], state["world_size"]) == (2, 4, 2)
    log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [1, 2]  # one line per step, not one per process

    resumed = train_reconstruction(run, LATENTS, 600, device="cpu", stop_after_steps=1)
    assert (resumed["step"], resumed["world_size"], resumed["draws"]) == (3, 1, 5)
    assert load_checkpoint(list_checkpoints(run)[-1]).state["draws"] == 5


def test_every_process_and_step_draws_its_own_seed():
    """Draw indices of a run trained 3 steps on 2 processes, then 2 steps on 1, then 2 on 4: none repeats."""
    drawn, draws = [], 0
    for world, steps in ((2, 3), (1, 2), (4, 2)):
        for step in range(steps):
            drawn += [DistributedContext(rank, world).draw_index(draws, step) for rank in range(world)]
        draws += steps * world
    assert sorted(drawn) == list(range(draws)) == list(range(6 + 2 + 8))
    with pytest.raises(ValueError, match="multiple of the world size"):
        DistributedContext(0, 4).share(6)


def test_without_torchrun_one_process_trains_and_half_an_environment_is_refused(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with distributed_context(torch.device("cpu")) as (context, device):
        assert not context.enabled and context.is_main and device == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_PORT", raising=False)
    with pytest.raises(ValueError, match="torchrun"), distributed_context(torch.device("cpu")):
        pass
