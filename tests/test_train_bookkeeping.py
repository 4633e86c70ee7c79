"""What every trainer shares: the time box of one GPU command, and a log that stops on a diverged loss."""

from __future__ import annotations

import json
import time

import pytest
import torch

from diffnphr.train.log import TrainingLog
from diffnphr.train.loop import LoopSchedule, StepResult, TimeBox, run_training


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


class _CountingTrainee:
    """A trainer whose loss is known: step k has loss k; it records what the loop asked of it."""

    def __init__(self, folder):
        self.folder, self.steps, self.saved, self.validations = folder, [], [], 0

    def train_step(self, step):
        self.steps.append(step)
        return StepResult({"term": torch.tensor(float(step))}, torch.tensor(float(step)), {"lr_factor": 1.0})

    def validate(self):
        self.validations += 1
        return {"val_loss": 0.5}

    def save(self, step):
        self.saved.append(step)
        return self.folder / f"checkpoint-{step}"


def test_the_loop_logs_validates_checkpoints_and_stops_where_it_should(tmp_path, caplog):
    trainee = _CountingTrainee(tmp_path)
    log = TrainingLog(tmp_path / "train_log.jsonl")
    schedule = LoopSchedule(total_steps=10, log_every=4, checkpoint_every=5, validate_every=3)
    with caplog.at_level("INFO", logger="diffnphr.train.loop"):
        outcome = run_training(trainee, schedule, TimeBox(3600, time.monotonic()), log, step=0, last_checkpoint=None)
    assert trainee.steps == list(range(10)) and outcome.step == 10
    assert trainee.saved == [5, 10] and outcome.checkpoint == tmp_path / "checkpoint-10"  # no second save at 10
    assert trainee.validations == 4  # steps 3, 6, 9 and the last
    lines = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 4, 6, 8, 9, 10]  # every log_every, every validation, the end
    # each line averages the steps since the previous one: (0 + 1 + 2) / 3, then step 3 alone
    assert lines[0]["loss"] == 1.0 and lines[1]["loss"] == 3.0 and lines[0]["val_loss"] == 0.5
    assert any("step 10/10" in record.getMessage() and "steps/s" in record.getMessage() for record in caplog.records)


def test_a_resumed_loop_continues_and_a_call_without_steps_saves_nothing(tmp_path):
    trainee = _CountingTrainee(tmp_path)
    schedule = LoopSchedule(total_steps=6, log_every=2, checkpoint_every=100)
    budget = TimeBox(3600, time.monotonic(), stop_after_steps=2)
    log = TrainingLog(tmp_path / "train_log.jsonl")
    outcome = run_training(trainee, schedule, budget, log, step=3, last_checkpoint=tmp_path / "checkpoint-3")
    assert trainee.steps == [3, 4] and trainee.saved == [5] and outcome.step == 5
    idle = _CountingTrainee(tmp_path)
    done = run_training(idle, schedule, TimeBox(3600, time.monotonic()), log, 6, tmp_path / "checkpoint-6")
    assert idle.steps == [] and idle.saved == [] and done.checkpoint == tmp_path / "checkpoint-6"


def test_an_averages_only_slim_checkpoint_travels_half_and_resumes_from_the_averages(tmp_path):
    from diffnphr.train.checkpoints import load_checkpoint, save_checkpoint, slim_checkpoint

    weight, average, step_count = torch.randn(64, 64), torch.randn(64, 64), torch.tensor([7])
    tensors = {"net.weight": weight, "ema.net.weight": average, "net.steps": step_count}
    save_checkpoint(tmp_path, 1, tensors, {"adamw": {}}, {"draws": 1})
    newest = save_checkpoint(tmp_path, 2, tensors, {"adamw": {}}, {"draws": 2})
    full = sum(f.stat().st_size for f in newest.glob("*.safetensors"))
    assert slim_checkpoint(tmp_path, averages_only=True) == newest
    slimmed = sum(f.stat().st_size for f in newest.glob("*.safetensors"))
    assert slimmed < 0.3 * full  # float16 and one copy instead of two float32 ones
    loaded = load_checkpoint(newest)
    assert loaded.optimizers is None and loaded.state["draws"] == 2 and loaded.step == 2
    assert torch.allclose(loaded.tensors["net.weight"].float(), average, atol=1e-2)  # the weight is its average
    assert torch.allclose(loaded.tensors["ema.net.weight"].float(), average, atol=1e-2)
    assert torch.equal(loaded.tensors["net.steps"], step_count)  # what has no average stays
