"""Does the training crop match the photo crop? (`python -m diffnphr eval crops`)

Training crops come from the crop rule applied to the head's projected ICT landmarks
(`HeadRenderer.head_squares`); at inference the same rule runs on MediaPipe Face Mesh points
(`diffnphr.face.crop_face`). This renders whole frames of random training-like scenes on the
CPU, runs `crop_face` on each and compares its square with the projected-landmark square of
the same scene (calibrated, without jitter), in that square's own frame: centre offset along
its x and y axes as a fraction of its side, side ratio (reported as log), angle difference.
The means are what `RenderConfig.crop_calibration` should hold, the standard deviations what
`RenderConfig.crop_jitter_std` should hold.
"""

from __future__ import annotations

import itertools
import math
import os
import time
from dataclasses import replace

import numpy as np
import torch

from diffnphr.data.appearance import appearance_params
from diffnphr.data.backgrounds import BackgroundBank
from diffnphr.data.expressions import sample_expressions
from diffnphr.data.ict import load_ict
from diffnphr.data.renders import HeadRenderer
from diffnphr.data.scenes import RenderConfig

TURN_BUCKETS_DEG = (0.0, 15.0, 30.0, 90.0)
"""Head-turn ranges (angle of the nose direction from the camera axis) reported separately."""


def crop_agreement(
    count: int = 300,
    seed: int = 0,
    *,
    size: int = 512,
    batch: int = 6,
    config: RenderConfig | None = None,
    ict_path: str | os.PathLike | None = None,
    backgrounds: str | os.PathLike | None = None,
    progress=None,
) -> dict:
    """Compare the detector's crop square with the projected-landmark square on `count` renders.

    Returns a JSON-ready report: per measure (shift_x, shift_y in square sides, log_scale,
    angle_deg) mean and std over the renders Face Mesh traced, the same per head-turn bucket,
    the counts of renders with no face found and with no Face Mesh, the config used and timings.
    Frames are rendered without supersampling (`config.supersample` is set to 1: 4x faster on
    a CPU; the detector does not need anti-aliased edges). `backgrounds` is an optional
    `BackgroundBank` file; `progress`, if given, is called with (done, count).
    """
    from diffnphr.face import NoFaceError, crop_face

    if count < 1 or batch < 1:
        raise ValueError(f"count and batch must be positive, got {count} and {batch}")
    config = replace(config or RenderConfig(), supersample=1)
    model = load_ict(ict_path)
    bank = BackgroundBank.load(backgrounds) if backgrounds is not None else None
    renderer = HeadRenderer(model, "cpu", config, backgrounds=bank)
    rng = np.random.default_rng(seed)
    identity = torch.as_tensor(rng.standard_normal((count, model.identity_modes.shape[0])), dtype=torch.float32)
    expression = torch.as_tensor(sample_expressions(rng, count, model.expression_names))
    appearance = appearance_params(rng.integers(0, 2**31, count).tolist())
    rows, turns, no_face, no_mesh = [], [], 0, 0
    render_seconds = detect_seconds = 0.0
    for start in range(0, count, batch):
        index = torch.arange(start, min(start + batch, count))
        scenes = renderer.sample_scenes(identity[index], expression[index], appearance.select(index), seed=seed + start)
        begin = time.perf_counter()
        frames = renderer.render_frames(scenes, size)
        centre, x_axis, half_side = (
            value.double().numpy() * scale
            for value, scale in zip(renderer.head_squares(scenes, jitter=False), (size, 1.0, size))
        )
        render_seconds += time.perf_counter() - begin
        begin = time.perf_counter()
        for image, frame in enumerate((frames.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)):
            try:
                found = crop_face(frame)
            except NoFaceError:
                no_face += 1
                continue
            if found.landmarks is None:
                no_mesh += 1
                continue
            rows.append(_square_difference(centre[image], x_axis[image], half_side[image], found.square))
            nose = scenes.rotation[image] @ torch.tensor([0.0, 0.0, 1.0])
            turns.append(math.degrees(math.acos(float(nose[2].clamp(-1, 1)))))
        detect_seconds += time.perf_counter() - begin
        if progress is not None:
            progress(int(index[-1]) + 1, count)
    measured = np.array(rows).reshape(-1, 4)
    turns = np.array(turns)
    buckets = {}
    for low, high in itertools.pairwise(TURN_BUCKETS_DEG):
        chosen = (turns >= low) & (turns < high)
        buckets[f"turn {low:.0f}-{high:.0f} deg"] = _statistics(measured[chosen])
    return {
        "renders": count,
        "seed": seed,
        "frame_size": size,
        "traced": len(measured),
        "no_face_found": no_face,
        "no_face_mesh": no_mesh,
        "all": _statistics(measured),
        "by_turn": buckets,
        "crop_calibration": list(config.crop_calibration),
        "crop_jitter_std": list(config.crop_jitter_std),
        "seconds": {"render": round(render_seconds, 1), "detect": round(detect_seconds, 1)},
    }


def format_crop_agreement(report: dict) -> str:
    """A short table of `crop_agreement`'s report."""
    lines = [
        f"crop agreement on {report['renders']} renders ({report['frame_size']} px frames, seed {report['seed']}): "
        f"{report['traced']} traced, {report['no_face_found']} without a face found, "
        f"{report['no_face_mesh']} without Face Mesh",
        f"calibration {report['crop_calibration']}, jitter std {report['crop_jitter_std']}",
        f"{'':22s} {'n':>4s} " + " ".join(f"{name:>20s}" for name in _MEASURES),
    ]
    for label, stats in [("all", report["all"])] + list(report["by_turn"].items()):
        cells = " ".join(
            f"{stats[name]['mean']:+9.4f} ± {stats[name]['std']:8.4f}" if stats["n"] else f"{'-':>20s}"
            for name in _MEASURES
        )
        lines.append(f"{label:22s} {stats['n']:4d} {cells}")
    lines.append(f"seconds: render {report['seconds']['render']}, detect {report['seconds']['detect']}")
    return "\n".join(lines)


_MEASURES = ("shift_x", "shift_y", "log_scale", "angle_deg")


def _square_difference(centre: np.ndarray, x_axis: np.ndarray, half_side: float, detected) -> tuple[float, ...]:
    """The detector's square relative to the projected one, in the projected square's frame."""
    y_axis = np.array([-x_axis[1], x_axis[0]])
    offset = (detected.centre - centre) / (2.0 * half_side)
    cross = x_axis[0] * detected.x_axis[1] - x_axis[1] * detected.x_axis[0]
    angle = math.degrees(math.atan2(cross, float(x_axis @ detected.x_axis)))
    return float(offset @ x_axis), float(offset @ y_axis), math.log(detected.half_side / half_side), angle


def _statistics(measured: np.ndarray) -> dict:
    """Mean and standard deviation of each measure (rows of `_MEASURES`)."""
    stats = {"n": len(measured)}
    for column, name in enumerate(_MEASURES):
        values = measured[:, column]
        stats[name] = {
            "mean": round(float(values.mean()), 5) if len(values) else None,
            "std": round(float(values.std()), 5) if len(values) else None,
        }
    return stats
