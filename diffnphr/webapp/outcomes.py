"""Each request's outcome as a person meets it: errors that stay until closed, a status line under the button that
keeps the last outcome until the next request (and names an upload that is not an image at once), one log line per
refusal (no traceback), and progress that stops the work once its client has gone."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gradio as gr

from diffnphr.face import ImageInputError, NoFaceError, load_image
from diffnphr.serving.queue import ClientWatch, QueueAdmission, RequestCancelled
from diffnphr.serving.results import done_status, named_warnings
from diffnphr.webapp.gradio_state import session, upload_paths

if TYPE_CHECKING:
    from diffnphr.pipeline import Reconstruction

logger = logging.getLogger("diffnphr.app")
CANCELLED = "Cancelled"
NO_FACE_CHOICE = "Use the centre of the image if no face is found"
WORKING = "Working… its progress, stage by stage, shows over the 3D head."


def user_error(message: str, title: str) -> gr.Error:
    """An error toast that stays until it is closed (the status line keeps it too), logged in one line."""
    return gr.Error(message, title=title, duration=None, print_exception=False)


def run_request(work: Callable[[], Reconstruction], admission: QueueAdmission) -> Reconstruction:
    """Run the pipeline, turning mistakes a person can fix into an error that says what to do; a result's time goes
    to `admission`, whose busy sentence says how long the wait is. The result's warnings show as toasts, each naming
    its photo in a transfer."""
    started = time.monotonic()
    try:
        result = work()
    except RequestCancelled as error:
        raise user_error(f"Stopped {error}.", CANCELLED) from error
    except NoFaceError as error:
        raise user_error(f"{error} Or tick “{NO_FACE_CHOICE}”.", "No face found") from error
    except ImageInputError as error:
        raise user_error(str(error), "Cannot use this image") from error
    except ValueError as error:
        raise user_error(str(error), "Cannot reconstruct") from error
    admission.record(time.monotonic() - started)
    for warning in named_warnings(result):
        gr.Warning(warning)
    return result


def progress_bar(progress: gr.Progress, watch: ClientWatch) -> Callable[[str, float], None]:
    """The pipeline's progress callback, shown on Gradio's progress bar; it stops the work once the client is gone."""

    def report(stage: str, fraction: float) -> None:
        watch.check()
        progress(fraction, desc=stage)

    return report


class Failures:
    """The last refused request's sentence per session, for the status line (Gradio's failure event gets no
    message), and one log line per refusal instead of a traceback."""

    kept = 256  # API sessions have no browser to read their status: keep only the newest refusals

    def __init__(self) -> None:
        self.messages: dict[str, str] = {}

    @contextlib.contextmanager
    def recorded(self, request: gr.Request | None, endpoint: str) -> Iterator[None]:
        """The span of one request to `endpoint`: a `gr.Error` raised in it is kept for the status line and logged."""
        key = session(request)
        self.messages.pop(key, None)
        try:
            yield
        except gr.Error as error:
            self.messages[key] = str(error.message)
            while len(self.messages) > self.kept:
                self.messages.pop(next(iter(self.messages)))
            outcome = "stopped" if error.title == CANCELLED else "refused"
            logger.warning("%s /%s: %s", outcome, endpoint, error.message)
            raise

    def status(self, request: gr.Request) -> str:
        """The status line after a failed request."""
        message = self.messages.pop(session(request), "the request failed; see the message above.")
        return f"**Not done:** {message}"


def status_working(
    button: gr.Button, inputs: list[Any], status: gr.Markdown, checks: Callable[..., list[dict]]
) -> None:
    """The status line as soon as the button is pressed: "Working…" (and where the progress shows), or why the
    request is not taken (a missing photo, a bad setting, a full queue: the validator's own `checks` of the same
    `inputs`, whose refusal Gradio shows at the input but reports to no event). Registered before the request
    itself, whose outcome replaces it."""

    def line(*values: Any) -> str:
        refused = next((check["message"] for check in checks(*values) if not check["is_valid"]), None)
        return WORKING if refused is None else f"**Not done:** {refused}"

    # preprocess=False: the values as the validator sees them; Gradio's image preprocessing would open the upload
    # with PIL and log a traceback (and answer 500) for a file that is not an image.
    button.click(line, inputs, status, queue=False, preprocess=False, show_progress="hidden", api_visibility="private")


def upload_status(photo: gr.Image, status: gr.Markdown, what: str) -> None:
    """The status line as soon as a photo is uploaded: a file that is not an image we can read is named at once, in
    the sentence a request would be refused with ("Cannot use `what`: …"); a good photo, or none, takes back what
    was said of this one (any other line, such as the last request's outcome, stays)."""
    heading = f"**Cannot use {what}:** "

    def line(upload: dict[str, Any] | None, current: str | None) -> Any:
        paths = upload_paths(upload)
        try:
            if paths:
                load_image(paths[0])
        except ImageInputError as error:
            return heading + str(error)
        return "" if (current or "").startswith(heading) else gr.skip()

    gr.on(
        [photo.upload, photo.clear],
        line,
        [photo, status],
        status,
        queue=False,
        preprocess=False,
        show_progress="hidden",
        api_visibility="private",
    )


def status_outcome(event: Any, status: gr.Markdown, details: gr.JSON, failures: Failures) -> None:
    """After the request the status line says it is done (with its time) or why not, until the next one."""
    event.success(done_status, details, status, queue=False, show_progress="hidden", api_visibility="private")
    event.failure(failures.status, None, status, queue=False, show_progress="hidden", api_visibility="private")
