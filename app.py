"""Gradio app: one face photo -> a 3D head you can turn and download (the layout and the two endpoints).

The work lives in `diffnphr.pipeline`; what a server accepts and keeps in `diffnphr.serving`; what
the app reads of Gradio and how each outcome reaches a person in `diffnphr.webapp`. This file lays
out two tabs (Reconstruct, Expression transfer), each with a status line that keeps the last
request's outcome, and joins them to those. Three API endpoints are public: `/reconstruct`,
`/transfer` and `/expression` (the session's last head with the sliders' expression).

    python app.py [--weights DIR_OR_HUB_ID] [--device cpu|cuda] [--share] [--queue-size N] [--keep-results-s S]

Host and port follow Gradio's `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr

from diffnphr.pipeline import HeadReconstructionPipeline
from diffnphr.pipeline.refining import reconstruction_with_expression
from diffnphr.refine.refiner import control_weights
from diffnphr.serving import (
    ExamplePhotos,
    QueueAdmission,
    ReconstructionRequest,
    RequestBatcher,
    ServedFiles,
    ServerOptions,
    ServingLimits,
    export_crop,
    export_downloads,
    reconstruction_batches,
    return_freed_memory,
    run_details,
    write_example_photos,
)
from diffnphr.serving.heads import RecentHeads
from diffnphr.webapp.checks import admission_checks, request_settings, settings_checks, uploaded_path
from diffnphr.webapp.components import (
    expression_panel,
    head_viewer,
    photo_input,
    refine_choice,
    result_panel,
    settings_panel,
)
from diffnphr.webapp.gradio_state import (
    client_watch,
    is_upload,
    queued_sessions,
    session,
    upload_paths,
    waiting,
)
from diffnphr.webapp.outcomes import (
    NO_FACE_CHOICE,
    Failures,
    progress_bar,
    run_request,
    user_error,
)
from diffnphr.webapp.wiring import Endpoint, example_row, request_wiring
from diffnphr.weights import WeightsNotFoundError

if TYPE_CHECKING:
    from diffnphr.pipeline import Reconstruction
    from diffnphr.serving.batching import Progress
    from diffnphr.serving.files import ResultRun

TITLE = "diffnphr: one photo to a 3D head"
MAX_FILE_SIZE = "20mb"
DESCRIPTION = """\
Upload a photo with one clearly visible face. The app crops the head, embeds it with an image
encoder (a ResNet trained on rendered heads), samples MonoNPHM head codes with a 1D diffusion model and
extracts a coloured mesh (+Y up, face towards +Z). The back of the head is the model's guess:
change the seed for another plausible one. The default weights were trained on synthetic heads
only and do not yet capture a person's identity (see the model card).
"""


def build_demo(
    pipeline: HeadReconstructionPipeline,
    results_root: Path,
    example_photos: ExamplePhotos,
    options: ServerOptions = ServerOptions(),
) -> gr.Blocks:
    """The two-tab Blocks app around a loaded pipeline; results go under `results_root`, which must lie in
    Gradio's cache folder (`gradio.utils.get_upload_folder()`) so they are served from there, not copied."""
    server = _Server(pipeline, results_root, options)
    with gr.Blocks(title=TITLE, delete_cache=(int(options.max_age_s // 2), int(options.max_age_s))) as demo:
        server.demo = demo
        gr.Markdown(
            f"# {TITLE}\n{DESCRIPTION}\n{server.limits.describe(pipeline.default_resolution, options.queue_size)}"
        )
        with gr.Tab("Reconstruct"):
            _reconstruct_tab(server, _reconstruct_endpoint(server), example_photos)
        with gr.Tab("Expression transfer"):
            _transfer_tab(server, _transfer_endpoint(server), example_photos)
        demo.load(server.page_opened, None, None, queue=False, api_visibility="private")
        demo.unload(server.page_closed)
    return demo


class _Server:
    """What both tabs share: the pipeline and the batcher before it, this server's limits, the refusals kept for the
    status lines, the queue's admission and the files' lifetimes; `demo` is the Blocks once it exists (Gradio's
    state is read there)."""

    def __init__(self, pipeline: HeadReconstructionPipeline, results_root: Path, options: ServerOptions) -> None:
        self.pipeline = pipeline
        self.limits = ServingLimits.for_device(pipeline.device.type)
        self.batching = options.batching(pipeline.device.type)
        self.batcher = RequestBatcher(reconstruction_batches(pipeline), self.batching)
        self.failures = Failures()
        self.heads = RecentHeads()
        self.demo: gr.Blocks | None = None
        self.admission = QueueAdmission(options.queue_size, lambda: waiting(self.demo))
        self.files = ServedFiles(
            results_root,
            options.keep_results_s,
            options.max_age_s,
            is_upload=lambda path: is_upload(self.demo, path),
            queued_sessions=lambda: queued_sessions(self.demo),
        )

    @contextlib.contextmanager
    def request(self, request: gr.Request | None, endpoint: str, photos: list[str]) -> Iterator[ResultRun]:
        """The span of one request: a refusal is kept for the status line and logged, its photos are held and its
        result folder kept as long as its user needs them."""
        with self.failures.recorded(request, endpoint), self.files.request(session(request), photos) as run:
            yield run

    def reconstruct(
        self, job: ReconstructionRequest, progress: gr.Progress, request: gr.Request | None
    ) -> Reconstruction:
        """`job`'s head through the batcher (with the requests that arrive with it, on a GPU), its progress on this
        request's bar; it stops once the client has gone, while it waits or runs."""
        watch = client_watch(self.demo, request)
        return run_request(lambda: self.batcher.submit(job, progress_bar(progress, watch), watch.check), self.admission)

    def alone(
        self, work: Callable[[Progress], Reconstruction], progress: gr.Progress, request: gr.Request | None
    ) -> Reconstruction:
        """`work(progress)` on the batcher's worker between batches (so never beside one on the GPU), as
        `reconstruct`."""
        watch = client_watch(self.demo, request)
        report, check = progress_bar(progress, watch), watch.check
        return run_request(lambda: self.batcher.run_alone(work, report, check), self.admission)

    def page_opened(self, request: gr.Request) -> None:
        """A page opened: its session holds its photos and results until it closes."""
        self.files.page_opened(session(request))

    def page_closed(self, request: gr.Request) -> None:
        """A page closed: its photos and results go, and the holds of its requests still waiting."""
        self.files.page_closed(session(request))
        self.heads.forget(session(request))

    def validator(self, endpoint: Endpoint) -> Callable[..., list[dict]]:
        """The validator of `endpoint` (run before the queue): its checks; when all pass, the request's photos are
        held until it is over."""

        def validate(request: gr.Request, *values: Any) -> list[dict]:
            checks = endpoint.checks(*values)
            if all(check["is_valid"] for check in checks):
                self.files.hold(session(request), upload_paths(*values[: len(endpoint.photos)]))
            return checks

        return validate


def _reconstruct_endpoint(server: _Server) -> Endpoint:
    """`/reconstruct`: one photo to its crop, the head, the downloads, the seed used and the run details."""
    pipeline, defaults = server.pipeline, server.pipeline.defaults

    def reconstruct(
        image: dict[str, Any] | None,
        seed: float = 0,
        randomize_seed: bool = True,
        steps: float = defaults.steps,
        guidance_scale: float = defaults.guidance_scale,
        resolution: float = pipeline.default_resolution,
        samples: float = defaults.samples,
        allow_no_face: bool = False,
        refine: bool = False,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """Reconstruct a 3D head from one face photo.

        Returns the face crop, the GLB mesh, the GLB/OBJ/PLY downloads, the seed used and
        the run details (seconds per stage, mesh size, how the face was found, warnings).
        """
        values = (seed, randomize_seed, steps, guidance_scale, resolution, samples, allow_no_face, refine)
        with server.request(request, "reconstruct", upload_paths(image)) as run:
            settings = request_settings(server.limits, *values)
            allow = settings.pop("allow_no_face")
            job = ReconstructionRequest(uploaded_path(image, "photo"), pipeline.settings(**settings), allow)
            result = server.reconstruct(job, progress, request)
            server.heads.keep(session(request), result, job.settings.resolution)
            folder = run.folder()
            downloads = export_downloads(result, folder, "head")
            crop = export_crop(result, folder)
        return_freed_memory()
        return crop, downloads[0], downloads, result.seed, run_details(result)

    def checks(image: dict[str, Any] | None, *settings: Any) -> list[dict]:
        photo = gr.validate(image is not None, "Please upload a photo first.")
        return admission_checks([photo, *settings_checks(server.limits, settings)], server.admission)

    return Endpoint(reconstruct, checks, ("this photo",))


def _transfer_endpoint(server: _Server) -> Endpoint:
    """`/transfer`: the head of one photo wearing the expression of another."""
    pipeline, defaults = server.pipeline, server.pipeline.defaults

    def transfer(
        identity_image: dict[str, Any] | None,
        expression_image: dict[str, Any] | None,
        seed: float = 0,
        randomize_seed: bool = True,
        steps: float = defaults.steps,
        guidance_scale: float = defaults.guidance_scale,
        resolution: float = pipeline.default_resolution,
        samples: float = defaults.samples,
        allow_no_face: bool = False,
        refine: bool = False,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """Put the expression of the second photo on the head of the first.

        Returns the GLB mesh, the GLB/OBJ/PLY downloads, the seed used and the run details.
        """
        values = (seed, randomize_seed, steps, guidance_scale, resolution, samples, allow_no_face, refine)
        with server.request(request, "transfer", upload_paths(identity_image, expression_image)) as run:
            settings = request_settings(server.limits, *values)
            allow = settings.pop("allow_no_face")
            photos = (
                uploaded_path(identity_image, "identity photo"),
                uploaded_path(expression_image, "expression photo"),
            )
            chosen = pipeline.settings(**settings)

            def work(report: Progress) -> Reconstruction:
                return pipeline.transfer_expression(*photos, chosen, allow_no_face=allow, progress=report)

            result = server.alone(work, progress, request)
            downloads = export_downloads(result, run.folder(), "transfer")
        return_freed_memory()
        return downloads[0], downloads, result.seed, run_details(result)

    def checks(identity: dict[str, Any] | None, expression: dict[str, Any] | None, *settings: Any) -> list[dict]:
        photos = [
            gr.validate(identity is not None, "Please upload the photo whose head you want."),
            gr.validate(expression is not None, "Please upload the photo whose expression you want."),
        ]
        return admission_checks([*photos, *settings_checks(server.limits, settings)], server.admission)

    return Endpoint(transfer, checks, ("the identity photo", "the expression photo"))


def _expression_endpoint(server: _Server) -> Endpoint:
    """`/expression`: the session's last reconstructed head re-decoded with the sliders' expression."""
    pipeline = server.pipeline

    def expression(
        jaw_open: float = 0.0,
        smile: float = 0.0,
        blink: float = 0.0,
        pucker: float = 0.0,
        brows_up: float = 0.0,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """Re-decode the last head this session reconstructed with the given expression (each value from 0 to 1).

        Returns the GLB mesh, the GLB/OBJ/PLY downloads and the run details.
        """
        values = {"jaw_open": jaw_open, "smile": smile, "blink": blink, "pucker": pucker, "brows_up": brows_up}
        with server.request(request, "expression", []) as run:
            try:
                kept, weights = server.heads.last(session(request)), control_weights(**values)
            except ValueError as error:
                raise user_error(str(error), "Cannot change the expression") from error

            def work(report: Progress) -> Reconstruction:
                return reconstruction_with_expression(pipeline, kept.head, weights, kept.resolution, report)

            result = server.alone(work, progress, request)
            downloads = export_downloads(result, run.folder(), "expression")
        return_freed_memory()
        return downloads[0], downloads, run_details(result)

    return Endpoint(expression, lambda *values: [gr.validate(True, "") for _ in values], ())


def _reconstruct_tab(server: _Server, endpoint: Endpoint, example_photos: ExamplePhotos) -> None:
    """The Reconstruct tab: a photo (and its crop), the settings, the button and its status line; the head, its
    downloads and the run details; the example portrait."""
    pipeline = server.pipeline
    with gr.Row(variant="panel"):
        with gr.Column():
            with gr.Row():
                photo = photo_input("Photo", "photo")
                crop = gr.Image(label="Face crop", format="png", interactive=False, elem_id="crop_preview")
            no_face = gr.Checkbox(label=NO_FACE_CHOICE, value=False)
            refine = refine_choice(pipeline.refiner is not None, pipeline.defaults.refine)
            settings = settings_panel(pipeline.defaults, pipeline.default_resolution, server.limits)
            button = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct_button")
            status = gr.Markdown("", elem_id="reconstruct_status")  # the status line
        with gr.Column():
            head = head_viewer("head_model")
            downloads, details = result_panel("head_downloads")
    results = [crop, head, downloads, settings[0], details]
    about = "NASA's public-domain astronaut portrait"
    example_row(endpoint, [str(example_photos.portrait)], [photo, settings[0], settings[1]], results, head, about)
    inputs = [photo, *settings, no_face, refine]
    request_wiring(server, endpoint, "reconstruct", button, inputs, results, status, details, head)
    sliders, apply = expression_panel(pipeline.refiner is not None)
    outputs = [head, downloads, details]
    request_wiring(server, _expression_endpoint(server), "expression", apply, sliders, outputs, status, details, head)


def _transfer_tab(server: _Server, endpoint: Endpoint, example_photos: ExamplePhotos) -> None:
    """The Expression transfer tab: the two photos, the settings, the button and its status line; the head, its
    downloads and the run details; the example pair."""
    pipeline = server.pipeline
    with gr.Row(variant="panel"):
        with gr.Column():
            with gr.Row():
                identity = photo_input("Head from this photo", "identity_photo")
                expression = photo_input("Expression from this photo", "expression_photo")
            no_face = gr.Checkbox(label=NO_FACE_CHOICE, value=False)
            refine = refine_choice(pipeline.refiner is not None, pipeline.defaults.refine)
            settings = settings_panel(pipeline.defaults, pipeline.default_resolution, server.limits)
            button = gr.Button("Transfer expression", variant="primary", elem_id="transfer_button")
            status = gr.Markdown("", elem_id="transfer_status")
        with gr.Column():
            head = head_viewer("transfer_model")
            downloads, details = result_panel("transfer_downloads")
    results = [head, downloads, settings[0], details]
    photos = [str(example_photos.portrait), str(example_photos.expression)]
    about = "the astronaut's head with the camera operator's expression; scikit-image photos, public domain and CC0"
    example_row(endpoint, photos, [identity, expression, settings[0], settings[1]], results, head, about)
    inputs = [identity, expression, *settings, no_face, refine]
    request_wiring(server, endpoint, "transfer", button, inputs, results, status, details, head)


def main(argv: list[str] | None = None) -> int:
    """Load the model once, then serve the app until interrupted."""
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument(
        "--weights", default=None, help="weights folder or Hub id (default: $DIFFNPHR_WEIGHTS, else ./weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    parser.add_argument(
        "--queue-size",
        type=int,
        default=ServerOptions.queue_size,
        help="requests that may wait; the next is told the server is busy (default: %(default)s)",
    )
    parser.add_argument(
        "--keep-results-s",
        type=float,
        default=ServerOptions.keep_results_s,
        help="seconds an API caller's results and uploads stay after the answer (default: %(default)s)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=None,
        help="reconstructions run together, from requests arriving within 50 ms (default: 8 on a GPU, 1 on the CPU)",
    )
    args = parser.parse_args(argv)
    if args.max_batch_size is not None and args.max_batch_size < 1:
        parser.error(f"--max-batch-size must be at least 1; got {args.max_batch_size}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        pipeline = HeadReconstructionPipeline.from_pretrained(args.weights, device=args.device)
    except WeightsNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    options = ServerOptions(args.queue_size, args.keep_results_s, max_batch_size=args.max_batch_size)
    if pipeline.device.type == "cuda":  # a GPU's first call sets up CUDA and its kernels: before the first user
        pipeline.warm_up()
        batch = options.batching("cuda").max_batch_size
        if batch > 1:
            pipeline.warm_up(heads=batch)
    # Results live in Gradio's own cache folder, so they are served from where they are written, not copied.
    cache = Path(gr.utils.get_upload_folder())
    cache.mkdir(parents=True, exist_ok=True)
    results = Path(tempfile.mkdtemp(prefix="diffnphr-results-", dir=cache))
    examples = Path(tempfile.mkdtemp(prefix="diffnphr-examples-"))
    for folder in (results, examples):
        atexit.register(shutil.rmtree, folder, ignore_errors=True)
    demo = build_demo(pipeline, results, write_example_photos(examples), options)
    # Gradio's own bound stays as a backstop behind the app's busy sentence (admission is checked, then queued).
    demo.queue(max_size=options.queue_size + 8, default_concurrency_limit=1)
    # Stop on SIGTERM (how containers and Spaces stop apps) as on Ctrl-C: Gradio closes the
    # server and the output folder is removed on exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo.launch(share=args.share, max_file_size=MAX_FILE_SIZE, footer_links=["api", "gradio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
