"""The app's handlers with batching on (as on a GPU server): concurrent reconstruct requests go through one pipeline
call, and each user gets their own head, progress and errors; on the CPU, one request at a time as before."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import trimesh

import app
from diffnphr.pipeline import HeadReconstructionPipeline
from diffnphr.serving import ServerOptions, write_example_photos

# seed, randomize seed, DDIM steps, guidance, mesh resolution, samples averaged, use the centre if no face
SETTINGS = (False, 2, 1.0, 32, 2, False)


class Progress:
    """A stand-in for `gr.Progress` that notes each call's fraction and the thread it came from."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, int]] = []

    def __call__(self, fraction: float, desc: str | None = None) -> None:
        self.calls.append((fraction, threading.get_ident()))


def _handler(demo, api_name: str):
    """The function behind a public endpoint, with the concurrency limit Gradio's queue gives it."""
    function = next(fn for fn in demo.fns.values() if fn.api_name == api_name)
    return function.fn, function.concurrency_limit


@pytest.fixture
def pipeline_calls(monkeypatch):
    """The number of photos of every pipeline call (a batch of n photos is one call of n)."""
    calls: list[int] = []
    original = HeadReconstructionPipeline.__call__

    def counted(self, images, *args, **kwargs):
        calls.append(len(images) if isinstance(images, list) else 1)
        return original(self, images, *args, **kwargs)

    monkeypatch.setattr(HeadReconstructionPipeline, "__call__", counted)
    return calls


def _demo(weights, tmp_path, options: ServerOptions):
    pipeline = HeadReconstructionPipeline.from_pretrained(weights, device="cpu")
    (tmp_path / "examples").mkdir()
    return app.build_demo(pipeline, tmp_path / "results", write_example_photos(tmp_path / "examples"), options)


def _head(glb: str) -> tuple[np.ndarray, np.ndarray]:
    """A GLB's vertices and vertex colours (the tiny decoder's shape is one blob for every latent; its colours follow
    the latent, so they tell heads apart)."""
    mesh = trimesh.load(glb, force="mesh")
    return np.asarray(mesh.vertices), np.asarray(mesh.visual.vertex_colors, dtype=np.int16)


def test_concurrent_requests_are_one_pipeline_call_and_each_user_gets_their_own_head(
    tiny_weights_dir, face_photo_file, no_face_photo_file, tmp_path, pipeline_calls
):
    demo = _demo(tiny_weights_dir, tmp_path, ServerOptions(max_batch_size=4, batch_window_s=2.0))
    reconstruct, limit = _handler(demo, "reconstruct")
    assert limit == 4  # Gradio's queue lets a whole batch into the handler at once
    users = [(face_photo_file, 3), (face_photo_file, 11), (no_face_photo_file, 0), (face_photo_file, 7)]
    progress = [Progress() for _ in users]
    barrier = threading.Barrier(len(users))

    def user(index: int):
        photo, seed = users[index]
        barrier.wait()
        try:
            outcome = reconstruct({"path": str(photo)}, seed, *SETTINGS, request=None, progress=progress[index])
        except Exception as error:
            outcome = error
        return outcome, threading.get_ident()

    with ThreadPoolExecutor(len(users)) as pool:
        outcomes, threads = zip(*pool.map(user, range(len(users))))

    assert pipeline_calls == [3]  # the three photos with a face in one call; the one without failed its own crop
    assert "No face was found" in str(outcomes[2])  # that user's own error, not the batch's
    answered = [index for index in range(len(users)) if index != 2]
    assert [outcomes[index][3] for index in answered] == [3, 11, 7]  # each user's own seed back
    for index in answered:
        assert {thread for _, thread in progress[index].calls} == {threads[index]}  # in the user's own thread
        assert max(fraction for fraction, _ in progress[index].calls) == pytest.approx(1.0)

    # each user's head is the one the same request gives alone (so no head went to another user)
    alone = {
        seed: reconstruct({"path": str(face_photo_file)}, seed, *SETTINGS, request=None, progress=Progress())
        for seed in (3, 11)
    }
    assert pipeline_calls[1:] == [1, 1]
    assert not np.array_equal(_head(alone[3][1])[1], _head(alone[11][1])[1])  # the seeds give different heads
    for index, seed in ((0, 3), (1, 11)):
        (together, colours), (single, single_colours) = _head(outcomes[index][1]), _head(alone[seed][1])
        assert together.shape == single.shape and np.abs(together - single).max() * 250 <= 0.05  # mm
        assert np.abs(colours - single_colours).max() <= 1  # 8-bit colours, rounded


def test_a_transfer_runs_alone_between_batches(tiny_weights_dir, face_photo_file, tmp_path, pipeline_calls):
    demo = _demo(tiny_weights_dir, tmp_path, ServerOptions(max_batch_size=4, batch_window_s=0.2))
    transfer, limit = _handler(demo, "transfer")
    assert limit == 4
    photo = {"path": str(face_photo_file)}
    _, downloads, seed, details = transfer(photo, photo, 5, *SETTINGS, request=None, progress=Progress())
    assert seed == 5 and len(downloads) == 3 and details["faces"] > 0
    assert pipeline_calls == []  # a transfer is no reconstruction batch


def test_the_cpu_server_takes_one_request_at_a_time(tiny_weights_dir, face_photo_file, tmp_path, pipeline_calls):
    demo = _demo(tiny_weights_dir, tmp_path, ServerOptions())
    reconstruct, limit = _handler(demo, "reconstruct")
    assert limit == 1 and _handler(demo, "transfer")[1] == 1
    progress = Progress()
    *_, seed, _ = reconstruct({"path": str(face_photo_file)}, 2, *SETTINGS, request=None, progress=progress)
    assert seed == 2 and pipeline_calls == [1]
    assert {ident for _, ident in progress.calls} == {threading.get_ident()}  # run in the caller's thread
