"""`eval reconstruction`: heads reconstructed from renders of held-out identities, against ground truth and baselines.

The evaluation set: every held-out identity of the split × 3 expression slots (slot 0 neutral and
two of the slots that have fitted latents, drawn by a fixed seed), each rendered twice by
`HeadRenderer` with seeds no training step uses (`EVAL_RENDER_SEED` + chunk; the second view, for
the consistency check, `SECOND_VIEW_OFFSET` further). Renders go in fixed chunks of `CHUNK`, so a
render and its diffusion noise never depend on which subset a call evaluates.

Every method turns a render's crop (`render_crops`, the encoder's input) into a padded latent
[4456]; the decoder turns that into a mesh (marching cubes at `resolution`, 128³ by default),
which `eval_decoder.compare_head` compares with the ground-truth ICT head, whole head and face:

* `decoder_fit`: the latents fitted to the held-out heads with the decoder frozen, the
  decoder's ceiling (it sees the 3D head, not the image); reported apart from the methods;
* `mean`: the training latents' mean (`LatentDiffusion.data_mean`);
* `nearest_neighbour`: the codebook latent of the training head whose render embedding is
  closest (`baselines.neighbours`);
* `regression`: the same encoder + an MLP to z (`baselines.regression.LatentRegressor`);
* `landmark_ridge`: ridge from Face Mesh landmarks (`baselines.landmarks`, made on the CPU by
  `eval landmarks`);
* `diffusion_ddim{5,10,25,50}_g{1,2}`: the diffusion model, DDIM steps × guidance scale, seeded;
* `diffusion_ddim10_g1_avg8`: the app's default, 8 samples averaged in latent space
  (`LatentDiffusion.sample(average_of=8)`; not an oracle: no ground truth is used to choose).
  A pipeline whose defaults differ gets its own default setting evaluated too;
* `diffusion_conditional_mean`: the diffusion model's mean head alone, without sampling (the
  point its samples are centred on; only for a model with a mean head): what sampling adds;
* `sampling_floor`: the ground truth against itself resampled: what a perfect reconstruction scores.

Beside the table: consistency (Chamfer between the reconstructions of a head's two renders,
over the Chamfer to another head's, at the pipeline's default settings) and expression transfer
(identity A's z_geo/z_app with B's z_exp against the true head of A with B's expression).

Work is cached per (kind, method, render) in the output folder (`results.jsonl`), so a call stops
at `max_minutes` and the next one continues; `settings.json` guards against mixing settings.
With `shard=(k, n)` a call takes only the k-th of n contiguous parts of the renders and caches
into `results-k-of-n.jsonl`, so n processes can share one GPU and folder (meshing is
single-threaded CPU work); every call reads all the folder's result files.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from diffnphr.data.ict import ICTFaceModel, load_ict
from diffnphr.eval import surface_metrics
from diffnphr.eval_decoder import REPORTED, GroundTruthHeads, compare_head, decode_mesh, sample_above_floor
from diffnphr.nphm.latents import pack, unpack
from diffnphr.train.decoder import CODEBOOKS_NAME, resolve_device
from diffnphr.train.head_latents import FITTED_HELDOUT_NAME, HeadLatents, load_head_latents
from diffnphr.train.split import HeadSplit, load_head_split

SLOTS_PER_IDENTITY = 3
SLOT_DRAW_SEED = 5
CHUNK = 50
EVAL_RENDER_SEED = 1_000_000_000  # training steps use seeds below 10^8, validation 2^40 and up
SECOND_VIEW_OFFSET = 100_000
NEIGHBOUR_RENDER_SEED = 1_500_000_000
LANDMARK_TRAIN_SEED = 1_700_000_000
DIFFUSION_SEED = 0
DIFFUSION_STEPS = (5, 10, 25, 50)
GUIDANCE_SCALES = (1.0, 2.0)
CACHE_FILE, SETTINGS_FILE, REPORT_JSON, REPORT_MD = "results.jsonl", "settings.json", "report.json", "report.md"
BASELINES = ("mean", "nearest_neighbour", "regression", "landmark_ridge")


def _diffusion_name(steps: int, guidance: float, samples: int = 1) -> str:
    return f"diffusion_ddim{steps}_g{guidance:g}" + (f"_avg{samples}" if samples > 1 else "")


DIFFUSION_METHODS = tuple(_diffusion_name(s, g) for s in DIFFUSION_STEPS for g in GUIDANCE_SCALES)
CONDITIONAL_MEAN = "diffusion_conditional_mean"
# The shipped pipeline's default (`PipelineDefaults`: 10 steps, guidance 1, 8 samples averaged; a test
# keeps the two in step without importing the pipeline here)
AVERAGED_METHOD = _diffusion_name(10, 1.0, 8)
METHODS = ("decoder_fit", *BASELINES, *DIFFUSION_METHODS, AVERAGED_METHOD, CONDITIONAL_MEAN, "sampling_floor")
TRANSFER_METHODS = ("diffusion", "diffusion_without_transfer", "decoder_fit")


# ---------------------------------------------------------------------------------------------
# The evaluation set and its renders


@dataclass(frozen=True)
class EvalRenders:
    """The evaluation renders: split rows and expression slots, in a fixed order (identity-major)."""

    identities: Tensor  # (N,) split rows of held-out identities
    slots: Tensor  # (N,) expression slots; every identity's first render is its neutral slot 0
    split_fingerprint: str

    def __len__(self) -> int:
        return len(self.identities)

    def chunk_of(self, index: int) -> int:
        """The render chunk (of `CHUNK` renders) holding render `index`."""
        return index // CHUNK

    def chunk_rows(self, chunk: int) -> slice:
        """The renders of one chunk."""
        return slice(chunk * CHUNK, min((chunk + 1) * CHUNK, len(self)))

    def seed(self, chunk: int, view: int) -> int:
        """The scene seed of a chunk's renders (view 0: the evaluated render; view 1: the second one)."""
        return EVAL_RENDER_SEED + view * SECOND_VIEW_OFFSET + chunk

    def fingerprint(self) -> str:
        """A short hash of the split, the renders and their seeds (files made for this set carry it)."""
        digest = hashlib.sha256(f"{self.split_fingerprint}/{EVAL_RENDER_SEED}/{SECOND_VIEW_OFFSET}/{CHUNK}".encode())
        digest.update(self.identities.numpy().tobytes())
        digest.update(self.slots.numpy().tobytes())
        return digest.hexdigest()[:16]


def eval_renders(split: HeadSplit, fitted_slots: int) -> EvalRenders:
    """Every held-out identity × slot 0 and two other slots below `fitted_slots`, drawn with a fixed seed."""
    if fitted_slots < SLOTS_PER_IDENTITY:
        raise ValueError(
            f"the evaluation needs fitted latents for at least {SLOTS_PER_IDENTITY} expression slots "
            f"per held-out identity; the fitted latents have {fitted_slots}"
        )
    rng = np.random.default_rng(SLOT_DRAW_SEED)
    identities, slots = [], []
    for identity in split.heldout_identities.tolist():
        others = np.sort(rng.choice(np.arange(1, fitted_slots), SLOTS_PER_IDENTITY - 1, replace=False))
        identities += [identity] * SLOTS_PER_IDENTITY
        slots += [0, *others.tolist()]
    return EvalRenders(torch.tensor(identities), torch.tensor(slots), split.fingerprint())


def render_scenes(renderer, split: HeadSplit, identities: Tensor, slots: Tensor, seed: int, device: torch.device):
    """The renderer's scenes of heads (split rows, slots) drawn from `seed`."""
    return renderer.sample_scenes(
        split.identity_coefficients[identities].to(device),
        split.expression_weights[identities, slots].to(device),
        split.appearance(identities).to(device),
        seed=seed,
    )


def default_renderer(
    model: ICTFaceModel, device: torch.device, image_size: int, backgrounds: str | os.PathLike | None = None
):
    """The training renderer (`diffnphr.data.renders.HeadRenderer`) with crops of the encoder's input size."""
    from diffnphr.data.backgrounds import BackgroundBank
    from diffnphr.data.renders import HeadRenderer, RenderConfig

    bank = BackgroundBank.load(backgrounds, device) if backgrounds else None
    return HeadRenderer(model, device, RenderConfig(image_size=image_size), backgrounds=bank)


# ---------------------------------------------------------------------------------------------
# Latents per method


class _Predictors:
    """The trained models and baselines; turns one chunk of renders into each method's latents."""

    def __init__(
        self,
        pipeline,
        split: HeadSplit,
        renders: EvalRenders,
        renderer,
        fitted: HeadLatents,
        codebooks: HeadLatents,
        regressor,
        landmark_latents: Tensor | None,
        neighbour_heads: int | None,
        device: torch.device,
    ):
        self.pipeline, self.split, self.renders, self.renderer = pipeline, split, renders, renderer
        self.fitted, self.codebooks, self.regressor = fitted, codebooks, regressor
        self.landmark_latents, self.neighbour_heads, self.device = landmark_latents, neighbour_heads, device
        self._neighbours = None
        self._last_conditions: tuple[tuple[int, int] | None, Any] = (None, None)
        self._fitted_row = {int(identity): row for row, identity in enumerate(fitted.identities.tolist())}
        defaults = pipeline.defaults
        self.default_method = _diffusion_name(defaults.steps, defaults.guidance_scale, defaults.samples)

    def crops(self, chunk: int, view: int) -> Tensor:
        """The chunk's encoder inputs (B, 3, S, S) in [0, 1]."""
        rows = self.renders.chunk_rows(chunk)
        scenes = render_scenes(
            self.renderer,
            self.split,
            self.renders.identities[rows],
            self.renders.slots[rows],
            self.renders.seed(chunk, view),
            self.device,
        )
        return self.renderer.render_crops(scenes)

    @torch.inference_mode()
    def latents(self, chunk: int, methods: Sequence[str], view: int = 0) -> dict[str, Tensor]:
        """Padded raw latents (B, 4456) on the CPU per method for one chunk (view 1: the second renders)."""
        rows = self.renders.chunk_rows(chunk)
        identities, slots = self.renders.identities[rows], self.renders.slots[rows]

        # Rendering a chunk costs minutes on a CPU: only the methods that read the image ask for it.
        def crops() -> Tensor:
            return self._conditions(chunk, view)[0]

        def z_cond() -> Tensor:
            return self._conditions(chunk, view)[1]

        seed = DIFFUSION_SEED + chunk + view * SECOND_VIEW_OFFSET
        out: dict[str, Tensor] = {}
        for method in methods:
            if method == "decoder_fit":
                latent = self.fitted_latents(identities, slots)
            elif method == "mean":
                latent = self.pipeline.diffusion.data_mean.expand(len(identities), -1)
            elif method == "nearest_neighbour":
                latent = self.neighbours().predict(z_cond())
            elif method == "regression":
                latent = self.regressor.predict(self.regressor.encoder.preprocess(crops()))
            elif method == "landmark_ridge":
                latent = self.landmark_latents[rows]
            elif method == CONDITIONAL_MEAN:
                diffusion = self.pipeline.diffusion
                latent = diffusion.denormalize(diffusion.conditional_mean(z_cond().to(diffusion.data_mean.dtype)))
            elif method.startswith("diffusion_ddim"):
                steps, guidance, samples = _parse_diffusion_name(method)
                latent = self.pipeline.diffusion.sample(
                    z_cond(),
                    num_steps=steps,
                    seed=seed,
                    guidance_scale=guidance,
                    average_of=samples,
                    scheduler=self.pipeline.defaults.scheduler,
                )
            elif method == "sampling_floor":
                continue
            else:
                raise ValueError(f"unknown method {method!r}")
            out[method] = latent.float().cpu()
        return out

    def _conditions(self, chunk: int, view: int) -> tuple[Tensor, Tensor]:
        """A chunk's crops and their embeddings, kept for the methods that follow on the same chunk."""
        if self._last_conditions[0] != (chunk, view):
            crops = self.crops(chunk, view)
            self._last_conditions = ((chunk, view), (crops, self.pipeline.encoder.encode(crops)))
        return self._last_conditions[1]

    def fitted_latents(self, identities: Tensor, slots: Tensor) -> Tensor:
        """Fitted (decoder-frozen) latents of held-out heads (split rows, slots), padded."""
        rows = torch.tensor([self._fitted_row[int(i)] for i in identities])
        return pack(self.fitted.z_geo[rows], self.fitted.z_exp[rows, slots], self.fitted.z_app[rows])

    def neighbours(self):
        """The nearest-neighbour baseline over renders of the training heads, built on first use."""
        if self._neighbours is None:
            from diffnphr.baselines.neighbours import NearestNeighbourLatents

            flat = self.codebooks.flat()
            heads = len(flat) if self.neighbour_heads is None else min(self.neighbour_heads, len(flat))
            slots = self.codebooks.z_exp.shape[1]
            index = torch.arange(heads)
            identities, head_slots = self.codebooks.identities[index // slots], index % slots
            embeddings = []
            for start in range(0, heads, CHUNK):
                part = slice(start, start + CHUNK)
                scenes = render_scenes(
                    self.renderer,
                    self.split,
                    identities[part],
                    head_slots[part],
                    NEIGHBOUR_RENDER_SEED + start // CHUNK,
                    self.device,
                )
                embeddings.append(self.pipeline.encoder.encode(self.renderer.render_crops(scenes)).float())
            self._neighbours = NearestNeighbourLatents(torch.cat(embeddings), flat[:heads].to(self.device))
        return self._neighbours


def _parse_diffusion_name(name: str) -> tuple[int, float, int]:
    setting, _, samples = name.removeprefix("diffusion_ddim").partition("_avg")
    steps, guidance = setting.split("_g")
    return int(steps), float(guidance), int(samples or 1)


def _transfer_key(default: str, method: str, index: int) -> str:
    """Transfer results depend on the default diffusion setting they were made with."""
    return _key(f"transfer@{default}", method, index)


# ---------------------------------------------------------------------------------------------
# The result cache


class _ResultCache:
    """Per-item results in `results*.jsonl` (one JSON line each), valid for the settings in `settings.json`;
    new results go to `results.jsonl`, or to the shard's own file."""

    def __init__(self, directory: Path, settings: dict[str, Any], shard: tuple[int, int] | None = None):
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / (
            CACHE_FILE if shard is None else f"{Path(CACHE_FILE).stem}-{shard[0]}-of-{shard[1]}.jsonl"
        )
        settings_path = directory / SETTINGS_FILE
        if settings_path.is_file():
            stored = json.loads(settings_path.read_text())
            # Results are keyed by the method (the default setting included), so the default may change.
            changed = [
                key
                for key in settings
                if key not in ("methods", "default_diffusion") and stored.get(key) != settings[key]
            ]
            changed += [
                f"inputs of {method}"
                for method, digest in settings["methods"].items()
                if stored.get("methods", {}).get(method, digest) != digest
            ]
            if changed:
                raise ValueError(
                    f"{directory} holds results made with other settings ({', '.join(changed)}); "
                    f"use another output folder or delete it."
                )
            settings = {**settings, "methods": {**stored.get("methods", {}), **settings["methods"]}}
        text = json.dumps(settings, indent=1) + "\n"
        if not settings_path.is_file() or settings_path.read_text() != text:  # shards starting together write it once
            settings_path.write_text(text)
        self.results: dict[str, dict[str, Any]] = {}
        for path in sorted(directory.glob(f"{Path(CACHE_FILE).stem}*.jsonl")):
            for line in path.read_text().splitlines():
                if line.strip():
                    record = json.loads(line)
                    self.results[record["key"]] = record

    def __contains__(self, key: str) -> bool:
        return key in self.results

    def add(self, key: str, record: dict[str, Any]) -> None:
        """Store one result (appended and flushed at once, so an interrupted call loses nothing finished)."""
        record = {"key": key, **record}
        self.results[key] = record
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")


def _key(kind: str, method: str, index: int) -> str:
    return f"{kind}/{method}/{index}"


def _digest(*paths: str | os.PathLike | None) -> str:
    """A short hash of the contents of files (folders: every file inside, by relative path)."""
    digest = hashlib.sha256()
    for path in paths:
        if path is None:
            continue
        path = Path(path)
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The evaluation


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
    log: Callable[[str], None] | None = None,
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
    log = log or (lambda message: None)
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
        renderer = default_renderer(model, device, pipeline.encoder.model.config.image_size, backgrounds)
    truth_heads = GroundTruthHeads(model, device)

    chosen, notes = _choose_methods(methods, regression_dir, landmarks_file)
    if CONDITIONAL_MEAN in chosen and pipeline.diffusion.mean_head is None:
        if methods is not None:
            raise ValueError(
                f"the method {CONDITIONAL_MEAN} needs a diffusion model with a mean head; {weights_dir} has none"
            )
        chosen.remove(CONDITIONAL_MEAN)
        notes.append(f"{CONDITIONAL_MEAN} omitted: the diffusion model has no mean head")
    if shard is not None:  # the shards share the machine's cores: one process's threads would oversubscribe them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // shard[1]))
    regressor = landmark_latents = None
    if "regression" in chosen:
        from diffnphr.baselines.regression import LatentRegressor

        regressor = LatentRegressor.from_pretrained(regression_dir, device=device)
    if "landmark_ridge" in chosen:
        from diffnphr.baselines.landmarks import load_landmark_predictions

        landmark_latents, detected, details = load_landmark_predictions(landmarks_file, renders.fingerprint())
        notes.append(
            f"landmark_ridge: Face Mesh found no face in {int((~detected).sum())} of {len(detected)} "
            f"evaluation renders (those get the mean latent); ridge alpha {details.get('alpha')}"
        )
    predictors = _Predictors(
        pipeline, split, renders, renderer, fitted, codebooks, regressor, landmark_latents, neighbour_heads, device
    )
    default = predictors.default_method
    if methods is None and default not in chosen:  # a pipeline with other defaults: evaluate its setting too
        chosen.insert(chosen.index(AVERAGED_METHOD) + 1, default)
    identities = len(split.heldout_identities) if count is None else min(count, len(split.heldout_identities))
    scope = range(identities * SLOTS_PER_IDENTITY)

    # The model folders, not pipeline.json: its defaults only pick which (named) method is the default.
    base = _digest(
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
        "default_diffusion": default,
        "chunk": CHUNK,
        "methods": {"regression": _digest(regression_dir)} if regressor is not None else {},
    }
    if landmark_latents is not None:
        settings["methods"]["landmark_ridge"] = _digest(landmarks_file)
    cache = _ResultCache(Path(out_dir), settings, shard)

    work = _Work(cache, predictors, truth_heads, split, renders, pipeline.decoder, resolution, points, seed)
    deadline = None if max_minutes is None else started + 60.0 * max_minutes
    part = (
        scope if shard is None else scope[shard[0] * len(scope) // shard[1] : (shard[0] + 1) * len(scope) // shard[1]]
    )
    stopped = work.run(part, chosen, default, deadline, log)

    report = build_report(cache, renders, scope, chosen, default, settings, notes)
    report["complete"] = not stopped
    report["seconds"] = round(time.monotonic() - started, 1)
    if figures_dir is not None and shard is None:
        report["figures"] = write_figures(Path(figures_dir), report, work, min(figures, len(scope)), resolution)
    Path(out_dir, REPORT_JSON).write_text(json.dumps(report, indent=1) + "\n")
    Path(out_dir, REPORT_MD).write_text(format_reconstruction_summary(report) + "\n")
    return report


def _choose_methods(methods, regression_dir, landmarks_file) -> tuple[list[str], list[str]]:
    unknown = sorted(set(methods or ()) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown methods {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    chosen, notes = [m for m in METHODS if methods is None or m in methods], []
    for method, given, how in (
        ("regression", regression_dir, "--regression weights/baselines/regression"),
        ("landmark_ridge", landmarks_file, "--landmarks FILE from `eval landmarks`"),
    ):
        if method in chosen and given is None:
            if methods is not None:
                raise ValueError(f"the method {method} needs {how}")
            chosen.remove(method)
            notes.append(f"{method} omitted: no {how} given")
    return chosen, notes


class _Work:
    """The per-item loop: decode, compare, cache; latents computed per chunk as the loop reaches it."""

    def __init__(
        self,
        cache: _ResultCache,
        predictors: _Predictors,
        truth_heads: GroundTruthHeads,
        split: HeadSplit,
        renders: EvalRenders,
        decoder,
        resolution: int,
        points: int,
        seed: int,
    ):
        self.cache, self.predictors, self.truth_heads, self.split = cache, predictors, truth_heads, split
        self.renders, self.decoder, self.resolution, self.points, self.seed = renders, decoder, resolution, points, seed
        self._latents: dict[tuple[int, int, str], dict[str, Tensor]] = {}

    def latent(self, method: str, index: int, view: int = 0) -> Tensor:
        """The padded latent one method gives for render `index` (computed with its whole chunk, kept)."""
        chunk = self.renders.chunk_of(index)
        key = (chunk, view, method)
        if key not in self._latents:
            self._latents[key] = self.predictors.latents(chunk, [method], view)[method]
        return self._latents[key][index - chunk * CHUNK]

    def mesh(self, latent: Tensor, colours: bool = False):
        """The decoder's mesh of a padded latent."""
        z_geo, z_exp, z_app = unpack(latent)
        return decode_mesh(self.decoder, z_geo, z_exp, z_app, self.resolution, colours=colours)

    def truth(self, index: int, expression_identity: int | None = None, expression_slot: int | None = None):
        """The ground-truth head of render `index` (or its identity wearing another head's expression)."""
        identity, slot = int(self.renders.identities[index]), int(self.renders.slots[index])
        if expression_identity is not None:
            return self.truth_heads.mesh(self.split, identity, expression_slot, expression_identity=expression_identity)
        return self.truth_heads.mesh(self.split, identity, slot)

    def compare(self, mesh, truth, index: int) -> dict[str, Any]:
        """`compare_head` metrics, or the reason there are none (an empty or misplaced mesh)."""
        identity = int(self.renders.identities[index])
        try:
            return compare_head(
                mesh.vertices, mesh.faces, truth, self.points, self.seed + 7919 * identity + index, with_floor=False
            )
        except ValueError as error:
            return {"error": str(error)}

    def run(
        self, scope: range, methods: Sequence[str], default: str, deadline: float | None, log: Callable[[str], None]
    ) -> bool:
        """Do every pending item in `scope`; True when the deadline stopped it first."""
        done = 0
        for index in scope:
            pending = [m for m in methods if _key("recon", m, index) not in self.cache]
            # Consistency and transfer use the default diffusion setting; they run when diffusion is evaluated.
            diffusion = any(m.startswith("diffusion") for m in methods)
            consistency = diffusion and _key("consistency", default, index) not in self.cache
            transfer = [
                m
                for m in TRANSFER_METHODS
                if diffusion
                and int(self.renders.slots[index]) == 0
                and _transfer_key(default, m, index) not in self.cache
            ]
            if not (pending or consistency or transfer):
                continue
            truth = self.truth(index)
            default_mesh = None
            for method in pending:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                if method == "sampling_floor":
                    record = self.compare(_Mesh(truth["vertices"], truth["faces"]), truth, index)
                else:
                    mesh = self.mesh(self.latent(method, index))
                    default_mesh = mesh if method == default else default_mesh
                    record = self.compare(mesh, truth, index)
                self.cache.add(_key("recon", method, index), record)
                done += 1
            if consistency:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                default_mesh = default_mesh or self.mesh(self.latent(default, index))
                self.cache.add(_key("consistency", default, index), self.consistency_item(default_mesh, default, index))
            for method in transfer:
                if deadline is not None and time.monotonic() > deadline:
                    return True
                self.cache.add(_transfer_key(default, method, index), self.transfer_item(method, index))
            log(f"render {index + 1}/{len(scope)} done ({done} reconstructions this call)")
        return False

    def consistency_item(self, mesh, method: str, index: int) -> dict[str, Any]:
        """Chamfer (mm) from render `index`'s reconstruction to its second view's, and to another head's second view's."""
        other = (index + SLOTS_PER_IDENTITY) % len(self.renders)
        second = self.mesh(self.latent(method, index, view=1))
        another = self.mesh(self.latent(method, other, view=1))
        distances = reconstruction_distances(
            mesh, second, another, self.points, self.seed + index, self.truth_heads.device
        )
        return {"other": other, **distances}

    def transfer_item(self, method: str, index: int) -> dict[str, Any]:
        """Identity of neutral render `index` with the expression of the next identity's first posed render."""
        expression_index = (index + SLOTS_PER_IDENTITY + 1) % len(self.renders)
        donor = int(self.renders.identities[expression_index])
        donor_slot = int(self.renders.slots[expression_index])
        source = "decoder_fit" if method == "decoder_fit" else self.predictors.default_method
        z_geo, _, z_app = unpack(self.latent(source, index))
        if method == "diffusion_without_transfer":
            latent = self.latent(source, index)
        else:
            latent = pack(z_geo, unpack(self.latent(source, expression_index))[1], z_app)
        truth = self.truth(index, expression_identity=donor, expression_slot=donor_slot)
        return {"expression_of": expression_index, **self.compare(self.mesh(latent), truth, index)}


@dataclass(frozen=True)
class _Mesh:
    """Vertices and faces, where `compare_head` expects a mesh (the ground truth compared with itself)."""

    vertices: Tensor
    faces: Tensor


def reconstruction_distances(
    mesh, second, another, points: int, seed: int, device: torch.device | str = "cpu"
) -> dict[str, Any]:
    """Chamfer-L1 (mm) of `mesh` to `second` (the same head, another render) and to `another` (another head).

    Each mesh is sampled above the box floor like the ground truth, on `device` (where the
    nearest-neighbour search runs); an empty mesh gives the reason instead of numbers.
    """
    try:
        samples = [
            sample_above_floor(
                torch.as_tensor(np.asarray(m.vertices), dtype=torch.float32, device=device),
                torch.as_tensor(np.asarray(m.faces), device=device),
                points,
                seed + 1000 * k,
            )
            for k, m in enumerate((mesh, second, another))
        ]
    except ValueError as error:
        return {"error": str(error)}
    base = samples[0]
    same = surface_metrics(base.points, base.normals, samples[1].points, samples[1].normals)["chamfer_l1_mm"]
    other = surface_metrics(base.points, base.normals, samples[2].points, samples[2].normals)["chamfer_l1_mm"]
    return {"same_head_mm": same, "other_head_mm": other}


def consistency_summary(items: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean Chamfer between a head's two reconstructions, mean to another head's, and their ratio (< 1: consistent)."""
    valid = [item for item in items if "error" not in item]
    if not valid:
        return {"pairs": 0, "failures": len(items)}
    same = statistics.fmean(item["same_head_mm"] for item in valid)
    other = statistics.fmean(item["other_head_mm"] for item in valid)
    return {
        "pairs": len(valid),
        "failures": len(items) - len(valid),
        "same_head_chamfer_mm": same,
        "other_head_chamfer_mm": other,
        "ratio": same / other if other > 0 else math.inf,
    }


# ---------------------------------------------------------------------------------------------
# Report


def _summarise(records: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Mean and median per metric and region over records without errors, and the error count."""
    valid = [r for r in records if "error" not in r]
    summary: dict[str, Any] = {"count": len(valid), "failures": len(records) - len(valid)}
    for region in ("head", "face"):
        summary[region] = (
            {
                key: {
                    "mean": statistics.fmean(r[region][key] for r in valid),
                    "median": statistics.median(r[region][key] for r in valid),
                }
                for key in REPORTED
            }
            if valid
            else {}
        )
    return summary


def paired_differences(ours: Sequence[dict[str, Any]], theirs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Per-render differences, ours − theirs, of head Chamfer and F@2.5 mm: mean ± standard error, and wins.

    Renders are paired by position; a pair where either side failed is left out. The means of
    a table can differ by less than the renders' spread: this says whether a gap is more than
    noise (a difference within about two standard errors of 0 is a tie).
    """
    pairs = [(a["head"], b["head"]) for a, b in zip(ours, theirs) if "error" not in a and "error" not in b]
    result: dict[str, Any] = {"renders": len(pairs)}
    if len(pairs) < 2:
        return result
    for key in ("chamfer_l1_mm", "f_score_2.5mm"):
        differences = [a[key] - b[key] for a, b in pairs]
        result[key] = {
            "mean_difference": statistics.fmean(differences),
            "standard_error": statistics.stdev(differences) / math.sqrt(len(differences)),
        }
    result["ours_closer"] = sum(a["chamfer_l1_mm"] < b["chamfer_l1_mm"] for a, b in pairs)
    return result


def build_report(
    cache: _ResultCache,
    renders: EvalRenders,
    scope: range,
    methods: Sequence[str],
    default: str,
    settings: dict[str, Any],
    notes: list[str],
) -> dict[str, Any]:
    """The report over the cached results in `scope`: a table over the renders every method has finished."""
    finished = [i for i in scope if all(_key("recon", m, i) in cache for m in methods)]
    table = {m: _summarise([cache.results[_key("recon", m, i)] for i in finished]) for m in methods}
    pending = {m: sum(_key("recon", m, i) not in cache for i in scope) for m in methods}
    paired = {}
    if default in methods:
        ours = [cache.results[_key("recon", default, i)] for i in finished]
        paired = {
            m: paired_differences(ours, [cache.results[_key("recon", m, i)] for i in finished])
            for m in methods
            if m not in (default, "sampling_floor")
        }
    curve = [
        {"steps": s, "guidance": g, **_headline(table[_diffusion_name(s, g)])}
        for s in DIFFUSION_STEPS
        for g in GUIDANCE_SCALES
        if _diffusion_name(s, g) in table
    ]
    consistency = consistency_summary(
        [cache.results[_key("consistency", default, i)] for i in scope if _key("consistency", default, i) in cache]
    )
    transfer = {
        m: _summarise(
            [cache.results[_transfer_key(default, m, i)] for i in scope if _transfer_key(default, m, i) in cache]
        )
        for m in TRANSFER_METHODS
    }
    return {
        "settings": {k: v for k, v in settings.items() if k != "methods"},
        "eval_set": {
            "identities": len(scope) // SLOTS_PER_IDENTITY,
            "renders": len(scope),
            "renders_in_set": len(renders),
            "slots_per_identity": SLOTS_PER_IDENTITY,
            "fingerprint": renders.fingerprint(),
        },
        "compared_renders": len(finished),
        "methods": table,
        "paired": {"method": default, "against": paired},
        "pending": {m: n for m, n in pending.items() if n},
        "steps_curve": curve,
        "consistency": {"method": default, **consistency},
        "transfer": {"method": default, **transfer},
        "goal": _goal(table, default),
        "notes": notes,
    }


def _headline(summary: dict[str, Any]) -> dict[str, float | None]:
    if not summary.get("head"):
        return {"chamfer_l1_mm": None, "f_score_2.5mm": None}
    return {
        "chamfer_l1_mm": summary["head"]["chamfer_l1_mm"]["mean"],
        "f_score_2.5mm": summary["head"]["f_score_2.5mm"]["mean"],
    }


def _goal(table: dict[str, Any], default: str) -> dict[str, Any]:
    """Whether the default diffusion setting beats every baseline on mean head Chamfer and F@2.5 mm."""
    if not table.get(default, {}).get("head"):
        return {"method": default, "met": None}
    ours = _headline(table[default])
    beats = {}
    for baseline in BASELINES:
        theirs = _headline(table.get(baseline, {}))
        if theirs["chamfer_l1_mm"] is not None:
            beats[baseline] = {
                "chamfer": ours["chamfer_l1_mm"] < theirs["chamfer_l1_mm"],
                "f_score_2.5mm": ours["f_score_2.5mm"] > theirs["f_score_2.5mm"],
            }
    return {"method": default, "beats": beats, "met": all(all(b.values()) for b in beats.values()) if beats else None}


def format_reconstruction_summary(report: dict[str, Any]) -> str:
    """A markdown summary of an `evaluate_reconstruction` report: the table, steps curve, consistency, transfer."""
    settings, evaluated = report["settings"], report["eval_set"]
    lines = [
        f"Evaluation set: {evaluated['identities']} held-out identities × {evaluated['slots_per_identity']} "
        f"expressions ({evaluated['renders']} renders); meshes at {settings['resolution']}³, "
        f"{settings['points']:,} points per side; mean (median) over the {report['compared_renders']} renders "
        f"every method has finished.",
        "",
        "| method | region | Chamfer-L1 mm | normal cons. | F@1 mm | F@2.5 mm | F@5 mm | failed |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for method, summary in report["methods"].items():
        for region in ("head", "face"):
            if not summary[region]:
                continue
            cells = [f"{summary[region][k]['mean']:.3f}" for k in REPORTED]
            cells[0] = (
                f"{summary[region]['chamfer_l1_mm']['mean']:.3f} ({summary[region]['chamfer_l1_mm']['median']:.3f})"
            )
            lines.append(f"| {method} | {region} | " + " | ".join(cells) + f" | {summary['failures']} |")
    paired = report["paired"]
    rows = [(m, d) for m, d in paired["against"].items() if "chamfer_l1_mm" in d]
    if rows:
        lines += [
            "",
            f"Paired per render, {paired['method']} − method (mean ± standard error; negative Chamfer and "
            "positive F@2.5 favour the former):",
            "",
            "| method | renders | Δ Chamfer-L1 mm (head) | closer on | Δ F@2.5 mm (head) |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {m} | {d['renders']} | {d['chamfer_l1_mm']['mean_difference']:+.3f} ± "
            f"{d['chamfer_l1_mm']['standard_error']:.3f} | {d['ours_closer']} of {d['renders']} | "
            f"{d['f_score_2.5mm']['mean_difference']:+.3f} ± {d['f_score_2.5mm']['standard_error']:.3f} |"
            for m, d in rows
        ]
    if report["steps_curve"]:
        lines += ["", "| DDIM steps | guidance | Chamfer-L1 mm (head) | F@2.5 mm (head) |", "|---|---|---|---|"]
        lines += [
            f"| {row['steps']} | {row['guidance']:g} | {_number(row['chamfer_l1_mm'])} | "
            f"{_number(row['f_score_2.5mm'])} |"
            for row in report["steps_curve"]
        ]
    consistency = report["consistency"]
    if consistency.get("pairs"):
        lines += [
            "",
            f"Consistency ({consistency['method']}, {consistency['pairs']} heads): Chamfer between the "
            f"reconstructions of two renders of the same head {consistency['same_head_chamfer_mm']:.3f} mm, to "
            f"another head's {consistency['other_head_chamfer_mm']:.3f} mm; ratio {consistency['ratio']:.3f}.",
        ]
    transfer = report["transfer"]
    rows = [(m, transfer[m]) for m in TRANSFER_METHODS if transfer[m]["count"]]
    if rows:
        lines += ["", "| expression transfer | region | Chamfer-L1 mm | F@2.5 mm | failed |", "|---|---|---|---|---|"]
        lines += [
            f"| {m} | {region} | {s[region]['chamfer_l1_mm']['mean']:.3f} | {s[region]['f_score_2.5mm']['mean']:.3f} "
            f"| {s['failures']} |"
            for m, s in rows
            for region in ("head", "face")
        ]
    goal = report["goal"]
    if goal.get("met") is not None:
        lost = [
            f"{b} ({', '.join(k for k, won in r.items() if not won)})"
            for b, r in goal["beats"].items()
            if not all(r.values())
        ]
        lines += [
            "",
            f"Goal ({goal['method']} beats every baseline on head Chamfer and F@2.5 mm): "
            + ("met." if goal["met"] else "not met: " + "; ".join(lost) + "."),
        ]
    if report["pending"]:
        lines += [
            "",
            "Pending (rerun the same command to continue): "
            + ", ".join(f"{m} {n}" for m, n in report["pending"].items()),
        ]
    lines += [f"Note: {note}" for note in report["notes"]]
    return "\n".join(lines)


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


# ---------------------------------------------------------------------------------------------
# Figures


def write_figures(directory: Path, report: dict[str, Any], work: _Work, count: int, resolution: int) -> dict[str, Any]:
    """Side-by-side PNGs (frame | crop | reconstruction front, 45° | ground truth front, 45°) of the first
    `count` evaluation renders at the default diffusion setting, the astronaut portrait through the
    app's pipeline, and the steps-vs-Chamfer chart; returns the paths written and notes."""
    from PIL import Image

    directory.mkdir(parents=True, exist_ok=True)
    written, notes = [], []
    predictors = work.predictors
    default = predictors.default_method
    for index in range(count):
        chunk = work.renders.chunk_of(index)
        rows = work.renders.chunk_rows(chunk)
        scenes = render_scenes(
            predictors.renderer,
            work.split,
            work.renders.identities[rows],
            work.renders.slots[rows],
            work.renders.seed(chunk, 0),
            predictors.device,
        )
        at = index - chunk * CHUNK
        frame = predictors.renderer.render_frames(scenes)[at]
        crop = predictors.renderer.render_crops(scenes)[at]
        mesh = work.mesh(work.latent(default, index), colours=True)
        truth = work.truth(index)
        panels = [
            _image_panel(frame),
            _image_panel(crop),
            *_mesh_panels(mesh.vertices, mesh.faces, mesh.visual.vertex_colors),
            *_mesh_panels(truth["vertices"], truth["faces"], truth["colours"]),
        ]
        identity, slot = int(work.renders.identities[index]), int(work.renders.slots[index])
        path = directory / f"reconstruction_identity{identity:04d}_slot{slot}.png"
        Image.fromarray(np.concatenate(panels, axis=1)).save(path)
        written.append(str(path))
    try:
        written.append(str(_astronaut_figure(directory, predictors.pipeline, resolution)))
    except ImportError as error:
        notes.append(f"astronaut figure skipped: {error} (it needs scikit-image and MediaPipe, i.e. the CPU machine)")
    written.append(str(steps_chart(report, directory / "steps_vs_chamfer.png")))
    return {"written": written, "notes": notes}


PANEL = 256


def _image_panel(image: Tensor) -> np.ndarray:
    from PIL import Image

    pixels = (image.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    return np.asarray(Image.fromarray(pixels).resize((PANEL, PANEL), Image.Resampling.BICUBIC))


def _mesh_panels(vertices, faces, colours) -> list[np.ndarray]:
    from diffnphr.render import render_mesh

    vertices = torch.as_tensor(
        np.asarray(vertices) if not isinstance(vertices, Tensor) else vertices, dtype=torch.float32
    )
    faces = faces if isinstance(faces, Tensor) else np.asarray(faces)
    return [render_mesh(vertices, faces, colours, yaw_deg=yaw, size=PANEL) for yaw in (0.0, 45.0)]


def _astronaut_figure(directory: Path, pipeline, resolution: int) -> Path:
    """photo | crop | reconstruction front, 45° for scikit-image's astronaut (NASA, public domain)."""
    import mediapipe  # noqa: F401  (the crop needs it; fail early and clearly without it)
    from PIL import Image
    from skimage import data

    photo = Image.fromarray(data.astronaut())
    result = pipeline(photo, seed=DIFFUSION_SEED, resolution=resolution)
    panels = [
        np.asarray(photo.resize((PANEL, PANEL))),
        np.asarray(result.crop.image.resize((PANEL, PANEL))),
        *_mesh_panels(result.mesh.vertices, result.mesh.faces, result.mesh.visual.vertex_colors),
    ]
    path = directory / "reconstruction_astronaut.png"
    Image.fromarray(np.concatenate(panels, axis=1)).save(path)
    return path


def steps_chart(report: dict[str, Any], path: Path) -> Path:
    """A line chart (PNG, PIL only) of mean head Chamfer against DDIM steps per guidance scale, baselines dashed,
    the default setting (samples averaged) as a square at its steps."""
    from PIL import Image, ImageDraw

    width, height, margin = 720, 420, 60
    curve = [row for row in report["steps_curve"] if row["chamfer_l1_mm"] is not None]
    baselines = {
        m: _headline(report["methods"][m])["chamfer_l1_mm"]
        for m in (*BASELINES, "decoder_fit")
        if m in report["methods"] and report["methods"][m].get("head")
    }
    default = report["goal"]["method"]
    default_steps, _, default_samples = _parse_diffusion_name(default)
    default_value = (
        _headline(report["methods"][default])["chamfer_l1_mm"]
        if default in report["methods"] and default_steps in DIFFUSION_STEPS
        else None
    )
    values = [row["chamfer_l1_mm"] for row in curve] + list(baselines.values())
    values += [default_value] if default_value is not None else []
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if not values:
        draw.text((margin, height // 2), "no finished results yet", fill="black")
        image.save(path)
        return path
    low, high = 0.0, max(values) * 1.1
    steps = list(DIFFUSION_STEPS)

    def x(step: int) -> float:
        return margin + (width - 2 * margin) * steps.index(step) / max(len(steps) - 1, 1)

    def y(value: float) -> float:
        return height - margin - (height - 2 * margin) * (value - low) / (high - low)

    draw.line([(margin, margin), (margin, height - margin), (width - margin, height - margin)], fill="black")
    for step in steps:
        draw.text((x(step) - 6, height - margin + 8), str(step), fill="black")
    for tick in np.linspace(low, high, 5):
        draw.text((8, y(tick) - 6), f"{tick:.1f}", fill="black")
    draw.text((width // 2 - 60, height - 24), "DDIM steps", fill="black")
    draw.text((8, 12), "mean head Chamfer-L1 (mm)", fill="black")
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#8c564b"]
    for n, guidance in enumerate(GUIDANCE_SCALES):
        points = [(x(r["steps"]), y(r["chamfer_l1_mm"])) for r in curve if r["guidance"] == guidance]
        if len(points) > 1:
            draw.line(points, fill=palette[n], width=3)
        for px, py in points:
            draw.ellipse([px - 4, py - 4, px + 4, py + 4], fill=palette[n])
        draw.text((width - margin - 130, margin + 16 * n), f"diffusion, guidance {guidance:g}", fill=palette[n])
    for n, (name, value) in enumerate(baselines.items()):
        for start in range(margin, width - margin, 16):
            draw.line([(start, y(value)), (min(start + 8, width - margin), y(value))], fill="#777777", width=2)
        draw.text((margin + 6 + 120 * n, y(value) - 14), name, fill="#555555")
    if default_value is not None:
        px, py = x(default_steps), y(default_value)
        draw.rectangle([px - 5, py - 5, px + 5, py + 5], fill=palette[2])
        draw.text((px + 10, py + 4), f"default ({default_samples} averaged)", fill=palette[2])
    image.save(path)
    return path


# ---------------------------------------------------------------------------------------------
# The landmark baseline's CPU phase


def build_landmark_predictions(
    latents_dir: str | os.PathLike,
    out_file: str | os.PathLike,
    *,
    train_count: int = 1000,
    image_size: int = 128,
    frame_size: int = 256,
    seed: int = 0,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    renderer=None,
    landmarks_fn: Callable[[Tensor], np.ndarray] | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Fit the landmark ridge baseline and store its predictions for the evaluation renders (CPU: needs MediaPipe).

    Renders full frames (`frame_size`², 256 by default: on a 2-core CPU a 512² frame takes ~3 s, a
    256² one ~0.5 s, and Face Mesh traces both) of `train_count` random training heads (training-like scenes) and of
    the evaluation set's first views (the same scenes `eval reconstruction` crops), traces Face
    Mesh on them (`landmarks_fn`, default `baselines.landmarks.face_mesh_landmarks`), fits ridge
    from the Procrustes-normalised landmarks to the normalised codebook latent, and writes the
    evaluation renders' predictions to `out_file` (`baselines.landmarks.save_landmark_predictions`).
    Returns what it did: counts, detection failures, the chosen alpha and the CV errors.
    """
    from diffnphr.baselines.landmarks import (
        face_mesh_landmarks,
        fit_ridge,
        landmark_features,
        mean_shape,
        save_landmark_predictions,
    )

    log = log or (lambda message: None)
    landmarks_fn = landmarks_fn or face_mesh_landmarks
    device = torch.device("cpu")
    split = load_head_split(latents_dir)
    fitted = load_head_latents(latents_dir, FITTED_HELDOUT_NAME)
    codebooks = load_head_latents(latents_dir, CODEBOOKS_NAME)
    renders = eval_renders(split, fitted.z_exp.shape[1])
    if renderer is None:
        renderer = default_renderer(load_ict(ict_path), device, image_size, backgrounds)
    flat = codebooks.flat()
    slots = codebooks.z_exp.shape[1]
    if not 10 <= train_count <= len(flat):
        raise ValueError(f"train_count must be between 10 and the {len(flat)} training heads; got {train_count}")
    heads = torch.as_tensor(np.sort(np.random.default_rng(seed).choice(len(flat), train_count, replace=False)))

    def trace(identities: Tensor, head_slots: Tensor, seed_of_chunk: Callable[[int], int], what: str) -> np.ndarray:
        found = []
        for start in range(0, len(identities), CHUNK):
            part = slice(start, start + CHUNK)
            scenes = render_scenes(
                renderer, split, identities[part], head_slots[part], seed_of_chunk(start // CHUNK), device
            )
            found.append(landmarks_fn(renderer.render_frames(scenes, frame_size)))
            log(f"{what}: {min(start + CHUNK, len(identities))}/{len(identities)} frames traced")
        return np.concatenate(found)

    train_points = trace(
        codebooks.identities[heads // slots], heads % slots, lambda c: LANDMARK_TRAIN_SEED + c, "training heads"
    )
    eval_points = trace(renders.identities, renders.slots, lambda c: renders.seed(c, 0), "evaluation renders")
    train_ok = ~np.isnan(train_points).any(axis=(1, 2))
    eval_ok = ~np.isnan(eval_points).any(axis=(1, 2))
    if train_ok.sum() < 20:
        raise ValueError(
            f"Face Mesh traced only {int(train_ok.sum())} of {train_count} training renders; "
            "too few to fit the landmark baseline"
        )
    reference = mean_shape(train_points[train_ok])
    mean, std = flat.mean(dim=0), flat.std(dim=0).clamp_min(1e-4)
    targets = ((flat[heads[torch.as_tensor(train_ok)]] - mean) / std).numpy()
    ridge = fit_ridge(landmark_features(train_points[train_ok], reference), targets, seed=seed)
    predicted = torch.zeros(len(renders), flat.shape[1])
    if eval_ok.any():
        predicted[torch.as_tensor(eval_ok)] = torch.as_tensor(
            ridge.predict(landmark_features(eval_points[eval_ok], reference)), dtype=torch.float32
        )
    latents = mean + std * predicted  # renders without landmarks get the mean latent
    details = {
        "train_heads": train_count,
        "train_failures": int((~train_ok).sum()),
        "eval_renders": len(renders),
        "eval_failures": int((~eval_ok).sum()),
        "alpha": ridge.alpha,
        "cv_mse_normalised": {f"{a:g}": e for a, e in ridge.cv_errors.items()},
    }
    path = save_landmark_predictions(out_file, latents, torch.as_tensor(eval_ok), renders.fingerprint(), details)
    return {"file": str(path), "bytes": path.stat().st_size, **details}
