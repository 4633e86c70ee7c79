"""What every trainer shares: the time box of one GPU command, and a log that stops on a diverged loss."""

from __future__ import annotations

import json
import time

import pytest
import torch

from diffnphr.train.log import TrainingLog
from diffnphr.train.loop import TimeBox


def test_time_box_stops_after_the_given_steps():
    budget = TimeBox(budget_s=3600, started=time.monotonic(), stop_after_steps=2)
    allowed = 0
    while budget.allows_step():
        budget.stepped(0.01)
        allowed += 1
    assert allowed == 2


def test_time_box_keeps_room_for_two_steps_and_the_final_checkpoint():
    budget = TimeBox(budget_s=30, started=time.monotonic())
    assert budget.allows_step()  # 10 s kept for a checkpoint, nothing measured yet
    budget.stepped(5.0)
    assert budget.allows_step()  # 0 + 2 * 5 + 10 <= 30
    budget.saved(14.0)  # a 14-s checkpoint is budgeted at 22 s from now on
    assert not budget.allows_step()  # 2 * 5 + 22 > 30


def test_log_averages_between_lines_and_stops_on_a_diverged_loss(tmp_path):
    log = TrainingLog(tmp_path / "train_log.jsonl")
    for value in (1.0, 3.0):
        log.add({"term": torch.tensor(value)}, torch.tensor(value))
    record = log.flush(2, {"lr_factor": 1.0})
    assert record["loss"] == 2.0 and record["term"] == 2.0
    assert json.loads((tmp_path / "train_log.jsonl").read_text())["step"] == 2
    log.add({}, torch.tensor(float("nan")))
    with pytest.raises(RuntimeError, match="at step 3"):
        log.flush(3, {})
