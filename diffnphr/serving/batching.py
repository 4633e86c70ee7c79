"""Concurrent requests reconstructed together on a GPU, each caller still getting its own result, error and progress.

`RequestBatcher` gathers the requests that arrive within `window_s` of the first one (up to
`max_batch_size`) into one call of `run_batch` (for the app, `reconstruction_batches(pipeline)`:
one `pipeline([photo, ...], [settings, ...])` call), run on one worker thread, so the GPU does
one thing at a time. Each caller blocks in `submit` until its own outcome:

- **its own result or its own error**: `run_batch` returns one outcome per request, a result or
  an exception (a photo without a face fails its request only); if the whole batch raises, each
  of its requests runs again alone, so the error lands on the request that causes it;
- **its own progress**: the batch's progress reaches each caller as events, and the caller's
  `progress` callback runs in the caller's own thread (Gradio's `gr.Progress` finds its request
  through the thread's context, so it must not be called from the worker);
- **its own cancellation**: `check()` (and `progress`) may raise, e.g. `ClientWatch.check`'s
  `RequestCancelled` once the client has gone; that caller stops waiting and gets the error,
  the others are not touched. A request cancelled before its batch starts is left out of it;
  once every request of a running batch is cancelled, the batch itself stops at its next
  progress step.

On a CPU the batcher is off (`BatchingOptions.for_device("cpu")`: `max_batch_size` 1): `submit`
runs the request in the caller's thread, one at a time as Gradio's queue hands them over.

How `app.py` wires it: `/reconstruct` calls `submit` with a `ReconstructionRequest`, `/transfer`
calls `run_alone` (a transfer never runs beside a batch on the GPU); both events share one
concurrency group whose limit is `max_batch_size`, so Gradio's queue lets a whole batch's
requests into the batcher at once (on the CPU the limit stays 1: one request at a time); a GPU
server warms a batch of that size up before it takes requests.

Why not Gradio's own `batch=True` / `max_batch_size`: Gradio then calls the function with lists
and sends one exception to every request of the batch (its queue's `process_events`), and a
batched event has no event id of its own, so progress cannot be reported per request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from diffnphr.face.images import ImageInputError
from diffnphr.pipeline.progress import STAGE_LABELS

if TYPE_CHECKING:
    from diffnphr.face.crop import FaceCrop
    from diffnphr.face.images import ImageSource
    from diffnphr.pipeline.pipeline import HeadReconstructionPipeline, Reconstruction
    from diffnphr.pipeline.settings import SamplingSettings

logger = logging.getLogger(__name__)
Request = TypeVar("Request")
Result = TypeVar("Result")
Progress = Callable[[str, float], None]
BatchRunner = Callable[[list[Any], Progress], list[Any]]
GPU_BATCH_SIZE = 8


@dataclass(frozen=True)
class BatchingOptions:
    """How requests are gathered: up to `max_batch_size` (1: no batching) arriving within `window_s` of the first;
    a waiting caller checks its client every `poll_s`."""

    max_batch_size: int = GPU_BATCH_SIZE
    window_s: float = 0.05
    poll_s: float = 0.1

    def __post_init__(self) -> None:
        if isinstance(self.max_batch_size, bool) or not isinstance(self.max_batch_size, int) or self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be a whole number of at least 1; got {self.max_batch_size!r}.")
        if not self.window_s >= 0 or not self.poll_s > 0:
            raise ValueError(f"window_s must be at least 0 and poll_s above 0; got {self.window_s!r}, {self.poll_s!r}.")

    @classmethod
    def for_device(cls, device_type: str, max_batch_size: int | None = None, window_s: float = 0.05) -> BatchingOptions:
        """Batches of up to `max_batch_size`; None: 8 on a GPU (`"cuda"`) and one request at a time anywhere else
        (the CPU server keeps its single worker: batching did not pay there)."""
        if max_batch_size is None:
            max_batch_size = GPU_BATCH_SIZE if device_type == "cuda" else 1
        return cls(max_batch_size, window_s)

    @property
    def enabled(self) -> bool:
        """Whether requests are gathered into batches (else each runs alone in its caller's thread)."""
        return self.max_batch_size > 1


class BatchStopped(Exception):
    """Every request of the running batch was cancelled: the batch stops (raised through its progress callback)."""


@dataclass(eq=False)
class _Job:
    """One request waiting in or running through the batcher; `events` carries its progress and its outcome."""

    request: Any = None
    alone: Callable[[Progress], Any] | None = None
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


class RequestBatcher(Generic[Request, Result]):
    """Gathers concurrent `submit`s into batches for `run_batch(requests, progress) -> [result or exception, ...]`."""

    def __init__(self, run_batch: BatchRunner, options: BatchingOptions = BatchingOptions()) -> None:
        self.run_batch, self.options = run_batch, options
        self._jobs: deque[_Job] = deque()
        self._ready = threading.Condition()
        self._worker: threading.Thread | None = None
        self._closed = False

    def submit(
        self, request: Request, progress: Progress | None = None, check: Callable[[], None] | None = None
    ) -> Result:
        """The outcome of `request`: its result, or its error raised here. Blocks until then.

        `progress(stage, fraction)` follows its batch, called in this thread; `check()` is called
        here while it waits. Whatever either raises stops this request's wait (and leaves it out of
        a batch not yet started), not the others'.
        """
        if not self.options.enabled:
            outcome = self.run_batch([request], _checked(progress, check))[0]
            if isinstance(outcome, BaseException):
                raise outcome
            return outcome
        return self._wait(self._enqueue(_Job(request=request)), progress, check)

    def run_alone(
        self,
        work: Callable[[Progress], Result],
        progress: Progress | None = None,
        check: Callable[[], None] | None = None,
    ) -> Result:
        """`work(progress)` on the batcher's worker between batches (never beside one), its outcome here, as `submit`."""
        if not self.options.enabled:
            return work(_checked(progress, check))
        return self._wait(self._enqueue(_Job(alone=work)), progress, check)

    def close(self) -> None:
        """Stop the worker once the requests already submitted are done; later submits are refused."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if self._worker is not None:
            self._worker.join()

    # -- the caller's side ------------------------------------------------------------------------

    def _enqueue(self, job: _Job) -> _Job:
        with self._ready:
            if self._closed:
                raise RuntimeError("The server is shutting down and takes no more requests.")
            self._jobs.append(job)
            if not self._worker_alive():
                self._worker = threading.Thread(target=self._serve, name="diffnphr-batcher", daemon=True)
                self._worker.start()
            self._ready.notify_all()
        return job

    def _worker_alive(self) -> bool:
        return self._worker is not None and self._worker.is_alive()

    def _wait(self, job: _Job, progress: Progress | None, check: Callable[[], None] | None) -> Any:
        try:
            while True:
                try:
                    kind, *payload = job.events.get(timeout=self.options.poll_s)
                except queue.Empty:
                    if check is not None:
                        check()
                    if not self._worker_alive() and job.events.empty():
                        raise RuntimeError("The reconstruction worker stopped; please try again.") from None
                    continue
                if kind == "done":
                    return payload[0]
                if kind == "error":
                    raise payload[0]
                if check is not None:
                    check()
                if progress is not None:
                    progress(*payload)
        except BaseException:
            job.cancelled.set()  # left out of a batch not yet started; no more events wanted
            raise

    # -- the worker's side ------------------------------------------------------------------------

    def _serve(self) -> None:
        while True:
            with self._ready:
                while not self._jobs and not self._closed:
                    self._ready.wait()
                if not self._jobs:
                    return
                first = self._jobs.popleft()
            batch = [first]
            try:
                if first.alone is not None:
                    self._run_alone(first)
                    continue
                batch = self._gather(first)
                live = [job for job in batch if not job.cancelled.is_set()]
                if live:
                    self._run(live)
            except BaseException as error:  # never leave a caller waiting on a worker that is gone
                for job in batch:
                    job.events.put(("error", RuntimeError(f"The reconstruction worker stopped: {error}")))
                raise

    def _gather(self, first: _Job) -> list[_Job]:
        """`first` and the requests that arrive within the window after it, up to the batch size (in order; a
        `run_alone` job ends the gathering and runs next)."""
        batch, deadline = [first], time.monotonic() + self.options.window_s
        with self._ready:
            while len(batch) < self.options.max_batch_size:
                if self._jobs:
                    if self._jobs[0].alone is not None:
                        break
                    batch.append(self._jobs.popleft())
                    continue
                left = deadline - time.monotonic()
                if left <= 0 or self._closed:
                    break
                self._ready.wait(left)
        return batch

    def _run(self, live: list[_Job]) -> None:
        def fan_out(stage: str, fraction: float) -> None:
            if all(job.cancelled.is_set() for job in live):
                raise BatchStopped(f"all {len(live)} requests of the batch were cancelled")
            for job in live:
                if not job.cancelled.is_set():
                    job.events.put(("progress", stage, fraction))

        try:
            outcomes = self.run_batch([job.request for job in live], fan_out)
            if len(outcomes) != len(live):
                raise RuntimeError(f"the batch gave {len(outcomes)} outcomes for {len(live)} requests")
        except BatchStopped:
            return  # every caller has already had its own error
        except Exception as error:
            if len(live) == 1:
                live[0].events.put(("error", error))
                return
            logger.warning("a batch of %d requests failed (%s); each runs again alone", len(live), error)
            for job in live:
                if not job.cancelled.is_set():
                    self._run([job])
            return
        for job, outcome in zip(live, outcomes):
            job.events.put(("error", outcome) if isinstance(outcome, BaseException) else ("done", outcome))

    def _run_alone(self, job: _Job) -> None:
        if job.cancelled.is_set():
            return
        try:
            result = job.alone(lambda stage, fraction: job.events.put(("progress", stage, fraction)))
        except Exception as error:
            job.events.put(("error", error))
            return
        job.events.put(("done", result))


def _checked(progress: Progress | None, check: Callable[[], None] | None) -> Progress | None:
    """`progress` preceded by `check()` at every step (for a request run in its caller's thread)."""
    if check is None:
        return progress

    def report(stage: str, fraction: float) -> None:
        check()
        if progress is not None:
            progress(stage, fraction)

    return report


@dataclass(frozen=True)
class ReconstructionRequest:
    """One person's reconstruction: their photo (or its crop), its settings, and whether a photo without a face may
    use its centre."""

    image: ImageSource | FaceCrop
    settings: SamplingSettings
    allow_no_face: bool = False


def reconstruction_batches(pipeline: HeadReconstructionPipeline) -> BatchRunner:
    """The `run_batch` of a pipeline: each request's photo cropped on its own (a photo without a face, or no image at
    all, fails that request only), then the cropped ones in one `pipeline([...], [...])` call."""

    def run(requests: list[ReconstructionRequest], progress: Progress) -> list[Reconstruction | Exception]:
        outcomes: list[Any] = [None] * len(requests)
        cropped = []
        progress(STAGE_LABELS["crop"], 0.0)  # the pipeline call below gets crops: its bar starts at the embedding
        for index, request in enumerate(requests):
            try:
                cropped.append((index, pipeline.crop(request.image, request.allow_no_face)))
            except ImageInputError as error:
                outcomes[index] = error
        if cropped:
            crops = [crop for _, crop in cropped]
            results = pipeline(crops, [requests[index].settings for index, _ in cropped], progress=progress)
            for (index, _), result in zip(cropped, results):
                outcomes[index] = result
        return outcomes

    return run
