"""`eval reconstruction`: heads reconstructed from renders of held-out identities, against ground truth and baselines.

The evaluation set is `renders`'s; the methods are `methods`'s. Every method turns a render's
crop (the encoder's input) into a padded latent [4456]; the decoder turns that into a mesh
(marching cubes at `resolution`, 128³ by default), which `eval.heads.compare_head` compares with
the ground-truth ICT head, whole head and face (`work`). Results are cached per item (`cache`), so
a call stops at `max_minutes` and the next one continues; with `shard=(k, n)` a call takes only
the k-th of n contiguous parts of the renders, so n processes can share one GPU and folder
(meshing is single-threaded CPU work). The report and figures are `report`'s and `figures`'s.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from diffnphr.data.head_geometry import HeadGeometry
from diffnphr.data.ict import load_ict
from diffnphr.devices import resolve_device
from diffnphr.eval.heads import GroundTruthHeads
from diffnphr.eval.reconstruction.cache import ResultCache, digest
from diffnphr.eval.reconstruction.figures import write_figures
from diffnphr.eval.reconstruction.methods import AVERAGED_METHOD, METHODS, METHODS_BY_NAME, Method, default_method
from diffnphr.eval.reconstruction.models import EvalModels
from diffnphr.eval.reconstruction.renders import CHUNK, SLOTS_PER_IDENTITY, default_renderer, eval_renders
from diffnphr.eval.reconstruction.report import build_report, format_reconstruction_summary
from diffnphr.eval.reconstruction.work import Work
from diffnphr.heads.latents import CODEBOOKS_NAME, FITTED_HELDOUT_NAME, load_head_latents
from diffnphr.heads.split import load_head_split

if TYPE_CHECKING:
    from torch import Tensor

    from diffnphr.eval.reconstruction.renders import EvalRenders

REPORT_JSON, REPORT_MD = "report.json", "report.md"


def evaluate_reconstruction(
    weights: str | os.PathLike | None,
    latents_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    methods: Sequence[str] | None = None,
    count: int | None = None,
    resolution: int = 128,
    points: int = 100_000,
    regression_dir: str | os.PathLike | None = None,
    landmarks_file: str | os.PathLike | None = None,
    max_minutes: float | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    renderer=None,
    neighbour_heads: int | None = None,
    figures_dir: str | os.PathLike | None = None,
    figures: int = 3,
    shard: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Evaluate the reconstruction pipeline and the baselines on renders of held-out heads (module docstring).

    `weights` is a pipeline folder (encoder/, diffusion/, decoder/, pipeline.json), `latents_dir`
    the decoder's latents folder (split, codebooks, fitted held-out latents), `out_dir` the
    resumable results folder (report.json and report.md are written there too). `methods`
    picks a subset of `METHODS` (default all; `regression` / `landmark_ridge` are left out with a
    note when `regression_dir` / `landmarks_file` is not given); `count` limits the evaluation to
    the first held-out identities. Meshes are extracted at `resolution` and compared with
    `points` samples per side. The call stops after about `max_minutes` (the report says what is
    pending). `renderer` replaces the training `HeadRenderer` (tests), `neighbour_heads` limits
    the nearest-neighbour pool. With `figures_dir`, side-by-side PNGs of the first `figures`
    renders and the astronaut portrait, and a steps-vs-Chamfer chart, are written there.
    `shard=(k, n)` evaluates only the k-th (0-based) of n contiguous parts of the renders (see
    the module docstring; figures are left to a call without it).
    """
    started = time.monotonic()
    if resolution < 16 or points < 1 or (count is not None and count < 1):
        raise ValueError(
            f"resolution must be at least 16 and points and count positive; got {resolution}, {points}, {count}"
        )
    if max_minutes is not None and not max_minutes > 0:
        raise ValueError(f"max_minutes must be positive, got {max_minutes}")
    if shard is not None and not 0 <= shard[0] < shard[1]:
        raise ValueError(f"shard must be (k, n) with 0 <= k < n, got {shard}")
    from diffnphr.pipeline import HeadReconstructionPipeline, resolve_pipeline_weights

    device = resolve_device(device)
    weights_dir = resolve_pipeline_weights(weights)
    pipeline = HeadReconstructionPipeline.from_pretrained(weights_dir, device=device)
    split = load_head_split(latents_dir)
    fitted = load_head_latents(latents_dir, FITTED_HELDOUT_NAME)
    codebooks = load_head_latents(latents_dir, CODEBOOKS_NAME)
    renders = eval_renders(split, fitted.z_exp.shape[1])
    model = load_ict(ict_path)
    if renderer is None:
        renderer = default_renderer(model, device, pipeline.encoder.image_size, backgrounds)
    truth_heads = GroundTruthHeads(HeadGeometry(model, device))

    mean_head = pipeline.diffusion.mean_head is not None
    chosen, notes = _choose_methods(methods, regression_dir, landmarks_file, mean_head, weights_dir)
    if shard is not None:  # the shards share the machine's cores: one process's threads would oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard[1]))
    regressor, landmark_latents = _load_baselines(
        {method.name for method in chosen}, regression_dir, landmarks_file, renders, device, notes
    )
    models = EvalModels(
        pipeline, split, renders, renderer, fitted, codebooks, regressor, landmark_latents, neighbour_heads, device
    )
    default = default_method(pipeline)
    if methods is None and default not in chosen:  # a pipeline with other defaults: evaluate its setting too
        chosen.insert(chosen.index(AVERAGED_METHOD) + 1, default)
    identities = len(split.heldout_identities) if count is None else min(count, len(split.heldout_identities))
    scope = range(identities * SLOTS_PER_IDENTITY)

    # The model folders, not pipeline.json: its defaults only pick which (named) method is the default.
    base = digest(
        *(weights_dir / folder for folder in ("encoder", "diffusion", "decoder")),
        Path(latents_dir) / "split.json",
        *sorted(Path(latents_dir).glob("*.safetensors")),
    )
    settings = {
        "eval_set": renders.fingerprint(),
        "resolution": resolution,
        "points": points,
        "seed": seed,
        "weights": base,
        "default_diffusion": default.name,
        "chunk": CHUNK,
        "methods": {"regression": digest(regression_dir)} if regressor is not None else {},
    }
    if landmark_latents is not None:
        settings["methods"]["landmark_ridge"] = digest(landmarks_file)
    cache = ResultCache(Path(out_dir), settings, shard)

    work = Work(cache, models, truth_heads, split, renders, pipeline.decoder, resolution, points, seed, default)
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    part = (
        scope if shard is None else scope[shard[0] * len(scope) // shard[1] : (shard[0] + 1) * len(scope) // shard[1]]
    )
    stopped = work.run(part, chosen, deadline)

    report = build_report(cache, renders, scope, [m.name for m in chosen], default, settings, notes)
    report["complete"] = not stopped
    report["seconds"] = round(time.monotonic() - started, 1)
    if figures_dir is not None and shard is None:
        report["figures"] = write_figures(Path(figures_dir), report, work, min(figures, len(scope)), resolution)
    Path(out_dir, REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    Path(out_dir, REPORT_MD).write_text(format_reconstruction_summary(report) + "\n")
    return report


def _choose_methods(
    methods: Sequence[str] | None, regression_dir, landmarks_file, mean_head: bool, weights_dir: Path
) -> tuple[list[Method], list[str]]:
    """The methods named (default: all), less those whose inputs were not given or whose model part is missing
    (`mean_head`: the diffusion model has one), with a note saying so; a method named but unavailable is an error."""
    unknown = sorted(set(methods or ()) - set(METHODS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown methods {', '.join(unknown)}; choose from {', '.join(METHODS_BY_NAME)}")
    chosen, notes = [m for m in METHODS if methods is None or m.name in methods], []
    for method, given, how in (
        ("regression", regression_dir, "--regression weights/baselines/regression"),
        ("landmark_ridge", landmarks_file, "--landmarks FILE from `eval landmarks`"),
    ):
        if METHODS_BY_NAME[method] in chosen and given is None:
            if methods is not None:
                raise ValueError(f"the method {method} needs {how}")
            chosen.remove(METHODS_BY_NAME[method])
            notes.append(f"{method} omitted: no {how} given")
    conditional_mean = METHODS_BY_NAME["diffusion_conditional_mean"]
    if conditional_mean in chosen and not mean_head:
        if methods is not None:
            raise ValueError(
                f"the method {conditional_mean.name} needs a diffusion model with a mean head; {weights_dir} has none"
            )
        chosen.remove(conditional_mean)
        notes.append(f"{conditional_mean.name} omitted: the diffusion model has no mean head")
    return chosen, notes


def _load_baselines(
    names: set[str], regression_dir, landmarks_file, renders: EvalRenders, device: torch.device, notes: list[str]
) -> tuple[Any, Tensor | None]:
    """The regression baseline and the landmark ridge's predicted latents, each only when its method is chosen
    (None otherwise); the landmark file's detection count joins `notes`."""
    regressor = landmark_latents = None
    if "regression" in names:
        from diffnphr.baselines.regression import LatentRegressor

        regressor = LatentRegressor.from_pretrained(regression_dir, device=device)
    if "landmark_ridge" in names:
        from diffnphr.baselines.landmarks import load_landmark_predictions

        landmark_latents, detected, details = load_landmark_predictions(landmarks_file, renders.fingerprint())
        notes.append(
            f"landmark_ridge: Face Mesh found no face in {int((~detected).sum())} of {len(detected)} "
            f"evaluation renders (those get the mean latent); ridge alpha {details.get('alpha')}"
        )
    return regressor, landmark_latents
