"""A sampler of realistic ICT (ARKit-style) blendshape weights.

Upstream has no expression sampler, and all 53 shapes at U(0, 1) at once is far from any real
face. Real expressions are sparse combinations of a few actions, so an expression is drawn as:

1. neutral (all zeros) with probability `NEUTRAL_PROBABILITY`;
2. otherwise 1 to 5 distinct actions (probabilities `ACTION_COUNT_PROBABILITIES`), picked
   without replacement with the weights of `ACTIONS`: jaw and mouth actions carry about
   70 % of the weight, brows, eyes, cheeks and nose the rest;
3. each action gets an intensity U(0.2, 1). A left/right pair moves together with
   probability `SYMMETRIC_PROBABILITY` (the weaker side at 70-100 % of the stronger), else one
   side only; one-sided actions (jawLeft/jawRight, mouthLeft/mouthRight) pick a side; a gaze
   action moves both eyes the same way;
4. mouthClose, which only makes sense on an open jaw, joins jawOpen with probability 0.3 at
   a weight no larger than jawOpen's; conflicting actions (`CONFLICTS`, e.g. eyeBlink and
   eyeWide) never appear together.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

NEUTRAL_PROBABILITY = 0.05
ACTION_COUNT_PROBABILITIES = (0.35, 0.30, 0.20, 0.10, 0.05)  # 1, 2, 3, 4, 5 actions
SYMMETRIC_PROBABILITY = 0.7
MOUTH_CLOSE_PROBABILITY = 0.3

# name: (kind, weight). kind "pair" uses <name>_L and <name>_R, "single" the name itself,
# "side" picks one of the listed shapes, "gaze" one of the listed eye directions.
ACTIONS: dict[str, tuple[str, float]] = {
    "jawOpen": ("single", 3.0),
    "mouthSmile": ("pair", 3.0),
    "mouthFrown": ("pair", 1.5),
    "mouthPucker": ("single", 1.5),
    "mouthFunnel": ("single", 1.5),
    "mouthStretch": ("pair", 1.5),
    "mouthLowerDown": ("pair", 1.5),
    "mouthUpperUp": ("pair", 1.5),
    "mouthPress": ("pair", 1.0),
    "mouthDimple": ("pair", 1.0),
    "mouthShrugLower": ("single", 1.0),
    "mouthShrugUpper": ("single", 0.7),
    "mouthRollLower": ("single", 0.7),
    "mouthRollUpper": ("single", 0.7),
    "mouthSideways": ("side", 1.0),
    "jawSideways": ("side", 0.7),
    "jawForward": ("single", 0.7),
    "cheekPuff": ("pair", 0.7),
    "cheekSquint": ("pair", 1.0),
    "noseSneer": ("pair", 0.8),
    "browDown": ("pair", 1.0),
    "browInnerUp": ("pair", 1.0),
    "browOuterUp": ("pair", 1.0),
    "eyeBlink": ("pair", 1.0),
    "eyeSquint": ("pair", 1.0),
    "eyeWide": ("pair", 0.8),
    "gaze": ("gaze", 1.0),
}
SIDES = {"mouthSideways": ("mouthLeft", "mouthRight"), "jawSideways": ("jawLeft", "jawRight")}
GAZE_DIRECTIONS = (
    ("eyeLookUp_L", "eyeLookUp_R"),
    ("eyeLookDown_L", "eyeLookDown_R"),
    ("eyeLookOut_L", "eyeLookIn_R"),  # the subject looks to their left
    ("eyeLookOut_R", "eyeLookIn_L"),  # to their right
)
CONFLICTS = (("eyeBlink", "eyeWide"), ("mouthSmile", "mouthFrown"), ("mouthPucker", "mouthStretch"))


def action_shapes(action: str) -> tuple[str, ...]:
    """Every blendshape name an action can set (used to check a model has them)."""
    kind, _ = ACTIONS[action]
    if kind == "pair":
        return (f"{action}_L", f"{action}_R")
    if kind == "side":
        return SIDES[action]
    if kind == "gaze":
        return tuple(name for direction in GAZE_DIRECTIONS for name in direction)
    return (action,) + (("mouthClose",) if action == "jawOpen" else ())


def sample_expressions(rng: np.random.Generator, count: int, names: Sequence[str]) -> np.ndarray:
    """(count, len(names)) blendshape weights in [0, 1], drawn as the module docstring says.

    `names` is the model's blendshape order (`ICTFaceModel.expression_names`).
    """
    column = {name: index for index, name in enumerate(names)}
    missing = sorted({shape for action in ACTIONS for shape in action_shapes(action)} - set(column))
    if missing:
        raise ValueError(f"the expression sampler needs blendshapes the model lacks: {', '.join(missing)}")
    if count < 0:
        raise ValueError(f"count must be non-negative, got {count}")
    actions = list(ACTIONS)
    action_weights = np.array([ACTIONS[a][1] for a in actions])
    weights = np.zeros((count, len(names)), dtype=np.float32)
    for row in range(count):
        if rng.random() < NEUTRAL_PROBABILITY:
            continue
        wanted = 1 + rng.choice(len(ACTION_COUNT_PROBABILITIES), p=ACTION_COUNT_PROBABILITIES)
        available = np.ones(len(actions), dtype=bool)
        for _ in range(wanted):
            p = action_weights * available
            action = actions[rng.choice(len(actions), p=p / p.sum())]
            for excluded in [action] + [a for pair in CONFLICTS if action in pair for a in pair]:
                available[actions.index(excluded)] = False
            for shape, value in _action_weights(rng, action):
                weights[row, column[shape]] = value
    return np.clip(weights, 0.0, 1.0)


def _action_weights(rng: np.random.Generator, action: str) -> list[tuple[str, float]]:
    kind, _ = ACTIONS[action]
    strength = rng.uniform(0.2, 1.0)
    if kind == "pair":
        left, right = action_shapes(action)
        if rng.random() < SYMMETRIC_PROBABILITY:
            weaker = strength * rng.uniform(0.7, 1.0)
            return [(left, strength), (right, weaker)] if rng.random() < 0.5 else [(left, weaker), (right, strength)]
        return [(left if rng.random() < 0.5 else right, strength)]
    if kind == "side":
        return [(SIDES[action][rng.integers(2)], strength)]
    if kind == "gaze":
        return [(name, strength) for name in GAZE_DIRECTIONS[rng.integers(len(GAZE_DIRECTIONS))]]
    shapes = [(action, strength)]
    if action == "jawOpen" and rng.random() < MOUTH_CLOSE_PROBABILITY:
        shapes.append(("mouthClose", strength * rng.uniform(0.0, 1.0)))
    return shapes
