"""The `app` and `load` rows: `app.py` as people run it, reached through `gradio_client`.

The app runs in its own process with its temporary folders inside the row's own, so the row can
count the files left behind; its peak RSS is read after it exits (`RUSAGE_CHILDREN`).
"""

from __future__ import annotations

import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from diffnphr.bench.common import face_photo
from diffnphr.serving.options import ServerOptions

APP_FILE = Path(__file__).resolve().parents[2] / "app.py"


@dataclass
class ServedApp:
    """A running `app.py`: its URL, the example photo's file, its temporary folders, how long it took to serve."""

    url: str
    photo: Path
    temporary: Path
    ready_s: float

    def client(self) -> Any:
        """A new `gradio_client.Client` of the app (each is one API user)."""
        from gradio_client import Client

        return Client(self.url, verbose=False)

    def files_held(self) -> dict[str, int]:
        """Files the app still holds for its users, by kind: result meshes and crops, and uploaded photos (the
        row's own photo, whatever folder Gradio put it in); `other` counts the rest of Gradio's cache (the example
        photos it keeps for the page)."""
        cache = self.temporary / "gradio"
        files = [path for path in cache.rglob("*") if path.is_file()]
        results = [path for path in files if any(part.startswith("diffnphr-results-") for part in path.parts)]
        uploads = [path for path in files if path.name == self.photo.name and path not in results]
        return {"results": len(results), "uploads": len(uploads), "other": len(files) - len(results) - len(uploads)}


@contextmanager
def served_app(
    device: torch.device, keep_results_s: float = ServerOptions.keep_results_s, max_batch_size: int | None = None
) -> Iterator[ServedApp]:
    """Start `app.py` on a free port (models on `device`; API callers' files kept `keep_results_s` after their
    answer; `max_batch_size` reconstructions together, None: the app's default for the device), yield it once it
    serves, stop it after."""
    if not APP_FILE.is_file():
        raise FileNotFoundError(f"this row needs the repository's app.py, not found at {APP_FILE}")
    photo, crop_note = face_photo()
    if crop_note is not None:
        raise RuntimeError(f"this row needs a face photo and MediaPipe: {crop_note}")
    with tempfile.TemporaryDirectory(prefix="diffnphr-bench-app-") as folder:
        folder = Path(folder)
        photo_path = folder / "portrait.png"
        photo.save(photo_path)
        (folder / "tmp").mkdir()
        with socket.socket() as probe:  # a free port for this run
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        env = {
            **os.environ,
            "GRADIO_SERVER_NAME": "127.0.0.1",
            "GRADIO_SERVER_PORT": str(port),
            "GRADIO_ANALYTICS_ENABLED": "False",
            "GRADIO_TEMP_DIR": str(folder / "tmp" / "gradio"),
            "TMPDIR": str(folder / "tmp"),
        }
        log_path = folder / "app.log"
        command = [sys.executable, str(APP_FILE), "--device", device.type, "--keep-results-s", str(keep_results_s)]
        if max_batch_size is not None:
            command += ["--max-batch-size", str(max_batch_size)]
        with log_path.open("w") as log:
            app = subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=log,
                cwd=folder,
            )
        try:
            started = time.perf_counter()
            url = f"http://127.0.0.1:{port}/"
            _wait_until_serving(url, app, log_path, started)
            yield ServedApp(url, photo_path, folder / "tmp", time.perf_counter() - started)
        finally:
            app.terminate()
            app.wait(timeout=60)


def bench_app(device: torch.device, quick: bool) -> dict[str, Any]:
    """The app as people reach it: reconstructions of the example portrait through `gradio_client` at the app's
    defaults (a warm-up call, then the median of 3, 1 when quick), and the app process's peak RSS: the figure
    the ≤ 3 GB goal is about, Gradio's server and queue included (the other rows measure the pipeline alone)."""
    from gradio_client import handle_file

    with served_app(device) as served:
        client = served.client()

        def reconstruct() -> tuple[float, dict[str, Any]]:
            start = time.perf_counter()
            *_, details = client.predict(handle_file(str(served.photo)), 0, False, api_name="/reconstruct")
            return time.perf_counter() - start, details

        first_s, _ = reconstruct()
        calls = sorted((reconstruct() for _ in range(1 if quick else 3)), key=lambda call: call[0])
        wall_s, details = calls[len(calls) // 2]
    return {
        "vertices": details["vertices"],
        "request_s": round(wall_s, 3),
        "pipeline_seconds": details["seconds"],
        "timed_requests_s": [round(call[0], 3) for call in calls],
        "first_request_s": round(first_s, 3),
        "ready_s": round(served.ready_s, 1),
        "app_peak_rss_mib": _app_peak_rss_mib(),
    }


def bench_load(
    device: torch.device,
    quick: bool,
    clients: int = 8,
    requests: int = 10,
    keep_results_s: float = ServerOptions.keep_results_s,
    max_batch_size: int | None = None,
) -> dict[str, Any]:
    """The app under load: `clients` API users at once, `requests` reconstructions each at the app's defaults
    (2 each when quick), `max_batch_size` of them together (None: the app's default for the device). Every request must come back with a mesh or be refused with words; reports latency
    p50 / p95, the app's peak RSS, and the files the app still holds right after the last answer and once
    `keep_results_s` (how long the app keeps an API caller's files) has passed since then."""
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError, ValidationError

    requests = 2 if quick else requests
    with served_app(device, keep_results_s, max_batch_size) as served:

        def one_user(index: int) -> list[tuple[str, float, str]]:
            client, outcomes = served.client(), []
            for _ in range(requests):
                start = time.perf_counter()
                try:
                    client.predict(handle_file(str(served.photo)), index, False, api_name="/reconstruct")
                    outcomes.append(("answered", time.perf_counter() - start, ""))
                except (AppError, ValidationError) as error:  # the app said no, in words (busy, a bad request)
                    outcomes.append(("refused" if str(error).strip() else "failed", 0.0, str(error)[:200]))
                except Exception as error:
                    outcomes.append(("failed", 0.0, f"{type(error).__name__}: {error}"[:200]))
            return outcomes

        started = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            outcomes = [outcome for user in pool.map(one_user, range(clients)) for outcome in user]
        wall_s = time.perf_counter() - started
        time.sleep(2.0)
        right_after = served.files_held()
        time.sleep(keep_results_s + 3.0)
        after_keep = served.files_held()
    answered = sorted(seconds for kind, seconds, _ in outcomes if kind == "answered")
    return {
        "clients": clients,
        "max_batch_size": ServerOptions(max_batch_size=max_batch_size).batching(device.type).max_batch_size,
        "requests": len(outcomes),
        "answered": len(answered),
        "refused_with_words": sum(kind == "refused" for kind, _, _ in outcomes),
        "failed": sum(kind == "failed" for kind, _, _ in outcomes),
        "messages": sorted({message for kind, _, message in outcomes if kind != "answered"})[:5],
        "latency_p50_s": round(statistics.median(answered), 2) if answered else None,
        "latency_p95_s": round(answered[round(0.95 * (len(answered) - 1))], 2) if answered else None,
        "wall_s": round(wall_s, 1),
        "keep_results_s": keep_results_s,
        "files_held_2s_after": right_after,
        "files_held_after_keep": after_keep,
        "app_peak_rss_mib": _app_peak_rss_mib(),
    }


def _app_peak_rss_mib() -> float:
    """The peak RSS of this process's finished children: the app, in a row's own process."""
    return round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1)


def _wait_until_serving(
    url: str, app: subprocess.Popen, log_path: Path, started: float, timeout_s: float = 300
) -> None:
    """Return once the app at `url` answers a client, or raise with the app's last words."""
    from gradio_client import Client

    while True:
        if app.poll() is not None:
            raise RuntimeError(f"app.py exited ({app.returncode}) before serving: {log_path.read_text()[-800:]}")
        try:
            Client(url, verbose=False)
            return
        except Exception as error:
            if time.perf_counter() - started > timeout_s:
                raise TimeoutError(f"app.py did not serve within {timeout_s:.0f} s") from error
            time.sleep(1.0)
