"""The app in a real browser: Debian's chromium driven by Playwright uploads a photo and sees a 3D head.

Screenshots land in `test-artifacts/` (git-ignored) for a person to look at.
"""

from __future__ import annotations

import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
# Flags that keep headless chromium quiet and offline (see reference/gradio.md).
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
# What the viewer shows where there is no mesh: its clear colour (0.93 grey), and white before
# the WebGL scene has drawn its first frame.
EMPTY_VIEWER_COLOURS = np.array([[237, 237, 237], [255, 255, 255]])

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="Debian's chromium is not installed (in CI this test must run: .ci/run installs it)",
    ),
]


def _share_of_mesh_pixels(png: Path) -> float:
    """Fraction of pixels that are clearly neither the viewer's background nor blank white."""
    pixels = np.asarray(Image.open(png).convert("RGB")).astype(int)
    distances = np.abs(pixels[:, :, None, :] - EMPTY_VIEWER_COLOURS).sum(axis=-1)
    return float((distances.min(axis=-1) > 30).mean())


def test_upload_reconstruct_and_see_the_head(app_url, app_workdir, app_keep_results_s, face_photo_file):
    """The head shows in the viewer; its downloads still work after an API caller's would be gone, and go
    with the page."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    viewer_png = ARTIFACTS / "browser_reconstruct_viewer.png"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            upload = page.locator("#photo input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(face_photo_file))
            page.locator("#reconstruct_button").click()
            page.wait_for_selector("#head_model canvas", timeout=180_000)
            page.wait_for_selector("#crop_preview img", timeout=30_000)

            # The canvas appears before the mesh is drawn: wait until the head covers part of it.
            deadline = time.monotonic() + 90
            while True:
                page.locator("#head_model canvas").screenshot(path=str(viewer_png))
                covered = _share_of_mesh_pixels(viewer_png)
                if covered > 0.05 or time.monotonic() > deadline:
                    break
                time.sleep(1)
            page.screenshot(path=str(ARTIFACTS / "browser_reconstruct_page.png"), full_page=True)

            links = page.locator("#head_downloads a[href]")
            links.first.wait_for(timeout=30_000)
            glb_url = next(url for url in links.evaluate_all("(as) => as.map((a) => a.href)") if ".glb" in url)
            glb_name = glb_url.rsplit("/", 1)[-1]
            time.sleep(app_keep_results_s + 2)
            assert page.request.get(glb_url).status == 200, "the open page's download went away"
            page.close()  # the page's session ends: its results go
            deadline = time.monotonic() + 30
            cache = app_workdir / "gradio-cache"
            while left := [path for path in cache.rglob(glb_name) if "diffnphr-results-" in str(path)]:
                assert time.monotonic() < deadline, f"the closed page's results are still there: {left}"
                time.sleep(0.2)
        finally:
            browser.close()
    assert covered > 0.05, f"the viewer shows no head; see {viewer_png}"


def test_an_error_stays_readable_until_the_next_request(app_url, no_face_photo_file):
    """A photo without a face: the sentence is still on the page 30 s later, in the toast and the status line."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            upload = page.locator("#photo input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(no_face_photo_file))
            page.locator("#reconstruct_button").click()
            status = page.locator("#reconstruct_status")
            status.get_by_text("No face was found").wait_for(timeout=60_000)
            time.sleep(30)
            page.screenshot(path=str(ARTIFACTS / "browser_error_after_30s.png"), full_page=True)
            assert "No face was found" in status.inner_text()
            assert page.get_by_text("No face was found").count() >= 2, "the toast should still be open too"
        finally:
            browser.close()


def test_a_request_refused_before_the_queue_says_why_in_the_status_line(one_waiting_app_url, face_photo_file, tmp_path):
    """No photo, then a full queue: the status line says why at once (it used to say "Working…" for ever), and the
    busy sentence shows at the photo."""
    from gradio_client import Client, handle_file
    from gradio_client.utils import Status
    from playwright.sync_api import sync_playwright

    slow = (4, False, 100, 1.0, 192, 32, False)  # seconds on the tiny weights: the queue stays full meanwhile
    jobs = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(one_waiting_app_url)
            status = page.locator("#reconstruct_status")
            page.locator("#reconstruct_button").click()
            status.get_by_text("Not done: Please upload a photo first.").wait_for(timeout=30_000)

            jobs = [
                Client(one_waiting_app_url, download_files=str(tmp_path), verbose=False).submit(
                    handle_file(face_photo_file), *slow, api_name="/reconstruct"
                )
                for _ in range(2)
            ]
            deadline = time.monotonic() + 60
            while jobs[1].status().code != Status.IN_QUEUE:
                assert time.monotonic() < deadline, "the second request never queued"
                time.sleep(0.05)
            upload = page.locator("#photo input[type=file]")
            upload.set_input_files(str(face_photo_file))
            page.locator("#reconstruct_button").click()
            status.get_by_text("Not done: The server is busy: 1 request is already waiting").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "browser_busy.png"), full_page=True)
            assert page.get_by_text("The server is busy").count() >= 2, "the sentence should show at the photo too"
        finally:
            for job in jobs:
                job.cancel()
            browser.close()


# An absolute path as a log line would show one: a slash after a space, quote, bracket or "=", then folders.
ABSOLUTE_PATH = re.compile(r"""(?:^|[\s'"(=])/(?:[^/\s'"]+/)+""", re.MULTILINE)


def test_a_file_that_is_not_an_image_gets_a_sentence_and_the_log_no_traceback(
    app_url, app_workdir, face_photo_file, tmp_path
):
    """A text file named like a photo: the status line says so as soon as it is uploaded (naming which photo on the
    transfer tab; a photo uploaded in its place takes it back), and again once Reconstruct refuses it; the server log
    gets one line, with no traceback and no absolute path, and the browser no server error (Gradio's image
    preprocessing of the status handler used to log two and answer 500)."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    fake = tmp_path / "notes.jpg"
    fake.write_text("these are my notes, not a photo\n")
    sentence = "'notes.jpg' is not an image we can read"
    log = app_workdir / "server.log"
    logged_before = len(log.read_text())
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            server_errors = []
            page.on("response", lambda response: response.status >= 500 and server_errors.append(response.url))
            page.goto(app_url)
            upload = page.locator("#photo input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            upload.set_input_files(str(fake))
            status = page.locator("#reconstruct_status")
            status.get_by_text(f"Cannot use this photo: {sentence}").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "browser_not_an_image_uploaded.png"), full_page=True)

            page.locator("#reconstruct_button").click()
            status.get_by_text(f"Not done: {sentence}").wait_for(timeout=60_000)

            page.get_by_role("tab", name="Expression transfer").click()
            page.locator("#expression_photo input[type=file]").set_input_files(str(fake))
            transfer_status = page.locator("#transfer_status")
            transfer_status.get_by_text(f"Cannot use the expression photo: {sentence}").wait_for(timeout=30_000)
            page.locator("#expression_photo input[type=file]").set_input_files(str(face_photo_file))
            transfer_status.get_by_text("Cannot use").wait_for(state="detached", timeout=30_000)
        finally:
            browser.close()
    assert not server_errors, f"the browser got server errors from {server_errors}"
    logged = log.read_text()[logged_before:]
    assert "Traceback" not in logged and "Error:" not in logged, logged
    for folder in (app_workdir, Path(sys.prefix), Path(__file__).resolve().parents[1]):
        assert str(folder) not in logged, f"the log shows the folder {folder}:\n{logged}"
    assert not ABSOLUTE_PATH.search(logged), logged
    assert logged.count(sentence) == 1, f"one line for the one refused request:\n{logged}"


# Every progress display Gradio draws (its status tracker: a timer, a bar, a stage) in the page, counted at each change
# of the page, with the stages it showed and the elements it showed them on.
WATCH_PROGRESS = """() => {
  const seen = window.progressSeen = {most: 0, stages: [], on: []};
  const look = () => {
    const shown = new Set([...document.querySelectorAll('.progress-text, .progress-level, .eta-bar')]
      .map((part) => part.closest('.wrap')).filter((display) => display && !display.classList.contains('hide')));
    seen.most = Math.max(seen.most, shown.size);
    for (const display of shown) {
      const on = display.closest('[id]')?.id || 'an element without id';
      if (!seen.on.includes(on)) seen.on.push(on);
    }
    for (const level of document.querySelectorAll('.progress-level')) {
      const stage = level.innerText.split(' - ')[0].trim();
      if (stage && !seen.stages.includes(stage)) seen.stages.push(stage);
    }
  };
  new MutationObserver(look).observe(document.body, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def test_a_request_shows_one_progress_display_moving_through_the_stages(app_url, face_photo_file):
    """Progress is drawn once, over the 3D view, with the stage (it was drawn over each of the five outputs); the
    status line says where to look; the example's run (the first click computes it) shows one display too."""
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(app_url)
            upload = page.locator("#photo input[type=file]")
            upload.wait_for(state="attached", timeout=60_000)
            page.evaluate(WATCH_PROGRESS)
            page.locator("table tbody tr, .gallery-item").first.click()  # the example
            page.wait_for_selector("#head_model canvas", timeout=120_000)
            seen = page.evaluate("() => window.progressSeen")
            assert seen["most"] == 1 and seen["on"] == ["head_model"], f"the example: {seen}"

            upload.set_input_files(str(face_photo_file))
            # Work for a few seconds on the tiny weights, so that every stage is drawn.
            page.get_by_text("Advanced").first.click()
            page.get_by_label("number input for DDIM steps").first.fill("40")
            page.get_by_label("number input for Mesh resolution").first.fill("160")
            page.get_by_label("number input for Samples averaged").first.fill("8")
            page.keyboard.press("Tab")
            page.evaluate(WATCH_PROGRESS)
            page.locator("#reconstruct_button").click()
            status = page.locator("#reconstruct_status")
            status.get_by_text("stage by stage, shows over the 3D head").wait_for(timeout=30_000)
            page.locator("#head_model .progress-level").wait_for(timeout=30_000)
            page.screenshot(path=str(ARTIFACTS / "browser_progress.png"), full_page=True)
            status.get_by_text("Done").wait_for(timeout=120_000)
            seen = page.evaluate("() => window.progressSeen")
            assert seen["most"] == 1 and seen["on"] == ["head_model"], seen
            stages = ["Finding and cropping the face", "Sampling the head latent", "Extracting the surface"]
            assert all(stage in seen["stages"] for stage in stages), seen
        finally:
            browser.close()
