"""The files a server keeps for its users, and when each goes: result folders and the uploads requests use.

Results are written inside the folder the web framework serves files from (Gradio's cache), so
they are served as they are, not copied into a second home that only an hourly sweep empties.
Each file then has one owner and one lifetime:

- a result for an API caller (a session without an open page) goes `keep_s` after it was
  returned: time enough for its client to download it;
- a result for a page stays while the page is open (its download links point at it) and goes
  when the page closes;
- an upload goes as soon as no admitted request and no open page uses it, but never less than
  `keep_s` after it was (last) uploaded: the same photo uploaded again lands on the same path, and
  a client that has just uploaded it, and not yet asked, is not caught out;
- a request that never runs (its page closed, or its API caller cancelled, while it waited) gives
  its uploads back, so they go too;
- anything older than `max_age_s` goes whatever holds it.

A request that is refused or stopped leaves nothing: its folder is made only for a result.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from diffnphr.mesh.export import EXPORT_FORMATS, export_mesh

if TYPE_CHECKING:
    from diffnphr.pipeline.pipeline import Reconstruction


class ServedFiles:
    """Result folders per session under `root`, and holds on uploads, removed as the module docstring says.

    `is_upload(path)` says whether a path is a user's upload that this server may delete (the
    app asks Gradio; example photos and anything else are never touched). A request's hold is
    taken when it is admitted (`hold`) and given back when it is over (`finished`), both under
    its session, so work that was never admitted (an example run) gives back nothing. A page that
    closes gives back its session's holds too (its requests still waiting will never be answered),
    and so does a session that `queued_sessions()` (the sessions with a request waiting or running;
    None when that cannot be told) has not listed for `keep_s`: an API caller that cancelled while
    waiting, whose request Gradio drops without running it. Thread-safe: requests finish on worker
    threads while pages open and close on the event loop.
    """

    def __init__(
        self,
        root: Path,
        keep_s: float,
        max_age_s: float,
        is_upload: Callable[[str], bool],
        queued_sessions: Callable[[], set[str] | None] = lambda: None,
    ) -> None:
        self.root, self.keep_s, self.max_age_s, self._is_upload = root, keep_s, max_age_s, is_upload
        self._queued_sessions = queued_sessions
        self._requests: Counter[tuple[str, str]] = Counter()  # (session, upload) -> admitted requests using it
        self._pages: dict[str, set[str]] = {}  # open page's session -> the uploads it has used
        self._missing_since: dict[str, float] = {}  # holding session seen in no queue -> since when (monotonic)
        self._recheck_due = False
        self._lock = threading.Lock()

    def page_opened(self, session: str) -> None:
        """A browser page of `session` is open: its results and uploads stay until `page_closed`."""
        with self._lock:
            self._pages.setdefault(session, set())

    def page_closed(self, session: str) -> None:
        """The page is gone: remove its results now and its uploads once nothing else holds them (its requests that
        were still waiting hold nothing any more)."""
        with self._lock:
            uploads = self._pages.pop(session, set())
            waiting = [key for key in self._requests if key[0] == session]
            for key in waiting:
                del self._requests[key]
            uploads |= {path for _, path in waiting}
        shutil.rmtree(self.root / session, ignore_errors=True)
        for path in uploads:
            self._remove_upload_unless_held(path)

    def hold(self, session: str, uploads: Iterable[str]) -> None:
        """A request of `session` that will read `uploads` was admitted: keep them until it has `finished`."""
        with self._lock:
            self._requests.update((session, path) for path in set(uploads))

    def new_run(self, session: str) -> Path:
        """A fresh folder for one result of `session` (results older than `max_age_s`, of any session, are swept)."""
        self._remove_older_than(self.max_age_s)
        folder = self.root / session / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    @contextlib.contextmanager
    def request(self, session: str, uploads: Iterable[str]) -> Iterator[ResultRun]:
        """The span of one admitted request: its result folder is made on first use (`ResultRun.folder`), and on
        the way out, however it ends, the request has `finished`."""
        run = ResultRun(self, session)
        try:
            yield run
        finally:
            self.finished(session, uploads, run.made)

    def finished(self, session: str, uploads: Iterable[str], folder: Path | None) -> None:
        """A request of `session` is over (answered, refused or stopped; `folder` None when it has no result).
        An open page keeps its result and uploads; for anyone else the result goes `keep_s` from now (time to
        download it) and the uploads as soon as nothing else holds them."""
        uploads = set(uploads)
        with self._lock:
            for path in uploads:
                key = (session, path)
                if self._requests[key] > 0:
                    self._requests[key] -= 1
                    if not self._requests[key]:
                        del self._requests[key]
            page = self._pages.get(session)
            if page is not None:
                page |= uploads
        if page is None:
            for path in uploads:
                self._remove_upload_unless_held(path)
            if folder is not None:
                self._later(shutil.rmtree, folder, ignore_errors=True)
        self.give_back_abandoned()

    def give_back_abandoned(self) -> None:
        """Give back the holds of sessions with no request waiting or running for `keep_s`, and remove their uploads
        once nothing else holds them. A session is taken for gone only when it is missing from the queue twice,
        `keep_s` apart (a request between its admission and its place in the queue, or between the queue and a
        worker, is missing for a moment); the second look is made by a timer if nothing else makes it first."""
        with self._lock:
            released = self._abandoned()
        for path in released:
            self._remove_upload_unless_held(path)

    def _abandoned(self) -> set[str]:
        """The uploads whose holds were given back now (called with the lock held)."""
        holding = {session for session, _ in self._requests}
        queued = self._queued_sessions() if holding else set()
        if queued is None:
            return set()
        now = time.monotonic()
        self._missing_since = {
            session: since for session, since in self._missing_since.items() if session in holding - queued
        }
        released = set()
        for session in holding - queued:
            if now - self._missing_since.setdefault(session, now) >= self.keep_s:
                for key in [key for key in self._requests if key[0] == session]:
                    del self._requests[key]
                    released.add(key[1])
                del self._missing_since[session]
        if self._missing_since and not self._recheck_due:
            self._recheck_due = True
            self._later(self._recheck, after_s=self.keep_s + 0.05)
        return released

    def _recheck(self) -> None:
        with self._lock:
            self._recheck_due = False
        self.give_back_abandoned()

    def held(self, path: str) -> bool:
        """Whether an admitted request or an open page still uses the upload at `path`."""
        with self._lock:
            return self._held(path)

    def _held(self, path: str) -> bool:
        return any(held == path for _, held in self._requests) or any(path in page for page in self._pages.values())

    def _remove_upload_unless_held(self, path: str) -> None:
        # Under the lock, so that a request admitted meanwhile (its client uploaded the same photo again) keeps it.
        # The same photo uploaded again lands on the same path (Gradio names uploads by their content's hash) with
        # a fresh modification time: one uploaded less than `keep_s` ago may belong to a request not yet admitted,
        # so it is looked at again once it is that old.
        with self._lock:
            if self._held(path) or not self._is_upload(path):
                return
            upload = Path(path)
            try:
                age = time.time() - upload.stat().st_mtime
            except FileNotFoundError:
                return
            if age < self.keep_s:
                self._later(self._remove_upload_unless_held, path, after_s=self.keep_s - age)
                return
            upload.unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty, or already gone
                upload.parent.rmdir()  # Gradio keeps each upload in a folder of its own (named by its hash)

    def _later(
        self, remove: Callable[..., None], *args: object, after_s: float | None = None, **kwargs: object
    ) -> None:
        timer = threading.Timer(self.keep_s if after_s is None else after_s, remove, args=args, kwargs=kwargs)
        timer.daemon = True
        timer.start()

    def _remove_older_than(self, seconds: float) -> None:
        cutoff = time.time() - seconds
        for run in self.root.glob("*/*"):
            try:
                expired = run.stat().st_mtime < cutoff
            except FileNotFoundError:  # its session just ended
                continue
            if expired:
                shutil.rmtree(run, ignore_errors=True)
        for session in self.root.glob("*"):  # API callers' emptied session folders, once idle as long
            with contextlib.suppress(OSError):
                if session.stat().st_mtime < cutoff:
                    session.rmdir()


class ResultRun:
    """One request's result folder, made only when a result is written (a refused request leaves none)."""

    def __init__(self, files: ServedFiles, session: str) -> None:
        self._files, self._session = files, session
        self.made: Path | None = None

    def folder(self) -> Path:
        """The folder for this request's files (made on the first call)."""
        if self.made is None:
            self.made = self._files.new_run(self._session)
        return self.made


def export_downloads(result: Reconstruction, folder: Path, stem: str) -> list[str]:
    """Write the mesh in every download format; the GLB comes first (it feeds the viewer)."""
    name = f"{stem}_seed{result.seed}"
    return [str(export_mesh(result.mesh, folder / f"{name}.{fmt}")) for fmt in EXPORT_FORMATS]


def export_crop(result: Reconstruction, folder: Path) -> str:
    """The face crop the model saw, as a PNG beside the meshes (served from there, not copied)."""
    path = folder / "face_crop.png"
    result.crop.image.save(path)
    return str(path)
