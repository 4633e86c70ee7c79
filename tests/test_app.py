"""The Gradio app as an API user meets it: `python app.py` in a subprocess, called with gradio_client."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
import trimesh
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from gradio_client.utils import Status
from PIL import Image

# image, seed, randomize seed, DDIM steps, guidance, mesh resolution, samples averaged, use the centre if no face
SETTINGS = (4, False, 2, 1.0, 32, 2, False)


@pytest.fixture(scope="module")
def client(app_url, tmp_path_factory) -> Client:
    return Client(app_url, download_files=str(tmp_path_factory.mktemp("downloads")), verbose=False)


def _coloured_mesh(path: str) -> trimesh.Trimesh:
    mesh = trimesh.load(path, force="mesh")
    assert len(mesh.vertices) > 100 and len(mesh.faces) > 100
    assert mesh.visual.kind == "vertex" and mesh.visual.vertex_colors.shape == (len(mesh.vertices), 4)
    return mesh


def test_only_reconstruct_transfer_and_expression_are_public(client):
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
        "/reconstruct",
        "/transfer",
        "/expression",
    }


def test_reconstruct_returns_crop_coloured_glb_downloads_seed_and_timings(client, face_photo_file):
    crop, glb, downloads, seed, details = client.predict(
        handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct"
    )

    _coloured_mesh(glb)
    assert sorted(path.rsplit(".", 1)[-1] for path in downloads) == ["glb", "obj", "ply"]
    assert crop.endswith(".png")
    assert seed == 4 and details["seed"] == 4
    assert {"crop", "encode", "diffusion", "extraction", "colour", "total"} <= set(details["seconds"])


def test_transfer_returns_a_coloured_glb(client, face_photo_file):
    glb, downloads, seed, details = client.predict(
        handle_file(face_photo_file), handle_file(face_photo_file), *SETTINGS, api_name="/transfer"
    )
    _coloured_mesh(glb)
    assert len(downloads) == 3 and seed == 4 and details["faces"] > 0


def test_bad_photos_get_the_sentence_and_the_server_keeps_serving(
    client, no_face_photo_file, not_an_image_file, face_photo_file
):
    with pytest.raises(AppError, match="No face was found"):
        client.predict(handle_file(no_face_photo_file), *SETTINGS, api_name="/reconstruct")
    with pytest.raises(AppError, match="not an image we can read"):
        client.predict(handle_file(not_an_image_file), *SETTINGS, api_name="/reconstruct")

    # the explicit choice: use the centre of a face-less photo
    _, glb, _, _, details = client.predict(
        handle_file(no_face_photo_file), *SETTINGS[:-1], True, api_name="/reconstruct"
    )
    _coloured_mesh(glb)
    assert any("centre" in warning for warning in details["warnings"])

    _, glb, _, _, _ = client.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
    _coloured_mesh(glb)


def test_missing_photos_are_rejected_before_queueing(client, face_photo_file):
    with pytest.raises(ValidationError, match="Please upload a photo first"):
        client.predict(None, *SETTINGS, api_name="/reconstruct")
    with pytest.raises(ValidationError, match="photo whose expression"):
        client.predict(handle_file(face_photo_file), None, *SETTINGS, api_name="/transfer")


@pytest.mark.parametrize(
    ("position", "value", "sentence"),
    [
        (2, 2.5, "The number of DDIM steps must be a whole number from 1 to 100; got 2.5."),
        (2, "abc", "The number of DDIM steps must be a whole number from 1 to 100; got 'abc'."),
        (3, None, "The guidance scale must be a number from 0 to 10; got None."),
        (4, 320, "The mesh resolution (on this CPU server) must be a whole number from 32 to 256; got 320."),
        (5, 0, "The number of samples averaged must be a whole number from 1 to 32; got 0."),
    ],
)
def test_bad_settings_are_refused_before_queueing_with_the_parameter_and_its_range(
    client, face_photo_file, position, value, sentence
):
    settings = list(SETTINGS)
    settings[position] = value
    with pytest.raises(ValidationError) as refused:
        client.predict(handle_file(face_photo_file), *settings, api_name="/reconstruct")
    assert sentence in str(refused.value)
    with pytest.raises(ValidationError) as refused:
        client.predict(handle_file(face_photo_file), handle_file(face_photo_file), *settings, api_name="/transfer")
    assert sentence in str(refused.value)


def test_a_transfer_error_names_the_photo_it_is_about(client, face_photo_file, no_face_photo_file):
    with pytest.raises(AppError, match=r"^Expression photo: No face was found"):
        client.predict(handle_file(face_photo_file), handle_file(no_face_photo_file), *SETTINGS, api_name="/transfer")
    with pytest.raises(AppError, match=r"^Identity photo: No face was found"):
        client.predict(handle_file(no_face_photo_file), handle_file(face_photo_file), *SETTINGS, api_name="/transfer")


def test_the_details_say_how_the_face_was_found(client, face_photo_file):
    *_, details = client.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
    assert details["face"]["found"] and details["face"]["photo_turned_deg"] == 0
    assert details["face"]["head_size_px"] > 100


def test_the_transfer_details_name_each_photos_face(client, face_photo_file, no_face_photo_file):
    """The `face` block holds one block per photo, named (it was the identity photo's alone, unnamed), and each
    warning names its photo (the identity photo's did not)."""
    *_, details = client.predict(
        handle_file(no_face_photo_file), handle_file(face_photo_file), *SETTINGS[:-1], True, api_name="/transfer"
    )
    assert set(details["face"]) == {"identity_photo", "expression_photo"}
    identity, expression = details["face"]["identity_photo"], details["face"]["expression_photo"]
    assert not identity["found"] and identity["head_size_px"] is None  # the centre of the cup photo
    assert expression["found"] and expression["head_size_px"] > 100
    assert any("centre" in warning for warning in details["warnings"])
    assert all(warning.startswith(("Identity photo: ", "Expression photo: ")) for warning in details["warnings"])


# Enough work for the tiny model to still be running when its client leaves: 100 steps × 32 samples, 192³.
SLOW_SETTINGS = (4, False, 100, 1.0, 192, 32, False)
_VANISHING_CLIENT = """
import os, sys, time
from gradio_client import Client, handle_file
from gradio_client.utils import Status
job = Client(sys.argv[1], verbose=False).submit(handle_file(sys.argv[2]), *eval(sys.argv[3]), api_name="/reconstruct")
deadline = time.monotonic() + 60
while job.status().code not in (Status.PROCESSING, Status.PROGRESS) and time.monotonic() < deadline:
    time.sleep(0.05)
os._exit(0)  # the connection drops as when a browser tab is closed: no goodbye
"""


def _processing(job) -> None:
    deadline = time.monotonic() + 60
    while (code := job.status().code) not in (Status.PROCESSING, Status.PROGRESS):
        assert code != Status.FINISHED, "the slow request ended before it could be abandoned: make it slower"
        assert time.monotonic() < deadline, f"the slow request never started ({code})"
        time.sleep(0.05)


@pytest.mark.parametrize("leaving", ["cancel", "disconnect"])
def test_a_request_whose_client_leaves_is_stopped_and_the_next_one_is_served(
    leaving, app_url, app_workdir, client, face_photo_file, tmp_path
):
    log = app_workdir / "server.log"
    stopped_before = log.read_text().count("Stopped after")
    if leaving == "cancel":
        job = Client(app_url, download_files=str(tmp_path), verbose=False).submit(
            handle_file(face_photo_file), *SLOW_SETTINGS, api_name="/reconstruct"
        )
        _processing(job)
        job.cancel()
    else:
        subprocess.run(
            [sys.executable, "-c", _VANISHING_CLIENT, app_url, str(face_photo_file), repr(SLOW_SETTINGS)],
            check=True,
            timeout=120,
        )
    deadline = time.monotonic() + 60
    while log.read_text().count("Stopped after") == stopped_before:
        assert time.monotonic() < deadline, f"the abandoned request was not stopped:\n{log.read_text()[-2000:]}"
        time.sleep(0.1)
    assert "the client that asked for it went away" in log.read_text()
    _, glb, _, seed, _ = client.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
    assert seed == 4 and glb.endswith(".glb")


def _files_named(folder: Path, *needles: str) -> list[Path]:
    return [path for path in folder.rglob("*") if path.is_file() and any(needle in path.name for needle in needles)]


def test_an_api_callers_photos_and_results_are_removed_soon_after_the_answer(
    client, app_workdir, app_keep_results_s, face_photo_file, no_face_photo_file, tmp_path
):
    cache = app_workdir / "gradio-cache"
    photo = tmp_path / "only_in_this_test.png"
    Image.open(face_photo_file).save(photo)
    blank = tmp_path / "blank_for_this_test.png"
    Image.open(no_face_photo_file).save(blank)
    settings = (424242, *SETTINGS[1:])
    crop, glb, downloads, *_ = client.predict(handle_file(photo), *settings, api_name="/reconstruct")
    assert Path(glb).is_file() and Path(crop).is_file() and all(Path(path).is_file() for path in downloads)
    served = _files_named(cache, "seed424242", "face_crop", photo.name)
    # the mesh in three formats and the crop, served where they were written (not copied), and the photo
    assert {path.suffix for path in served} >= {".glb", ".obj", ".ply", ".png"}, served
    assert not any("seed424242" in path.name for path in cache.rglob("*") if "diffnphr-results-" not in str(path))
    with pytest.raises(AppError, match="No face was found"):
        client.predict(handle_file(blank), *settings, api_name="/reconstruct")
    deadline = time.monotonic() + app_keep_results_s + 10
    while left := _files_named(cache, "seed424242", photo.name, blank.name):
        assert time.monotonic() < deadline, f"still there {app_keep_results_s} s after the answer: {left}"
        time.sleep(0.2)


def test_the_photo_of_a_request_cancelled_while_waiting_is_removed(
    app_url, app_workdir, app_keep_results_s, face_photo_file, tmp_path
):
    photo = tmp_path / "cancelled_while_waiting.png"
    pixels = Image.open(face_photo_file).convert("RGB")
    pixels.putpixel((0, 0), (1, 2, 3))  # content of its own: no other test uploads the same file
    pixels.save(photo)
    running = Client(app_url, download_files=str(tmp_path), verbose=False).submit(
        handle_file(face_photo_file), *SLOW_SETTINGS, api_name="/reconstruct"
    )
    _processing(running)
    waiting = Client(app_url, download_files=str(tmp_path), verbose=False).submit(
        handle_file(photo), *SETTINGS, api_name="/reconstruct"
    )
    deadline = time.monotonic() + 60
    while waiting.status().code != Status.IN_QUEUE:
        assert time.monotonic() < deadline, f"the second request never queued ({waiting.status().code})"
        time.sleep(0.05)
    cache = app_workdir / "gradio-cache"
    assert _files_named(cache, photo.name), "the waiting request's photo should be in the cache"
    waiting.cancel()  # Gradio drops it from the queue without ever running it
    running.cancel()
    deadline = time.monotonic() + 3 * app_keep_results_s + 15
    while left := _files_named(cache, photo.name):
        assert time.monotonic() < deadline, f"the cancelled request's photo is still there: {left}"
        time.sleep(0.2)


def test_a_full_queue_is_refused_in_words(one_waiting_app_url, face_photo_file, tmp_path):
    running, waiting = (
        Client(one_waiting_app_url, download_files=str(tmp_path), verbose=False).submit(
            handle_file(face_photo_file), *SLOW_SETTINGS, api_name="/reconstruct"
        )
        for _ in range(2)
    )
    try:
        _processing(running)
        deadline = time.monotonic() + 60
        while waiting.status().code != Status.IN_QUEUE:
            assert time.monotonic() < deadline, f"the second request never queued ({waiting.status().code})"
            time.sleep(0.05)
        late = Client(one_waiting_app_url, download_files=str(tmp_path), verbose=False)
        with pytest.raises(ValidationError, match="The server is busy: 1 request is already waiting"):
            late.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
        with pytest.raises(ValidationError, match="The server is busy"):
            late.predict(handle_file(face_photo_file), handle_file(face_photo_file), *SETTINGS, api_name="/transfer")
    finally:
        waiting.cancel()
        running.cancel()
