"""The queue as its users meet it: a request refused in words when too many are waiting, and a running request
stopped once its client has gone, so one person cannot hold the worker the others are waiting for."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable


class QueueAdmission:
    """Admits a request while fewer than `max_waiting` wait before it, else says the server is busy and for how long.

    `waiting()` counts the requests queued and not yet started; `record` takes the seconds each
    finished request ran, whose median over the last `window` gives the wait in the refusal.
    Gradio's own full-queue answer is a bare HTTP 503 for an API caller; this one is a sentence
    both the page and `gradio_client` show.
    """

    def __init__(self, max_waiting: int, waiting: Callable[[], int], window: int = 20) -> None:
        self.max_waiting, self._waiting = max_waiting, waiting
        self._seconds: deque[float] = deque(maxlen=window)
        self._lock = threading.Lock()

    def record(self, seconds: float) -> None:
        """Note how long a request ran (the refusal's wait estimate follows the latest ones)."""
        with self._lock:
            self._seconds.append(seconds)

    def refusal(self) -> str | None:
        """None while a new request may queue; else the sentence that turns it away."""
        waiting = self._waiting()
        if waiting < self.max_waiting:
            return None
        with self._lock:
            typical = statistics.median(self._seconds) if self._seconds else None
        wait = "" if typical is None else f" (about {_minutes(waiting * typical)} at {typical:.0f} s each)"
        already = "1 request is" if waiting == 1 else f"{waiting} requests are"
        return f"The server is busy: {already} already waiting{wait}. Please try again in a few minutes."


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 90 else f"{math.ceil(seconds / 60)} min"


class RequestCancelled(Exception):
    """The client that asked for the running request is gone (page closed, connection lost, or cancelled)."""


class ClientWatch:
    """Stops a running request whose client has gone, so it frees the worker for the next one in the queue.

    `running()` lists (session, alive) for every job the server's queue is running now: Gradio
    marks a job not alive when its client's event stream closes, and drops it on a cancel (while
    the worker thread, which it cannot stop, would run on beside the next job). The watch is armed
    only if its session had a live job when it was made: work run outside the queue is never
    stopped. `check()` is cheap; the pipeline's progress callback calls it at every step.
    """

    def __init__(self, running: Callable[[], Iterable[tuple[str, bool]]], session: str) -> None:
        self._running, self.session = running, session
        self.armed = self._still_wanted()
        self.started = time.monotonic()

    def _still_wanted(self) -> bool:
        return any(alive and session == self.session for session, alive in self._running())

    def check(self) -> None:
        """Raise `RequestCancelled` if the request's client is gone."""
        if self.armed and not self._still_wanted():
            raise RequestCancelled(
                f"after {time.monotonic() - self.started:.1f} s: the client that asked for it went away"
            )
