"""The app with weights that refine (a factor map): the refine switch, its seconds in the details, and the
expression sliders' endpoint, which re-decodes the session's last head."""

from __future__ import annotations

import pytest

pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file

from tests.conftest import _served_app

SETTINGS = (4, False, 2, 1.0, 32, 2, False)  # seed, randomize, steps, guidance, resolution, samples, allow_no_face


@pytest.fixture(scope="module")
def refining_url(tiny_refining_weights_dir, tmp_path_factory):
    with _served_app(tiny_refining_weights_dir, tmp_path_factory.mktemp("refining_app")) as url:
        yield url


def test_reconstruct_refines_when_asked_and_not_by_default(refining_url, face_photo_file):
    client = Client(refining_url, verbose=False)
    *_, on = client.predict(handle_file(face_photo_file), *SETTINGS, True, api_name="/reconstruct")
    *_, off = client.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
    assert on["seconds"]["refine"] >= 0 and "refine" not in off["seconds"]
    *_, moved = client.predict(handle_file(face_photo_file), handle_file(face_photo_file), *SETTINGS, True,
                               api_name="/transfer")  # fmt: skip
    assert "refine" in moved["seconds"]


def test_the_expression_sliders_re_decode_the_last_head(refining_url, face_photo_file):
    client = Client(refining_url, verbose=False)
    with pytest.raises(Exception, match="Reconstruct a head first"):
        client.predict(0.5, 0.0, 0.0, 0.0, 0.0, api_name="/expression")
    client.predict(handle_file(face_photo_file), *SETTINGS, api_name="/reconstruct")
    glb, downloads, details = client.predict(0.8, 0.5, 0.0, 0.2, 0.0, api_name="/expression")
    assert glb.endswith(".glb") and sorted(path.rsplit(".", 1)[-1] for path in downloads) == ["glb", "obj", "ply"]
    assert {"refine", "extraction", "colour"} <= set(details["seconds"]) and details["seed"] == 4
    with pytest.raises(Exception, match="from 0 to 1"):
        client.predict(1.5, 0.0, 0.0, 0.0, 0.0, api_name="/expression")
