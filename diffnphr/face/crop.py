"""Finding the face in a photo and cutting the model's crop: MediaPipe detection in four orientations, Face Mesh.

MediaPipe objects are created once per process, on first use, and MediaPipe graphs must not be
run from two threads at once; Gradio runs handlers in threads, so every MediaPipe call goes
through one lock. One crop holds it for a few tens of milliseconds, which suits an app with a
concurrency limit of 1-2.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from diffnphr.face.images import ImageSource, NoFaceError, load_image
from diffnphr.face.squares import HeadSquare, head_square, mesh_key_points, sample_square

DETECTION_MAX_SIDE = 1024
"""Face detection runs on a copy whose longest side is at most this; the crop uses full resolution."""
MIN_FACE_SIZE_PX = 224
"""Warn below this head-square side (original pixels): a smaller head is upsampled into the crop, so it
holds less detail than FaRL's 224-px input can use."""


_MEDIAPIPE_LOCK = threading.Lock()
_MEDIAPIPE_MODELS: dict[str, Any] = {}
# A turned orientation wins only with a confident short-range hit that beats the photo as it is
# (values from the reference study: 0 false faces, all rotated test faces found).
_TURN_MIN_SCORE = 0.75
_TURN_MARGIN = 0.05
# Tiles see more false faces than the whole photo; a tile's hit counts from this score (measured on
# scikit-image's photos: false hits on the coffee, cat and Hubble pictures 0.51-0.70, the faces of
# a 3 × 3 portrait sheet 0.79-0.93, the cameraman 0.85).
_TILE_MIN_SCORE = 0.75
_TURNS = {1: "turned a quarter turn anticlockwise", 2: "turned upside down", 3: "turned a quarter turn clockwise"}


def _mediapipe_model(name: str) -> Any:
    """The named MediaPipe solution, created on first use; call with `_MEDIAPIPE_LOCK` held."""
    if name not in _MEDIAPIPE_MODELS:
        import mediapipe as mp

        if name == "mesh":
            _MEDIAPIPE_MODELS[name] = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True,
                max_num_faces=1,
                refine_landmarks=True,
                min_detection_confidence=0.5,
            )
        else:
            _MEDIAPIPE_MODELS[name] = mp.solutions.face_detection.FaceDetection(
                model_selection=1 if name == "full_range" else 0, min_detection_confidence=0.5
            )
    return _MEDIAPIPE_MODELS[name]


@dataclass
class _Detection:
    score: float
    box: np.ndarray  # x0, y0, x1, y1
    keypoints: np.ndarray  # [6, 2]: eye (image left), eye (image right), nose, mouth, ear, ear


def _run_detector(name: str, pixels: np.ndarray) -> list[_Detection]:
    height, width = pixels.shape[:2]
    result = _mediapipe_model(name).process(pixels)
    found = []
    for detection in result.detections or []:
        box = detection.location_data.relative_bounding_box
        corners = np.array([box.xmin, box.ymin, box.xmin + box.width, box.ymin + box.height])
        keypoints = [(k.x, k.y) for k in detection.location_data.relative_keypoints]
        found.append(
            _Detection(
                score=float(detection.score[0]),
                box=corners * [width, height, width, height],
                keypoints=np.array(keypoints) * [width, height],
            )
        )
    return found


def _detect_faces(pixels: np.ndarray) -> tuple[int, list[_Detection]]:
    """Faces in `np.rot90(pixels, k)` coordinates, and the quarter-turn count k that makes them upright.

    The short-range model tolerates rotation but returns wrong key points for faces upside
    down, so it scores all four orientations first; a turned one is chosen only when clearly
    better than the photo as it is (its weak hits on turned photos are false faces). Then the
    full-range model (small faces) or, if it finds nothing, the short-range one (profiles,
    faces looking up) runs on the chosen orientation only.
    """
    with _MEDIAPIPE_LOCK:
        turned = [np.ascontiguousarray(np.rot90(pixels, k)) for k in range(4)]
        scores = [max((d.score for d in _run_detector("short_range", p)), default=0.0) for p in turned]
        best = int(np.argmax(scores))
        clearly_better = scores[best] >= _TURN_MIN_SCORE and scores[best] > scores[0] + _TURN_MARGIN
        k = best if clearly_better else 0
        found = _run_detector("full_range", turned[k]) or _run_detector("short_range", turned[k])
        return k, found or _tiled_detections(turned[k])


def _tiled_detections(pixels: np.ndarray) -> list[_Detection]:
    """Faces found in overlapping tiles (2 × 2, then 3 × 3, each 1.5 tile widths), for photos of several
    small faces (group photos, contact sheets) that neither model finds in the whole image; the same
    face seen by two tiles counts once. Call with `_MEDIAPIPE_LOCK` held."""
    height, width = pixels.shape[:2]
    for n in (2, 3):
        tile_h, tile_w = min(height, round(1.5 * height / n)), min(width, round(1.5 * width / n))
        found = []
        for y in np.linspace(0, height - tile_h, n).round().astype(int):
            for x in np.linspace(0, width - tile_w, n).round().astype(int):
                tile = np.ascontiguousarray(pixels[y : y + tile_h, x : x + tile_w])
                for face in _run_detector("full_range", tile) or _run_detector("short_range", tile):
                    if face.score < _TILE_MIN_SCORE:
                        continue
                    found.append(_Detection(face.score, face.box + [x, y, x, y], face.keypoints + [x, y]))
        if found:
            return _distinct(found)
    return []


def _distinct(faces: list[_Detection], overlap: float = 0.3) -> list[_Detection]:
    """The faces with the best score among those whose boxes overlap by more than `overlap` (IoU)."""
    kept: list[_Detection] = []
    for face in sorted(faces, key=lambda f: -f.score):
        if all(_iou(face.box, other.box) <= overlap for other in kept):
            kept.append(face)
    return kept


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boxes (x0, y0, x1, y1)."""
    inner = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    union = (a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inner
    return float(inner / union) if union > 0 else 0.0


def _face_mesh(crop: Image.Image) -> np.ndarray | None:
    """478 Face Mesh points in crop pixels, or None when Face Mesh finds no face."""
    with _MEDIAPIPE_LOCK:
        result = _mediapipe_model("mesh").process(np.asarray(crop))
    if not result.multi_face_landmarks:
        return None
    points = result.multi_face_landmarks[0].landmark
    return np.array([(p.x, p.y) for p in points], np.float64) * np.array(crop.size)


def _unrotate(points: np.ndarray, k: int, width: int, height: int) -> np.ndarray:
    """Points in `np.rot90(image, k)` coordinates -> coordinates in the (width x height) image."""
    points = np.asarray(points, np.float64).copy()
    for step in range(k, 0, -1):
        width_before = width if (step - 1) % 2 == 0 else height
        # One counter-clockwise quarter turn maps (x, y) to (y, width_before - x).
        points = np.stack([width_before - points[:, 1], points[:, 0]], axis=1)
    return points


# ---------------------------------------------------------------------------------------------
# The public step


@dataclass(eq=False)
class FaceCrop:
    """An upright head crop and what is known about it.

    `landmarks` are Face Mesh's 478 points in crop pixels (None for a centre crop, or if Face
    Mesh failed: see `warnings`); `face_box` (x0, y0, x1, y1), `face_size_px` (side of the head
    square) and `square` are in the loaded, EXIF-upright image's pixels; `rotation` is the
    counter-clockwise quarter turn (0, 90, 180, 270) under which the face was found upright.
    """

    image: Image.Image
    landmarks: np.ndarray | None
    face_box: tuple[float, float, float, float] | None
    rotation: int
    face_size_px: float | None
    square: HeadSquare
    centred_fallback: bool = False
    warnings: list[str] = field(default_factory=list)


def crop_face(image: ImageSource, *, allow_no_face: bool = False, output_size: int = 512) -> FaceCrop:
    """Find the largest face in a photo and crop the whole head, upright, to `output_size` square.

    The photo is read with `load_image`. Without a face this raises `NoFaceError`, unless
    `allow_no_face`, which returns the largest centred square instead, flagged and with a
    warning. Small faces and several faces are warnings, not failures.
    """
    photo = load_image(image)
    scale = min(1.0, DETECTION_MAX_SIDE / max(photo.size))
    small = photo
    if scale < 1.0:
        size = (max(1, round(photo.width * scale)), max(1, round(photo.height * scale)))
        small = photo.resize(size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    pixels = np.asarray(small)
    k, faces = _detect_faces(pixels)
    if not faces:
        if not allow_no_face:
            raise NoFaceError(
                "No face was found in this photo; please use one with a clearly visible face "
                "seen from the front or the side."
            )
        return centre_crop(photo, output_size)

    factor = np.array(photo.size) / np.array(small.size)
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    keypoints = _unrotate(face.keypoints, k, small.width, small.height) * factor
    box_corners = np.array([face.box[[0, 1]], face.box[[2, 1]], face.box[[0, 3]], face.box[[2, 3]]])
    corners = _unrotate(box_corners, k, small.width, small.height) * factor
    face_box = (*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist())
    warnings = [f"{len(faces)} faces were found; the largest one was used."] if len(faces) > 1 else []
    if k:
        warnings.append(f"The photo was used {_TURNS[k]}: the face is upright that way.")

    # BlazeFace gives eye centres and the mouth centre: a first square for Face Mesh, whose
    # eye and mouth corners then define the final square (the rule renders can reproduce).
    eye_left, eye_right, mouth = keypoints[0], keypoints[1], keypoints[3]
    first = head_square(eye_left, eye_right, mouth, mouth)
    mesh = _face_mesh(sample_square(photo, first, output_size, Image.Resampling.BILINEAR))
    if mesh is None:
        square, landmarks = first, None
        warnings.append("The facial features could not be traced precisely, so the crop may be a little off.")
    else:
        points = first.to_image(mesh, output_size)
        square = head_square(*mesh_key_points(points))
        landmarks = square.to_crop(points, output_size).astype(np.float32)
    if square.side < MIN_FACE_SIZE_PX:
        warnings.append(
            f"The face is small in this photo (the head spans about {square.side:.0f} pixels), "
            "so the result may lack detail; a closer or sharper photo works better."
        )
    return FaceCrop(
        image=sample_square(photo, square, output_size),
        landmarks=landmarks,
        face_box=face_box,
        rotation=90 * k,
        face_size_px=square.side,
        square=square,
        warnings=warnings,
    )


def centre_crop(photo: Image.Image, output_size: int = 512) -> FaceCrop:
    """The largest centred square of `photo` as a crop, flagged as a fallback with its warning: what a photo without
    a face gets when the centre is allowed, and what the benchmarks use where MediaPipe is missing."""
    side = float(min(photo.size))
    square = HeadSquare(
        centre=np.array(photo.size, np.float64) / 2.0, x_axis=np.array([1.0, 0.0]), half_side=side / 2.0
    )
    return FaceCrop(
        image=sample_square(photo, square, output_size),
        landmarks=None,
        face_box=None,
        rotation=0,
        face_size_px=None,
        square=square,
        centred_fallback=True,
        warnings=["No face was found, so the centre of the image was used; the head may be cut off or off-centre."],
    )
