"""The batcher a GPU server puts before the pipeline: concurrent requests run together, each caller gets its own."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from diffnphr.serving.batching import BatchingOptions, RequestBatcher
from diffnphr.serving.queue import RequestCancelled


class FakePipeline:
    """`run_batch` of a pretend pipeline: records each batch, reports `steps` progress steps, answers each request.

    A request "bad" gets its own error back; a batch holding "explode" fails as a whole. `release`, when
    given, holds the first batch until it is set.
    """

    def __init__(self, steps: int = 3, step_s: float = 0.0, release: threading.Event | None = None) -> None:
        self.batches: list[list[str]] = []
        self.steps_done: list[int] = []
        self.steps, self.step_s, self.release = steps, step_s, release
        self.started = threading.Event()
        self.busy = threading.Lock()

    def __call__(self, requests: list[str], progress) -> list:
        with self.busy:
            self.batches.append(list(requests))
            self.started.set()
            if self.release is not None and len(self.batches) == 1:
                self.release.wait(10)
            if "explode" in requests:
                raise RuntimeError("the GPU fell over")
            done = 0
            for step in range(self.steps):
                time.sleep(self.step_s)
                progress("working", (step + 1) / self.steps)
                done += 1
            self.steps_done.append(done)
            return [ValueError(f"{r} is not a photo") if r == "bad" else f"head of {r}" for r in requests]


def submit_all(batcher: RequestBatcher, requests: list[str], **kwargs) -> list:
    """Submit every request from its own thread at once; each thread's outcome (result or exception), in order."""
    barrier = threading.Barrier(len(requests))

    def one(request: str):
        barrier.wait()
        try:
            return batcher.submit(request, **kwargs)
        except Exception as error:
            return error

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


def test_requests_arriving_within_the_window_run_as_one_batch_and_each_gets_its_own_result():
    fake = FakePipeline()
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=1.0))
    assert submit_all(batcher, ["a", "b", "c"]) == ["head of a", "head of b", "head of c"]
    assert len(fake.batches) == 1 and sorted(fake.batches[0]) == ["a", "b", "c"]
    batcher.close()


def test_a_batch_holds_at_most_max_batch_size_requests():
    fake = FakePipeline()
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=2, window_s=0.5))
    requests = [f"r{index}" for index in range(5)]
    assert submit_all(batcher, requests) == [f"head of {r}" for r in requests]
    assert sorted(len(batch) for batch in fake.batches) == [1, 2, 2]
    batcher.close()


def test_a_request_arriving_while_a_batch_runs_goes_in_the_next_one():
    release = threading.Event()
    fake = FakePipeline(release=release)
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=0.05))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(batcher.submit, "first")
        assert fake.started.wait(5)
        second = pool.submit(batcher.submit, "second")
        time.sleep(0.2)
        release.set()
        assert (first.result(10), second.result(10)) == ("head of first", "head of second")
    assert fake.batches == [["first"], ["second"]]
    batcher.close()


def test_an_error_stays_with_its_request():
    batcher = RequestBatcher(FakePipeline(), BatchingOptions(max_batch_size=8, window_s=1.0))
    good, bad, other = submit_all(batcher, ["good", "bad", "other"])
    assert (good, other) == ("head of good", "head of other")
    assert isinstance(bad, ValueError) and str(bad) == "bad is not a photo"
    batcher.close()


def test_a_batch_that_fails_as_a_whole_runs_each_request_again_alone():
    fake = FakePipeline()
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=1.0))
    good, explode = submit_all(batcher, ["good", "explode"])
    assert good == "head of good"
    assert isinstance(explode, RuntimeError) and "fell over" in str(explode)
    assert sorted(len(batch) for batch in fake.batches) == [1, 1, 2]
    batcher.close()


def test_cancelling_one_request_leaves_the_others_running():
    fake = FakePipeline(steps=6, step_s=0.05)
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=1.0, poll_s=0.01))
    seen: dict[str, int] = {}

    def progress_of(name: str):
        def report(stage: str, fraction: float) -> None:
            seen[name] = seen.get(name, 0) + 1
            if name == "leaves" and fraction > 0.3:
                raise RequestCancelled("after 0.1 s: the client that asked for it went away")

        return report

    barrier = threading.Barrier(3)

    def one(name: str):
        barrier.wait()
        try:
            return batcher.submit(name, progress=progress_of(name))
        except RequestCancelled as error:
            return error

    with ThreadPoolExecutor(3) as pool:
        outcomes = dict(zip(["a", "leaves", "b"], pool.map(one, ["a", "leaves", "b"])))
    assert isinstance(outcomes["leaves"], RequestCancelled)
    assert (outcomes["a"], outcomes["b"]) == ("head of a", "head of b")
    assert fake.steps_done == [6]  # the batch ran to its end for the two still there
    assert seen["a"] == seen["b"] == 6 and seen["leaves"] == 2
    batcher.close()


def test_a_request_cancelled_while_it_waits_for_its_batch_is_left_out():
    fake = FakePipeline()
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=0.6, poll_s=0.01))

    def gone() -> None:
        raise RequestCancelled("after 0.0 s: the client that asked for it went away")

    with ThreadPoolExecutor(2) as pool:
        stays = pool.submit(batcher.submit, "stays")
        time.sleep(0.05)
        leaves = pool.submit(batcher.submit, "leaves", check=gone)
        with pytest.raises(RequestCancelled):
            leaves.result(5)
        assert stays.result(5) == "head of stays"
    assert fake.batches == [["stays"]]
    batcher.close()


def test_a_batch_whose_requests_have_all_gone_stops():
    fake = FakePipeline(steps=20, step_s=0.05)
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=0.5, poll_s=0.01))

    def leave(stage: str, fraction: float) -> None:
        raise RequestCancelled("after 0.1 s: the client that asked for it went away")

    outcomes = submit_all(batcher, ["a", "b"], progress=leave)
    assert all(isinstance(outcome, RequestCancelled) for outcome in outcomes)
    batcher.close()  # waits for the worker: the batch has stopped
    assert fake.steps_done == []  # stopped mid-way (a finished batch records its 20 steps)


def test_progress_reaches_each_caller_in_its_own_thread():
    batcher = RequestBatcher(FakePipeline(), BatchingOptions(max_batch_size=8, window_s=1.0))
    threads: dict[str, set[int]] = {}

    def one(name: str) -> int:
        batcher.submit(name, progress=lambda stage, f: threads.setdefault(name, set()).add(threading.get_ident()))
        return threading.get_ident()

    with ThreadPoolExecutor(2) as pool:
        callers = dict(zip(["a", "b"], pool.map(one, ["a", "b"])))
    assert threads == {"a": {callers["a"]}, "b": {callers["b"]}}
    batcher.close()


def test_work_run_alone_never_runs_beside_a_batch():
    release = threading.Event()
    fake = FakePipeline(release=release)
    batcher = RequestBatcher(fake, BatchingOptions(max_batch_size=8, window_s=0.05))

    def transfer(report) -> str:
        assert fake.busy.acquire(blocking=False), "ran beside a batch"
        fake.busy.release()
        report("transferring", 1.0)
        return "transferred"

    with ThreadPoolExecutor(2) as pool:
        batch = pool.submit(batcher.submit, "a")
        assert fake.started.wait(5)
        alone = pool.submit(batcher.run_alone, transfer)
        time.sleep(0.1)
        release.set()
        assert (batch.result(10), alone.result(10)) == ("head of a", "transferred")
    batcher.close()
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit("late")


def test_on_the_cpu_each_request_runs_alone_in_its_callers_thread():
    options = BatchingOptions.for_device("cpu")
    assert not options.enabled and BatchingOptions.for_device("cuda").enabled
    ran_in: list[tuple[int, list[str]]] = []

    def run_batch(requests: list[str], progress) -> list[str]:
        ran_in.append((threading.get_ident(), list(requests)))
        progress("working", 1.0)
        return [f"head of {r}" for r in requests]

    batcher = RequestBatcher(run_batch, options)
    checked = []
    assert batcher.submit("a", check=lambda: checked.append(1)) == "head of a"
    assert ran_in == [(threading.get_ident(), ["a"])] and checked == [1]
    with pytest.raises(ValueError, match="not a photo"):
        RequestBatcher(lambda requests, progress: [ValueError("it is not a photo")], options).submit("bad")
    assert batcher.run_alone(lambda report: "transferred") == "transferred"


def test_bad_options_are_refused_in_words():
    with pytest.raises(ValueError, match="max_batch_size must be a whole number of at least 1"):
        BatchingOptions(max_batch_size=0)
    with pytest.raises(ValueError, match="window_s must be at least 0"):
        BatchingOptions(window_s=-1.0)


def test_the_pipelines_batches_give_each_request_its_head_or_its_own_error(
    tiny_weights_dir, face_photo_file, no_face_photo_file
):
    import numpy as np

    from diffnphr.face import NoFaceError
    from diffnphr.pipeline import HeadReconstructionPipeline
    from diffnphr.serving.batching import ReconstructionRequest, reconstruction_batches

    pipeline = HeadReconstructionPipeline.from_pretrained(tiny_weights_dir, device="cpu")
    run_batch, sizes = reconstruction_batches(pipeline), []

    def recorded(requests, progress):
        sizes.append(len(requests))
        return run_batch(requests, progress)

    batcher = RequestBatcher(recorded, BatchingOptions(max_batch_size=4, window_s=2.0))
    settings = [pipeline.settings(seed=seed, resolution=24) for seed in (4, 0, 6)]
    requests = [
        ReconstructionRequest(face_photo_file, settings[0]),
        ReconstructionRequest(no_face_photo_file, settings[1]),
        ReconstructionRequest(face_photo_file, settings[2]),
    ]
    barrier = threading.Barrier(3)

    def one(request):
        barrier.wait()
        try:
            return batcher.submit(request)
        except Exception as error:
            return error

    with ThreadPoolExecutor(3) as pool:
        first, no_face, third = pool.map(one, requests)
    batcher.close()
    assert sizes == [3]
    assert isinstance(no_face, NoFaceError) and str(no_face).startswith("No face")  # this person's photo, unnamed
    for result, chosen in ((first, settings[0]), (third, settings[2])):
        alone = pipeline(face_photo_file, chosen)
        assert result.seed == chosen.seed and result.mesh.vertices.shape == alone.mesh.vertices.shape
        assert np.abs(result.mesh.vertices - alone.mesh.vertices).max() * 250 <= 0.05
