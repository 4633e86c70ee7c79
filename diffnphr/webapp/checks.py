"""A request's values checked before it is queued (Gradio's validator), and read into settings when it runs.

The sentences come from `diffnphr.serving.requests`; here they become what Gradio shows: one
`gr.validate` per input before the queue, or an error that stays once the request runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import gradio as gr

from diffnphr.serving.requests import REQUEST_PARAMETERS, RequestError, ServingLimits, read_request, request_problems
from diffnphr.webapp.gradio_state import upload_paths
from diffnphr.webapp.outcomes import user_error

if TYPE_CHECKING:
    from diffnphr.serving.queue import QueueAdmission


def settings_checks(limits: ServingLimits, settings: tuple) -> list[dict]:
    """One `gr.validate` per setting, in `REQUEST_PARAMETERS` order (the validator's answer before queueing)."""
    problems = request_problems(limits, **dict(zip(REQUEST_PARAMETERS, settings)))
    return [gr.validate(name not in problems, problems.get(name, "")) for name in REQUEST_PARAMETERS]


def admission_checks(checks: list[dict], admission: QueueAdmission) -> list[dict]:
    """`checks` (one `gr.validate` per input, the first for the first photo) when any fails; else the same with the
    busy sentence at the first photo if the queue is full. All valid: the request may be queued."""
    if not all(check["is_valid"] for check in checks):
        return checks
    busy = admission.refusal()
    return checks if busy is None else [gr.validate(False, busy), *checks[1:]]


def request_settings(limits: ServingLimits, *values: Any) -> dict[str, Any]:
    """The pipeline settings and the centre-crop choice of one request (values in `REQUEST_PARAMETERS` order), or
    an error that stays, naming the bad one (for work that no validator saw, such as an example run)."""
    try:
        return read_request(limits, **dict(zip(REQUEST_PARAMETERS, values)))
    except RequestError as error:
        raise user_error(str(error), "Cannot use these settings") from error


def uploaded_path(upload: dict[str, Any] | str | None, what: str) -> str:
    """The server-side file of an upload, or an error asking for the `what` (e.g. "identity photo")."""
    paths = upload_paths(upload)
    if not paths:
        raise user_error(f"Please upload the {what} first.", "Missing photo")
    return paths[0]
