"""What a server accepts from untrusted callers, when it says it is busy, and the files it keeps for them (no
models needed)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import pytest

from diffnphr.serving import (
    CPU_MAX_RESOLUTION,
    GPU_MAX_RESOLUTION,
    ClientWatch,
    QueueAdmission,
    RequestCancelled,
    RequestError,
    ServedFiles,
    ServingLimits,
    read_request,
    request_problems,
)

CPU = ServingLimits.for_device("cpu")
GOOD = dict(seed=7, randomize_seed=False, steps=10, guidance_scale=1.0, resolution=128, samples=8, allow_no_face=False)


def test_good_values_become_the_pipeline_settings():
    assert read_request(CPU, **GOOD) == {
        "seed": 7,
        "steps": 10,
        "guidance_scale": 1.0,
        "resolution": 128,
        "samples": 8,
        "allow_no_face": False,
        "refine": False,  # optional: left out, refinement stays off
    }
    assert read_request(CPU, **GOOD, refine=True)["refine"] is True
    assert "refine" in request_problems(CPU, **GOOD, refine="maybe")
    # what JSON clients send for whole numbers, and numbers typed as text, are read as meant
    read = read_request(CPU, **{**GOOD, "steps": 12.0, "samples": "4", "guidance_scale": "2.5"})
    assert (read["steps"], read["samples"], read["guidance_scale"]) == (12, 4, 2.5)
    assert isinstance(read["steps"], int) and isinstance(read["samples"], int)


def test_a_randomised_seed_ignores_the_seed_value():
    assert read_request(CPU, **{**GOOD, "randomize_seed": True, "seed": "not a number"})["seed"] is None


@pytest.mark.parametrize(
    ("parameter", "value", "sentence"),
    [
        ("steps", "abc", "The number of DDIM steps must be a whole number from 1 to 100; got 'abc'."),
        ("steps", None, "The number of DDIM steps must be a whole number from 1 to 100; got None."),
        ("steps", 2.5, "The number of DDIM steps must be a whole number from 1 to 100; got 2.5."),
        ("steps", 0, "The number of DDIM steps must be a whole number from 1 to 100; got 0."),
        ("steps", True, "The number of DDIM steps must be a whole number from 1 to 100; got True."),
        ("guidance_scale", math.inf, "The guidance scale must be a number from 0 to 10; got inf."),
        ("guidance_scale", float("1e400"), "The guidance scale must be a number from 0 to 10; got inf."),
        ("guidance_scale", "nan", "The guidance scale must be a number from 0 to 10; got 'nan'."),
        ("guidance_scale", -1, "The guidance scale must be a number from 0 to 10; got -1."),
        ("seed", -1, "The seed must be a whole number from 0 to 2147483647; got -1."),
        ("samples", 33, "The number of samples averaged must be a whole number from 1 to 32; got 33."),
        ("allow_no_face", "yes", "The centre-crop choice must be true or false; got 'yes'."),
        ("randomize_seed", 1, "Randomize seed must be true or false; got 1."),
    ],
)
def test_each_bad_value_gets_one_sentence_naming_the_parameter_and_its_range(parameter, value, sentence):
    with pytest.raises(RequestError) as refused:
        read_request(CPU, **{**GOOD, parameter: value})
    assert refused.value.parameter == parameter and str(refused.value) == sentence


def test_the_resolution_limit_depends_on_the_device_and_is_named_not_clamped():
    with pytest.raises(
        RequestError, match=f"on this CPU server\\) must be a whole number from 32 to {CPU_MAX_RESOLUTION}"
    ):
        read_request(CPU, **{**GOOD, "resolution": CPU_MAX_RESOLUTION + 16})
    gpu = ServingLimits.for_device("cuda")
    assert read_request(gpu, **{**GOOD, "resolution": GPU_MAX_RESOLUTION})["resolution"] == GPU_MAX_RESOLUTION
    with pytest.raises(
        RequestError, match=f"on this GPU server\\) must be a whole number from 32 to {GPU_MAX_RESOLUTION}"
    ):
        read_request(gpu, **{**GOOD, "resolution": 1024})


def test_every_bad_value_is_listed_for_the_form():
    problems = request_problems(CPU, **{**GOOD, "steps": "x", "resolution": 999, "samples": 0})
    assert list(problems) == ["steps", "resolution", "samples"]
    assert request_problems(CPU, **GOOD) == {}


def test_long_values_are_not_echoed_whole():
    with pytest.raises(RequestError) as refused:
        read_request(CPU, **{**GOOD, "steps": "/very/long/absolute/path/to/some/file/on/the/server.png"})
    assert len(str(refused.value)) < 140 and "server.png" not in str(refused.value)


def _served(tmp_path, keep_s=0.05, max_age_s=3600):
    """ServedFiles over `tmp_path`, with uploads in `tmp_path/uploads/<hash>/` as Gradio lays them out."""
    uploads = tmp_path / "uploads"
    files = ServedFiles(tmp_path / "results", keep_s, max_age_s, lambda path: Path(path).is_relative_to(uploads))
    return files, uploads


def _upload(uploads: Path, name: str) -> str:
    path = uploads / f"hash-{name}" / name
    path.parent.mkdir(parents=True)
    path.write_bytes(b"photo")
    return str(path)


def _gone_soon(*paths, within_s=5.0) -> bool:
    deadline = time.monotonic() + within_s
    while any(Path(path).exists() for path in paths) and time.monotonic() < deadline:
        time.sleep(0.02)
    return not any(Path(path).exists() for path in paths)


def test_an_api_callers_result_and_upload_go_soon_after_the_answer(tmp_path):
    files, uploads = _served(tmp_path)
    photo = _upload(uploads, "me.png")
    files.hold("api", [photo])
    with files.request("api", [photo]) as run:
        (run.folder() / "head.glb").write_bytes(b"glb")
    assert _gone_soon(run.made, photo)
    assert not Path(photo).parent.exists()  # Gradio's per-upload folder too


def test_an_upload_stays_while_another_admitted_request_uses_it(tmp_path):
    files, uploads = _served(tmp_path)
    photo = _upload(uploads, "shared.png")  # the same photo from two callers is one file
    files.hold("first", [photo])
    files.hold("second", [photo])
    files.finished("first", [photo], None)
    time.sleep(0.3)
    assert Path(photo).exists() and files.held(photo)
    files.finished("second", [photo], None)
    assert _gone_soon(photo)


def test_an_upload_goes_at_once_when_its_request_is_over_if_it_is_old_enough(tmp_path):
    files, uploads = _served(tmp_path, keep_s=60)
    photo = _upload(uploads, "old.png")
    past = time.time() - 61
    os.utime(photo, (past, past))  # uploaded over keep_s ago
    files.hold("api", [photo])
    files.finished("api", [photo], None)
    assert not Path(photo).exists()


def test_a_photo_uploaded_again_is_not_removed_before_its_request_is_admitted(tmp_path):
    files, uploads = _served(tmp_path, keep_s=0.5)
    photo = _upload(uploads, "again.png")
    files.hold("first", [photo])
    files.finished("first", [photo], None)  # uploaded just now: it goes when it is 0.5 s old
    time.sleep(0.3)
    Path(photo).write_bytes(b"photo")  # the same photo uploaded again (same hash, same path), not yet asked for
    time.sleep(0.4)
    assert Path(photo).exists(), "a removal due for the first upload took the second"
    assert _gone_soon(photo)  # nobody asked for it: it goes once it is as old as any other


def test_work_that_was_never_admitted_gives_back_no_hold(tmp_path):
    files, uploads = _served(tmp_path)
    photo = _upload(uploads, "queued.png")
    files.hold("waiting", [photo])
    files.finished("example-run", [photo], None)  # e.g. an example run, which no validator admitted
    time.sleep(0.3)
    assert Path(photo).exists()


def test_a_pages_results_and_uploads_stay_until_the_page_closes(tmp_path):
    files, uploads = _served(tmp_path)
    photo = _upload(uploads, "page.png")
    files.page_opened("page")
    files.hold("page", [photo])
    with files.request("page", [photo]) as run:
        (run.folder() / "head.glb").write_bytes(b"glb")
    time.sleep(0.3)
    assert run.made.exists() and Path(photo).exists()  # its download links and its photo still work
    files.page_closed("page")
    assert not run.made.exists()
    assert _gone_soon(photo)


def test_a_closed_page_gives_back_the_photo_of_a_request_that_was_still_waiting(tmp_path):
    files, uploads = _served(tmp_path, keep_s=60)
    photo = _upload(uploads, "waiting.png")
    past = time.time() - 61
    os.utime(photo, (past, past))
    files.page_opened("page")
    files.hold("page", [photo])  # admitted, still in the queue when the tab closes: it will never run
    files.page_closed("page")
    assert not Path(photo).exists() and not files.held(photo)


def _old_upload(uploads: Path, name: str) -> str:
    path = _upload(uploads, name)
    past = time.time() - 3600
    os.utime(path, (past, past))
    return path


def test_a_session_whose_request_left_the_queue_unanswered_gives_back_its_photo(tmp_path):
    queued = {"running-client"}
    uploads = tmp_path / "uploads"
    files = ServedFiles(
        tmp_path / "results", 0.3, 3600, lambda path: Path(path).is_relative_to(uploads), lambda: set(queued)
    )
    photo, theirs = _old_upload(uploads, "cancelled.png"), _old_upload(uploads, "running.png")
    files.hold("cancelled-client", [photo])  # admitted, then cancelled while waiting: Gradio never runs it
    files.hold("running-client", [theirs])
    files.give_back_abandoned()  # first look: missing from the queue, but maybe only for a moment
    assert Path(photo).exists()
    assert _gone_soon(photo, within_s=3)  # the timer's second look, keep_s later, gives it back
    assert Path(theirs).exists() and files.held(theirs)


def test_a_session_missing_from_the_queue_for_a_moment_keeps_its_photo(tmp_path):
    looks = iter([set(), {"moving-client"}, {"moving-client"}, {"moving-client"}])
    uploads = tmp_path / "uploads"
    files = ServedFiles(
        tmp_path / "results", 0.2, 3600, lambda path: Path(path).is_relative_to(uploads), lambda: next(looks)
    )
    photo = _old_upload(uploads, "moving.png")
    files.hold("moving-client", [photo])
    files.give_back_abandoned()  # caught between the validator and the queue (or the queue and a worker)
    time.sleep(0.6)  # the timer's second look finds it queued
    assert Path(photo).exists() and files.held(photo)


def test_a_refused_request_leaves_no_folder_and_files_that_are_not_uploads_are_never_deleted(tmp_path):
    files, _ = _served(tmp_path)
    example = tmp_path / "examples" / "astronaut.png"
    example.parent.mkdir()
    example.write_bytes(b"example")
    files.hold("api", [str(example)])
    with pytest.raises(ValueError), files.request("api", [str(example)]):
        raise ValueError("No face was found")
    time.sleep(0.3)
    assert example.exists()
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


def test_results_older_than_the_limit_go_with_the_next_one(tmp_path):
    files, _ = _served(tmp_path, max_age_s=60)
    files.page_opened("page")
    old = files.new_run("page")
    past = time.time() - 120
    os.utime(old, (past, past))
    files.new_run("another")  # every new result sweeps what has grown old, open page or not
    assert not old.exists()


def test_the_busy_sentence_says_how_many_wait_and_for_how_long():
    waiting = [0]
    admission = QueueAdmission(2, lambda: waiting[0])
    waiting[0] = 1
    assert admission.refusal() is None
    waiting[0] = 2
    assert admission.refusal() == (
        "The server is busy: 2 requests are already waiting. Please try again in a few minutes."
    )
    for seconds in (5.0, 6.0, 100.0):
        admission.record(seconds)
    assert admission.refusal() == (
        "The server is busy: 2 requests are already waiting (about 12 s at 6 s each). "
        "Please try again in a few minutes."
    )
    waiting[0] = 40
    assert "40 requests are already waiting (about 4 min at 6 s each)" in admission.refusal()
    assert QueueAdmission(1, lambda: 1).refusal().startswith("The server is busy: 1 request is already waiting.")


def test_a_watched_request_stops_once_its_clients_job_is_dead_or_dropped_and_not_for_others():
    jobs = [("someone else", True), ("me", True)]
    watch = ClientWatch(lambda: jobs, "me")
    watch.check()  # still wanted
    jobs[0] = ("someone else", False)  # another client leaving changes nothing here
    watch.check()
    jobs[1] = ("me", False)  # the queue saw my event stream close
    with pytest.raises(RequestCancelled, match=r"after \d+\.\d s: the client that asked for it went away"):
        watch.check()
    jobs.pop()  # or it dropped my job on a cancel
    with pytest.raises(RequestCancelled):
        watch.check()


def test_work_run_outside_the_queue_is_never_stopped():
    watch = ClientWatch(lambda: [("someone else", True)], "me")
    assert not watch.armed
    watch.check()
