"""What a server accepts from untrusted callers, and the files it keeps for them (no models needed)."""

from __future__ import annotations

import math
import os
import time

import pytest

from diffnphr.serving import (
    CPU_MAX_RESOLUTION,
    GPU_MAX_RESOLUTION,
    ClientWatch,
    OutputFolders,
    RequestCancelled,
    RequestError,
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
    }
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


def test_output_folders_belong_to_a_session_and_go_with_it_or_with_age(tmp_path):
    folders = OutputFolders(tmp_path, max_age_s=60)
    mine, theirs = folders.new_run("mine"), folders.new_run("theirs")
    assert mine.parent.name == "mine" and mine.is_dir() and theirs.is_dir()
    folders.end_session("mine")
    assert not mine.exists() and theirs.exists()
    old = time.time() - 120
    os.utime(theirs, (old, old))
    folders.new_run("another")  # every new result sweeps what has grown old
    assert not theirs.exists()


def test_a_released_result_folder_goes_soon_after_it_is_served(tmp_path):
    folders = OutputFolders(tmp_path, max_age_s=3600)
    run = folders.new_run("api-user")
    (run / "head.glb").write_bytes(b"glb")
    folders.release(run, after_s=0.05)
    deadline = time.monotonic() + 5
    while run.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not run.exists()


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
