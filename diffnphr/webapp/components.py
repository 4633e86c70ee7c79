"""The components both tabs of the app lay out alike: a photo input, the settings accordion, the 3D view and the
result panel (`app.py` places them)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gradio as gr

from diffnphr.pipeline.settings import MAX_SEED, PipelineDefaults

if TYPE_CHECKING:
    from diffnphr.serving import ServingLimits


def photo_input(label: str, elem_id: str) -> gr.Image:
    """A photo upload (file, clipboard or webcam). It reaches the pipeline as a file (the events run with
    preprocess=False), so that diffnphr.face reads it and a non-image gets the pipeline's own sentence."""
    return gr.Image(label=label, type="filepath", sources=["upload", "clipboard", "webcam"], elem_id=elem_id)


def settings_panel(defaults: PipelineDefaults, resolution: int, limits: ServingLimits) -> list[gr.components.Component]:
    """The closed "Advanced" accordion: seed (+ randomize), DDIM steps, guidance, mesh resolution (default
    `resolution`), samples averaged; each slider ends at what this server accepts (`limits`)."""
    with gr.Accordion("Advanced", open=False):
        with gr.Row():
            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, maximum=MAX_SEED)
            randomize = gr.Checkbox(label="Randomize seed", value=True)
        steps = gr.Slider(1, limits.max_steps, value=defaults.steps, step=1, label="DDIM steps")
        guidance = gr.Slider(0.0, limits.max_guidance, value=defaults.guidance_scale, step=0.1, label="Guidance scale")
        resolution = gr.Slider(
            limits.min_resolution,
            limits.max_resolution,
            value=min(resolution, limits.max_resolution),
            step=16,
            label=f"Mesh resolution (grid samples per axis; at most {limits.max_resolution} on this server)",
        )
        samples = gr.Slider(
            1,
            limits.max_samples,
            value=defaults.samples,
            step=1,
            label="Samples averaged (1: one sample, with the model's variation; more: closer to the likeliest head)",
        )
    return [seed, randomize, steps, guidance, resolution, samples]


REFINE_CHOICE = "Refine to the photo's landmarks (the expression follows the face in the photo)"


def refine_choice(available: bool, default: bool) -> gr.Checkbox:
    """The refinement switch (`SamplingSettings.refine`), on by the weights' default; hidden when the weights have no
    factor map to refine with."""
    return gr.Checkbox(label=REFINE_CHOICE, value=default and available, visible=available)


def expression_panel(available: bool) -> tuple[list[gr.Slider], gr.Button]:
    """The expression sliders (jaw open, smile, blink, pucker, brows up; 0-1, in `refine.EXPRESSION_CONTROLS`'
    order) and their "Apply expression" button, in a closed accordion; hidden without a factor map."""
    with gr.Accordion("Expression (re-decode the head above)", open=False, visible=available):
        sliders = [
            gr.Slider(0.0, 1.0, value=0.0, step=0.05, label=label)
            for label in ("Jaw open", "Smile", "Blink", "Pucker", "Brows up")
        ]
        button = gr.Button("Apply expression", elem_id="expression_button")
    return sliders, button


def head_viewer(elem_id: str) -> gr.Model3D:
    """The 3D view of a head, looking at its face."""
    # (90°, 90°) looks straight at +Z, where the face points; the radius is Gradio's default framing.
    return gr.Model3D(
        label="3D head",
        clear_color=(0.93, 0.93, 0.93, 1.0),
        camera_position=(90, 90, None),
        height=460,
        elem_id=elem_id,
    )


def result_panel(downloads_id: str) -> tuple[gr.File, gr.JSON]:
    """The downloads (GLB, OBJ, PLY) and the run details under the 3D view."""
    downloads = gr.File(label="Downloads", file_count="multiple", interactive=False, elem_id=downloads_id)
    details = gr.JSON(label="Run details")
    return downloads, details
