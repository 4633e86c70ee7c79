"""Shared fixtures: real photos that ship with scikit-image (public domain), so no test downloads;
a tiny random-weights pipeline folder; and the Gradio app serving it."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from PIL import Image


@pytest.fixture
def face_photo() -> Image.Image:
    """A 512x512 RGB portrait with one frontal face (scikit-image's `astronaut`, NASA, public domain)."""
    from skimage import data

    return Image.fromarray(data.astronaut())


@pytest.fixture
def no_face_photo() -> Image.Image:
    """A 600x400 RGB photo of a coffee cup, with no face (scikit-image's `coffee`)."""
    from skimage import data

    return Image.fromarray(data.coffee())


# ---------------------------------------------------------------------------------------------
# Tiny random-weights pipeline folder (pipeline, CLI and app tests)
#
# Real layouts (4456-long latent, 65 anchors, 512-d condition) with tiny widths, so a whole
# reconstruction takes about a second on a CPU. Random decoders have no surface, so the
# decoder's geometry MLPs are set by hand to give a smooth closed blob (see `_blob_decoder`).

TINY_DEFAULTS = {
    "steps": 3,
    "guidance_scale": 1.0,
    "samples": 2,
    "resolution": 64,
    "cpu_resolution": 48,
    "scheduler": "ddim",
}


def _blob_decoder():
    """A MonoNPHM decoder (real latent layout, tiny MLPs) whose zero level set is a closed blob.

    Anchors sit in a small cloud around the head centre of the extraction box. Every geometry
    member computes, from its input offset δ to its node, ~ mean over 7 directions n of 2·|n·δ|
    (≈ |δ|) minus a radius: hidden units hold ReLU(±n·δ) (Softplus with β=100 is ~ReLU) and
    the last layer sums them. Blended over nodes, the SDF is roughly the distance to the anchor
    cloud minus 0.3: one rounded solid well inside the box. The anchor MLP and the expression
    network end in zero layers (anchors stay put, no deformation); colour MLPs keep random
    weights, so colours vary over the surface and with z_app.
    """
    import torch

    from diffnphr.nphm import MonoNPHM, MonoNPHMConfig

    config = MonoNPHMConfig(
        hidden_dim_geo=16, n_layers_geo=2, hidden_dim_app=8, n_layers_app=2, hidden_dim_ex=8, n_layers_ex=2
    )
    generator = torch.Generator().manual_seed(0)
    centre = torch.tensor([0.0, 0.12, -0.27])
    anchors = centre + 0.06 * torch.randn(config.n_anchors, 3, generator=generator)
    decoder = MonoNPHM(config, anchors)
    directions = torch.tensor(
        [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], dtype=torch.float32
    )
    directions = directions / directions.norm(dim=1, keepdim=True)
    units = torch.cat([directions, -directions])  # 14 hidden units: ReLU(+n·δ), ReLU(-n·δ)
    latent_dim = config.lat_dim_glob + config.lat_dim_loc
    with torch.no_grad():
        for member in decoder.id_decoder.deepSDFensemble.layers:
            first, middle, last = (m for m in member.layers if isinstance(m, torch.nn.Linear))
            first.weight.zero_()
            first.bias.zero_()
            first.weight[: len(units), latent_dim : latent_dim + 3] = units
            middle.weight.zero_()
            middle.bias.zero_()
            middle.weight[: len(units), : len(units)] = torch.eye(len(units))
            last.weight.zero_()
            last.weight[0, : len(units)] = 2.0 / len(directions)
            last.bias.fill_(-0.3)
        decoder.id_decoder.mlp_pos[-1].weight.zero_()
        decoder.id_decoder.mlp_pos[-1].bias.zero_()
        final = decoder.ex_decoder.defDeepSDF.linears()[-1]
        final.weight.zero_()
        final.bias.zero_()
    return decoder


@pytest.fixture(scope="session")
def tiny_weights_dir(tmp_path_factory) -> Path:
    """A complete pipeline weights folder (pipeline.json, encoder/, diffusion/, decoder/) with tiny random models."""
    import torch

    from diffnphr.diffusion import DiffusionConfig, LatentDiffusion
    from diffnphr.encoders import FaceEncoder, farl_vision_config
    from diffnphr.pipeline import HeadReconstructionPipeline, PipelineDefaults

    torch.manual_seed(0)
    encoder = FaceEncoder.from_config(
        farl_vision_config(
            hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=64
        )
    )
    diffusion = LatentDiffusion(
        DiffusionConfig(
            base_channels=8,
            channel_mults=(1, 1, 1, 1),
            attention_levels=(),
            attention_heads=2,
            norm_groups=4,
            cond_tokens=1,
            time_embed_dim=16,
            mean_head_hidden=8,
        )
    )
    # The U-Net's last layer starts at zero (an untrained model predicts no noise, whatever the
    # photo); small random weights make the sampled latent depend on the photo, as a trained one does.
    torch.nn.init.normal_(diffusion.unet.output_conv.weight, std=0.05)
    pipeline = HeadReconstructionPipeline(encoder, diffusion, _blob_decoder(), PipelineDefaults(**TINY_DEFAULTS))
    return pipeline.save_pretrained(tmp_path_factory.mktemp("tiny_weights"))


@pytest.fixture(scope="session")
def tiny_refining_weights_dir(tiny_weights_dir, tmp_path_factory) -> Path:
    """The tiny weights plus a tiny random factor map (`factor_map/`), so the pipeline refines to the landmarks."""
    import shutil

    import torch

    from diffnphr.nphm.factor_map import FactorMap, FactorMapConfig

    folder = tmp_path_factory.mktemp("tiny_refining_weights")
    shutil.copytree(tiny_weights_dir, folder, dirs_exist_ok=True)
    torch.manual_seed(0)
    FactorMap(FactorMapConfig(geometry_dim=190, hidden_dim=8, expression_hidden_dim=8, layers=1)).save_pretrained(
        folder / "factor_map"
    )
    return folder


@pytest.fixture(scope="session")
def face_photo_file(tmp_path_factory) -> Path:
    """scikit-image's astronaut portrait saved as a PNG file."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "astronaut.png"
    Image.fromarray(data.astronaut()).save(path)
    return path


@pytest.fixture(scope="session")
def no_face_photo_file(tmp_path_factory) -> Path:
    """scikit-image's coffee cup (no face) saved as a PNG file."""
    from skimage import data

    path = tmp_path_factory.mktemp("photos") / "coffee.png"
    Image.fromarray(data.coffee()).save(path)
    return path


@pytest.fixture(scope="session")
def not_an_image_file(tmp_path_factory) -> Path:
    """A text file, as a careless upload would be."""
    path = tmp_path_factory.mktemp("photos") / "notes.txt"
    path.write_text("these are my notes, not a photo\n")
    return path


@pytest.fixture(scope="session")
def app_workdir(tmp_path_factory) -> Path:
    """The served app's working folder: its `server.log` and its Gradio cache."""
    return tmp_path_factory.mktemp("app")  # the app writes .gradio/ (example cache) under its cwd


# API callers' results and uploads go this long after the answer (60 s when served for people).
KEEP_RESULTS_S = 2.0


@pytest.fixture(scope="session")
def app_keep_results_s() -> float:
    """Seconds the served app keeps an API caller's results and uploads after the answer."""
    return KEEP_RESULTS_S


@pytest.fixture(scope="session")
def app_url(tiny_weights_dir, app_workdir):
    """`python app.py` serving the tiny weights on a free local port; yields its URL, stops it after."""
    with _served_app(tiny_weights_dir, app_workdir, "--keep-results-s", str(KEEP_RESULTS_S)) as url:
        yield url


@pytest.fixture(scope="session")
def one_waiting_app_url(tiny_weights_dir, tmp_path_factory):
    """A second app whose queue holds one waiting request (so a third is told the server is busy)."""
    with _served_app(tiny_weights_dir, tmp_path_factory.mktemp("busy_app"), "--queue-size", "1") as url:
        yield url


@contextlib.contextmanager
def _served_app(weights: Path, workdir: Path, *options: str):
    repo = Path(__file__).resolve().parents[1]
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")])),
        "GRADIO_SERVER_NAME": "127.0.0.1",
        "GRADIO_SERVER_PORT": str(port),
        "GRADIO_ANALYTICS_ENABLED": "False",
        "GRADIO_TEMP_DIR": str(workdir / "gradio-cache"),
    }
    log = (workdir / "server.log").open("w")
    server = subprocess.Popen(
        [sys.executable, str(repo / "app.py"), "--weights", str(weights), *options],
        cwd=workdir,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    try:
        while True:
            if server.poll() is not None:
                pytest.fail(f"app.py exited with {server.returncode}:\n{(workdir / 'server.log').read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"app.py did not answer within 180 s:\n{(workdir / 'server.log').read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
