"""How the app joins an endpoint to its tab: the example row and a request's wiring (button, validator, progress, status
line), the same for every endpoint (`app.py` lays the tabs out and owns the endpoints)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol

import gradio as gr

from diffnphr.webapp.gradio_state import show_progress_only_on
from diffnphr.webapp.outcomes import Failures, status_outcome, status_working, upload_status


class Endpoint(NamedTuple):
    """One public endpoint: its function (whose signature is the API's), the checks of its inputs before the queue
    (one `gr.validate` per input, without side effects) and what its first inputs, the photos, are called."""

    run: Callable[..., tuple]
    checks: Callable[..., list[dict]]
    photos: tuple[str, ...]


class ServingSide(Protocol):
    """What the wiring takes of the app's server: its batching (the batch size bounds the concurrency), the refusals
    kept for the status lines and an endpoint's validator."""

    batching: Any
    failures: Failures

    def validator(self, endpoint: Endpoint) -> Callable[..., list[dict]]: ...


def example_row(
    endpoint: Endpoint, photos: list[str], inputs: list[Any], results: list[Any], head: gr.Model3D, about: str
) -> None:
    """A tab's example row (the photos, seed 0, no randomizing): run on its first click and cached, its progress
    drawn over the 3D `head` only, as a request's is."""
    example = gr.Examples(
        [[*photos, 0, False]],
        inputs,
        results,
        fn=endpoint.run,
        cache_examples=True,
        cache_mode="lazy",
        preprocess=False,
        visible_columns=list(range(len(photos))),
        label=f"Example ({about}; seed 0)",
    )
    show_progress_only_on(example.cache_event, head)


def request_wiring(
    server: ServingSide,
    endpoint: Endpoint,
    api_name: str,
    button: gr.Button,
    inputs: list[Any],
    results: list[Any],
    status: gr.Markdown,
    details: gr.JSON,
    head: gr.Model3D,
) -> None:
    """A tab's request and its status line: an upload that is not an image is named at once; the button says
    "Working…" at once, or why the request is refused before the queue; the request runs (public as `api_name`,
    in the concurrency group of the other tab's: one at a time, or on a GPU as many together as a batch holds,
    which the batcher then runs as one) with its progress, stage by stage, drawn once: over the 3D `head`; then
    the line says it is done, or why not, until the next request."""
    for photo, what in zip(inputs, endpoint.photos):
        upload_status(photo, status, what)
    status_working(button, inputs, status, endpoint.checks)
    event = button.click(
        endpoint.run,
        inputs,
        results,
        api_name=api_name,
        preprocess=False,
        validator=server.validator(endpoint),
        concurrency_id="model",
        concurrency_limit=server.batching.max_batch_size,
        show_progress_on=head,
    )
    status_outcome(event, status, details, server.failures)
