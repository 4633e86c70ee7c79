"""Gradio app: one face photo -> a 3D head you can turn and download (UI only).

The work lives in `diffnphr.pipeline`; this file lays out two tabs (Reconstruct, Expression
transfer), turns user errors into `gr.Error`, and manages output files. Exactly two API
endpoints are public: `/reconstruct` and `/transfer`.

    python app.py [--weights DIR_OR_HUB_ID] [--share]

Host and port follow Gradio's `GRADIO_SERVER_NAME` / `GRADIO_SERVER_PORT`.
"""

from __future__ import annotations

import argparse
import atexit
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr

from diffnphr.face import ImageInputError, NoFaceError
from diffnphr.mesh import export_mesh
from diffnphr.pipeline import (
    MAX_SAMPLES,
    MAX_SEED,
    HeadReconstructionPipeline,
    PipelineDefaults,
    Reconstruction,
    SamplingSettings,
)
from diffnphr.weights import WeightsNotFoundError

TITLE = "diffnphr: one photo to a 3D head"
MAX_FILE_SIZE = "20mb"
QUEUE_SIZE = 16
OUTPUT_MAX_AGE_S = 3600
NO_FACE_CHOICE = "Use the centre of the image if no face is found"
DOWNLOAD_FORMATS = ("glb", "obj", "ply")
DESCRIPTION = """\
Upload a photo with one clearly visible face. The app crops the head, embeds it with an image
encoder of FaRL's architecture, samples MonoNPHM head codes with a 1D diffusion model and
extracts a coloured mesh (+Y up, face towards +Z). The back of the head is the model's guess:
change the seed for another plausible one. The default weights were trained on synthetic heads
only and do not yet capture a person's identity (see the model card).
"""


class OutputFolders:
    """Per-session folders for result files, removed when the session ends or grows old."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def new_run(self, request: gr.Request | None) -> Path:
        """A fresh folder for one result of this session (older results of any session are swept)."""
        self._remove_older_than(OUTPUT_MAX_AGE_S)
        session = request.session_hash if request is not None and request.session_hash else "anonymous"
        folder = self.root / session / uuid.uuid4().hex
        folder.mkdir(parents=True)
        return folder

    def end_session(self, request: gr.Request) -> None:
        """Remove everything a session wrote (Gradio has its own copies of what it served)."""
        if request.session_hash:
            shutil.rmtree(self.root / request.session_hash, ignore_errors=True)

    def _remove_older_than(self, seconds: float) -> None:
        cutoff = time.time() - seconds
        for run in self.root.glob("*/*"):
            try:
                expired = run.stat().st_mtime < cutoff
            except FileNotFoundError:  # its session just ended
                continue
            if expired:
                shutil.rmtree(run, ignore_errors=True)


def build_demo(pipeline: HeadReconstructionPipeline, outputs: OutputFolders, example_photo: Path) -> gr.Blocks:
    """The two-tab Blocks app around a loaded pipeline."""
    defaults = pipeline.defaults

    def reconstruct(
        image: dict[str, Any] | None,
        seed: float = 0,
        randomize_seed: bool = True,
        steps: float = defaults.steps,
        guidance_scale: float = defaults.guidance_scale,
        resolution: float = pipeline.default_resolution,
        samples: float = defaults.samples,
        allow_no_face: bool = False,
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """Reconstruct a 3D head from one face photo.

        Returns the face crop, the GLB mesh, the GLB/OBJ/PLY downloads, the seed used and
        the run details (seconds per stage, mesh size, warnings).
        """
        result = _run(
            lambda: pipeline(
                _uploaded_path(image),
                _sampling(pipeline, seed, randomize_seed, steps, guidance_scale, resolution, samples),
                allow_no_face=bool(allow_no_face),
                progress=_progress_bar(progress),
            )
        )
        files = _export(result, outputs.new_run(request), "head")
        return result.crop.image, files[0], files, result.seed, _details(result)

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
        request: gr.Request | None = None,
        progress: gr.Progress = gr.Progress(),
    ) -> tuple:
        """Put the expression of the second photo on the head of the first.

        Returns the GLB mesh, the GLB/OBJ/PLY downloads, the seed used and the run details.
        """
        result = _run(
            lambda: pipeline.transfer_expression(
                _uploaded_path(identity_image),
                _uploaded_path(expression_image),
                _sampling(pipeline, seed, randomize_seed, steps, guidance_scale, resolution, samples),
                allow_no_face=bool(allow_no_face),
                progress=_progress_bar(progress),
            )
        )
        files = _export(result, outputs.new_run(request), "transfer")
        return files[0], files, result.seed, _details(result)

    def require_photo(image: dict[str, Any] | None, *settings: Any) -> list[dict]:
        return [gr.validate(image is not None, "Please upload a photo first.")] + _all_valid(settings)

    def require_photos(
        identity: dict[str, Any] | None, expression: dict[str, Any] | None, *settings: Any
    ) -> list[dict]:
        return [
            gr.validate(identity is not None, "Please upload the photo whose head you want."),
            gr.validate(expression is not None, "Please upload the photo whose expression you want."),
        ] + _all_valid(settings)

    with gr.Blocks(title=TITLE, delete_cache=(OUTPUT_MAX_AGE_S // 2, OUTPUT_MAX_AGE_S)) as demo:
        gr.Markdown(f"# {TITLE}\n{DESCRIPTION}")
        with gr.Tab("Reconstruct"):
            with gr.Row(variant="panel"):
                with gr.Column():
                    with gr.Row():
                        photo = _photo_input("Photo", "photo")
                        crop = gr.Image(label="Face crop", format="png", interactive=False, elem_id="crop_preview")
                    no_face = gr.Checkbox(label=NO_FACE_CHOICE, value=False)
                    settings = _settings(defaults, pipeline.default_resolution)
                    run = gr.Button("Reconstruct", variant="primary", elem_id="reconstruct_button")
                with gr.Column():
                    head = _viewer("head_model")
                    downloads, details = _result_panel()
            inputs = [photo, *settings, no_face]
            results = [crop, head, downloads, settings[0], details]
            gr.Examples(
                [[str(example_photo), 0, False]],
                [photo, settings[0], settings[1]],
                results,
                fn=reconstruct,
                cache_examples=True,
                cache_mode="lazy",
                preprocess=False,
                visible_columns=[0],
                label="Example (NASA's public-domain astronaut portrait; seed 0)",
            )
            run.click(
                reconstruct,
                inputs,
                results,
                api_name="reconstruct",
                preprocess=False,
                validator=require_photo,
                concurrency_id="model",
            )

        with gr.Tab("Expression transfer"):
            with gr.Row(variant="panel"):
                with gr.Column():
                    with gr.Row():
                        identity = _photo_input("Head from this photo", "identity_photo")
                        expression = _photo_input("Expression from this photo", "expression_photo")
                    transfer_no_face = gr.Checkbox(label=NO_FACE_CHOICE, value=False)
                    transfer_settings = _settings(defaults, pipeline.default_resolution)
                    transfer_run = gr.Button("Transfer expression", variant="primary", elem_id="transfer_button")
                with gr.Column():
                    transfer_head = _viewer("transfer_model")
                    transfer_downloads, transfer_details = _result_panel()
            transfer_run.click(
                transfer,
                [identity, expression, *transfer_settings, transfer_no_face],
                [transfer_head, transfer_downloads, transfer_settings[0], transfer_details],
                api_name="transfer",
                preprocess=False,
                validator=require_photos,
                concurrency_id="model",
            )
        demo.unload(outputs.end_session)
    return demo


def _photo_input(label: str, elem_id: str) -> gr.Image:
    # The upload reaches the pipeline as a file (preprocess=False on the events), so that
    # diffnphr.face reads it and a non-image gets the pipeline's own sentence.
    return gr.Image(label=label, type="filepath", sources=["upload", "clipboard", "webcam"], elem_id=elem_id)


def _settings(defaults: PipelineDefaults, resolution: int) -> list[gr.components.Component]:
    """The closed "Advanced" accordion: seed (+ randomize), DDIM steps, guidance, mesh resolution (default
    `resolution`), samples averaged."""
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            randomize = gr.Checkbox(label="Randomize seed", value=True)
        steps = gr.Slider(1, max(100, defaults.steps), value=defaults.steps, step=1, label="DDIM steps")
        guidance = gr.Slider(0.0, 10.0, value=defaults.guidance_scale, step=0.1, label="Guidance scale")
        resolution = gr.Slider(32, 512, value=resolution, step=16, label="Mesh resolution (grid samples per axis)")
        samples = gr.Slider(
            1,
            MAX_SAMPLES,
            value=defaults.samples,
            step=1,
            label="Samples averaged (1: one sample from the model, with its variation; more: closer to the likeliest head)",
        )
    return [seed, randomize, steps, guidance, resolution, samples]


def _viewer(elem_id: str) -> gr.Model3D:
    # (90°, 90°) looks straight at +Z, where the face points; the radius is Gradio's default framing.
    return gr.Model3D(
        label="3D head",
        clear_color=(0.93, 0.93, 0.93, 1.0),
        camera_position=(90, 90, None),
        height=460,
        elem_id=elem_id,
    )


def _result_panel() -> tuple[gr.File, gr.JSON]:
    downloads = gr.File(label="Downloads", file_count="multiple", interactive=False)
    details = gr.JSON(label="Run details")
    return downloads, details


def _all_valid(values: tuple) -> list[dict]:
    return [gr.validate(True, "") for _ in values]


def _uploaded_path(upload: dict[str, Any] | str | None) -> str:
    """The server-side file of an upload (events run with preprocess=False, so uploads arrive as FileData)."""
    path = upload.get("path") if isinstance(upload, dict) else upload
    if not path:
        raise gr.Error("Please upload a photo first.", print_exception=False)
    return path


def _run(work: Callable[[], Reconstruction]) -> Reconstruction:
    """Run the pipeline, turning mistakes a person can fix into a message in the UI."""
    try:
        result = work()
    except NoFaceError as error:
        raise gr.Error(f"{error} Or tick “{NO_FACE_CHOICE}”.", title="No face found", print_exception=False) from error
    except ImageInputError as error:
        raise gr.Error(str(error), title="Cannot use this image", print_exception=False) from error
    except ValueError as error:
        raise gr.Error(str(error), title="Cannot reconstruct") from error
    for warning in result.warnings:
        gr.Warning(warning)
    return result


def _sampling(
    pipeline: HeadReconstructionPipeline,
    seed: float,
    randomize_seed: bool,
    steps: float,
    guidance_scale: float,
    resolution: float,
    samples: float,
) -> SamplingSettings:
    """The pipeline's validated settings for the values of the settings widgets."""
    return pipeline.settings(
        seed=None if randomize_seed or seed is None else int(seed),
        steps=int(steps),
        guidance_scale=float(guidance_scale),
        resolution=int(resolution),
        samples=int(samples),
    )


def _progress_bar(progress: gr.Progress) -> Callable[[str, float], None]:
    """The pipeline's progress callback, shown on Gradio's progress bar."""
    return lambda stage, fraction: progress(fraction, desc=stage)


def _export(result: Reconstruction, folder: Path, stem: str) -> list[str]:
    """Write the mesh in every download format; the GLB comes first (it feeds the viewer)."""
    name = f"{stem}_seed{result.seed}"
    return [str(export_mesh(result.mesh, folder / f"{name}.{fmt}")) for fmt in DOWNLOAD_FORMATS]


def _details(result: Reconstruction) -> dict[str, Any]:
    return {
        "seed": result.seed,
        "seconds": result.timings,
        "vertices": len(result.mesh.vertices),
        "faces": len(result.mesh.faces),
        "warnings": result.warnings,
    }


def _write_example_photo(folder: Path) -> Path:
    """Save scikit-image's astronaut portrait (NASA, public domain) as the example photo."""
    from PIL import Image
    from skimage import data

    path = folder / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


def main(argv: list[str] | None = None) -> int:
    """Load the model once, then serve the app until interrupted."""
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument(
        "--weights", default=None, help="weights folder or Hub id (default: $DIFFNPHR_WEIGHTS, else ./weights)"
    )
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link (needs internet)")
    args = parser.parse_args(argv)
    try:
        pipeline = HeadReconstructionPipeline.from_pretrained(args.weights, device=args.device)
    except WeightsNotFoundError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    root = Path(tempfile.mkdtemp(prefix="diffnphr-app-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    examples = root / "examples"
    examples.mkdir()
    demo = build_demo(pipeline, OutputFolders(root / "sessions"), _write_example_photo(examples))
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=1)
    # Stop on SIGTERM (how containers and Spaces stop apps) as on Ctrl-C: Gradio closes the
    # server and the output folder is removed on exit.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    demo.launch(share=args.share, max_file_size=MAX_FILE_SIZE, footer_links=["api", "gradio"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
