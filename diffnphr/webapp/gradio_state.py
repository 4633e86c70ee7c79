"""What the app reads of Gradio's own state, in one place: sessions, uploads, the queue's waiting and running jobs
(and the one thing it sets there: where the example's progress shows).

Gradio (pinned in requirements.txt) has no public way to ask how many requests wait, which jobs run for
which client, or which files came in through its upload route; these functions read its `Blocks`
attributes the way its own queue and cache sweep do, and fall back to "nothing" if an attribute is
missing. After a Gradio upgrade, this module is the one to check (tests/test_app.py exercises each).
"""

from __future__ import annotations

from typing import Any

import gradio as gr
from gradio.context import get_blocks_context

from diffnphr.serving.queue import ClientWatch

ANONYMOUS = "anonymous"  # the session of work outside a request (an example run)


def session(request: gr.Request | None) -> str:
    """The session a request belongs to (one per open page or API client; "anonymous" outside a request)."""
    return request.session_hash if request is not None and request.session_hash else ANONYMOUS


def upload_paths(*photos: dict[str, Any] | str | None) -> list[str]:
    """The server-side files of the photos a request names (none for a missing photo); events run with
    preprocess=False, so uploads arrive as FileData dicts."""
    paths = [photo.get("path") if isinstance(photo, dict) else photo for photo in photos]
    return [path for path in paths if isinstance(path, str) and path]


def is_upload(demo: gr.Blocks, path: str) -> bool:
    """Whether `path` came in through Gradio's upload route and no component keeps it (example photos do): only
    such files are ever deleted for a user. Reads `Blocks.upload_file_set` and each block's `keep_in_cache`, as
    Gradio's own cache sweep does."""
    if path not in getattr(demo, "upload_file_set", ()):
        return False
    return not any(path in getattr(block, "keep_in_cache", ()) for block in demo.blocks.values())


def waiting(demo: gr.Blocks) -> int:
    """Requests in Gradio's queue not yet started (`Blocks._queue`'s length)."""
    queue = getattr(demo, "_queue", None)
    return len(queue) if queue is not None else 0


def queued_sessions(demo: gr.Blocks) -> set[str] | None:
    """The sessions with a request waiting in Gradio's queue or running on one of its workers (its
    `event_queue_per_concurrency_id` and `active_jobs`); None when the queue cannot be read."""
    queue = getattr(demo, "_queue", None)
    try:
        waiting = [event for line in list(queue.event_queue_per_concurrency_id.values()) for event in list(line.queue)]
        running = [event for job in list(queue.active_jobs) if job for event in job]
    except (AttributeError, RuntimeError, TypeError):  # no queue yet, or it changed while being read
        return None
    return {event.session_hash for event in waiting + running}


def client_watch(demo: gr.Blocks, request: gr.Request | None) -> ClientWatch:
    """A `ClientWatch` on this request's session, reading the jobs Gradio's queue is running: its
    `Blocks._queue.active_jobs`, one list of events per worker, each with its `session_hash` and `alive`."""

    def running() -> list[tuple[str, bool]]:
        jobs = getattr(getattr(demo, "_queue", None), "active_jobs", None) or []
        return [(event.session_hash, event.alive) for job in jobs if job for event in job]

    return ClientWatch(running, session(request))


def show_progress_only_on(event: dict[str, Any] | None, component: gr.components.Component) -> None:
    """Draw the progress of `event` (an event Gradio registered itself, such as `gr.Examples`' cached run, whose
    `show_progress_on` cannot be passed) on `component` alone, not over every output: sets `show_progress_on` of its
    `BlockFunction` in the Blocks being built (`BlocksConfig.fns`, by the event's id). Call it inside that Blocks."""
    blocks = get_blocks_context()
    function = blocks.fns.get(event.get("id")) if blocks is not None and event else None
    if function is not None:
        function.show_progress_on = [component]
