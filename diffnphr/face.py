"""Face crop: any photo a person uploads -> an upright 512x512 head crop plus 478 landmarks.

This is the first step of reconstruction, and the one that sees raw user input, so it owns
reading images (EXIF orientation, odd colour modes, animated files, size limits, clear errors),
finding the face (MediaPipe 0.10.21 BlazeFace over the four right-angle orientations, then Face
Mesh) and the crop rule.

The crop rule is the FFHQ alignment, enlarged so the whole head (hair, chin, some neck) fits:
from the two eye centres and the two mouth corners, the square is rotated so the face is
upright, centred a little below the eyes and about 5.3 eye-to-mouth distances wide. It lives in
`head_square` / `crop_from_landmarks`, which need no detector, so training renders can apply
exactly the same rule to projected landmarks. Parts of the square outside the photo are filled
with edge pixels, blurred (never mirrored: mirroring makes ghost faces).

MediaPipe objects are created once per process, on first use, and MediaPipe graphs must not be
run from two threads at once; Gradio runs handlers in threads, so every MediaPipe call goes
through one lock. One crop holds it for a few tens of milliseconds, which suits an app with a
concurrency limit of 1-2.
"""

from __future__ import annotations

import io
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MAX_PIXELS = 50_000_000
"""Largest image accepted (50 megapixels: an 8000x6000 phone photo fits)."""
DETECTION_MAX_SIDE = 1024
"""Face detection runs on a copy whose longest side is at most this; the crop uses full resolution."""
MIN_FACE_SIZE_PX = 224
"""Warn below this head-square side (original pixels): the encoder's input is 224 px."""
HEAD_SCALE = 1.4
"""Head square size relative to the FFHQ alignment square (1.0 cuts the top of the hair)."""
HEAD_SHIFT = 0.2
"""Square centre below the eye midpoint, in eye-to-mouth distances (FFHQ: 0.1; 0.2 keeps the chin)."""
BACKGROUND_RGB = (128, 128, 128)
"""Neutral grey that transparent pixels are composited on."""
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

# Face Mesh indices of the key points the crop rule needs (image left/right of an upright face).
MESH_EYE_LEFT = (33, 133)  # outer and inner corner of the eye on the image's left
MESH_EYE_RIGHT = (362, 263)  # inner and outer corner of the eye on the image's right
MESH_MOUTH_LEFT = 61
MESH_MOUTH_RIGHT = 291

ImageSource = str | Path | bytes | Image.Image | np.ndarray


class ImageInputError(ValueError):
    """An input problem the user caused and can fix; the message is one plain sentence."""


class NoFaceError(ImageInputError):
    """No face was found; the app may offer to use the centre of the image instead."""


# ---------------------------------------------------------------------------------------------
# Reading images


def load_image(source: ImageSource) -> Image.Image:
    """Read a photo from a path, encoded bytes, a PIL image or an array, as an upright RGB image.

    Applies the EXIF orientation, takes the first frame of animated files, composites
    transparency on `BACKGROUND_RGB` and maps every PIL mode (16-bit, float, CMYK, palette,
    1-bit) to 8-bit RGB, so later steps see one kind of image. Anything a user can get wrong
    (missing or non-image file, truncated data, more than `MAX_PIXELS`) raises
    `ImageInputError` with a sentence saying so.
    """
    if isinstance(source, Image.Image):  # an animated one is moved back to its first frame
        return _to_rgb(_first_frame_upright(source, "The image"), "The image")
    if isinstance(source, np.ndarray):
        return _to_rgb(_array_to_image(source), "The image")
    if isinstance(source, (bytes, bytearray, memoryview)):
        return _open_and_convert(io.BytesIO(bytes(source)), "The uploaded data")
    if isinstance(source, (str, Path)):
        path = Path(source).expanduser()
        if not path.is_file():
            raise ImageInputError(f"There is no image file at '{path}'.")
        return _open_and_convert(path, f"'{path.name}'")
    raise ImageInputError(f"An image (file path, bytes, PIL image or array) was expected, not {type(source).__name__}.")


def _open_and_convert(fp: Path | io.BytesIO, subject: str) -> Image.Image:
    try:
        with Image.open(fp) as image:
            _check_size(image.size, subject)
            image.load()
            return _to_rgb(_first_frame_upright(image, subject), subject)
    except Image.DecompressionBombError as error:
        raise ImageInputError(_too_large_sentence(subject, None)) from error
    except Image.UnidentifiedImageError as error:
        raise ImageInputError(f"{subject} is not an image we can read ({READABLE_FORMATS}).") from error
    except PermissionError as error:
        raise ImageInputError(f"{subject} could not be opened; check that it is readable.") from error
    except (OSError, SyntaxError, EOFError) as error:
        raise ImageInputError(f"{subject} could not be read to the end; the file looks damaged or cut off.") from error


def _too_large_sentence(subject: str, size: tuple[int, int] | None) -> str:
    limit = f"the {MAX_PIXELS / 1e6:.0f} megapixels we accept"
    if size is None:
        return f"{subject} is larger than {limit}; please resize it first."
    return (
        f"{subject} is {size[0]}x{size[1]} pixels ({size[0] * size[1] / 1e6:.0f} megapixels), "
        f"more than {limit}; please resize it first."
    )


def _check_size(size: tuple[int, int], subject: str) -> None:
    if size[0] < 1 or size[1] < 1:
        raise ImageInputError(f"{subject} has no pixels.")
    if size[0] * size[1] > MAX_PIXELS:
        raise ImageInputError(_too_large_sentence(subject, size))


def _first_frame_upright(image: Image.Image, subject: str) -> Image.Image:
    _check_size(image.size, subject)
    if image.tell() != 0:  # an animated image: use its first frame
        image.seek(0)
    return ImageOps.exif_transpose(image)


def _array_to_image(array: np.ndarray) -> Image.Image:
    values = array[..., 0] if array.ndim == 3 and array.shape[2] == 1 else array
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[2] not in (3, 4)):
        raise ImageInputError(f"An image array must have shape (H, W), (H, W, 3) or (H, W, 4), not {array.shape}.")
    _check_size((values.shape[1], values.shape[0]), "The image")
    if values.dtype == np.bool_:
        values = values.astype(np.uint8) * 255
    elif values.dtype == np.uint16:
        values = _scale_to_uint8(values, full_scale=65535.0)
    elif values.dtype != np.uint8:
        if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)):
            raise ImageInputError(f"An image array of type {values.dtype} cannot be read as an image.")
        values = _scale_to_uint8(values)
    return Image.fromarray(np.ascontiguousarray(values))


def _scale_to_uint8(values: np.ndarray, full_scale: float | None = None) -> np.ndarray:
    """Map numbers to 0..255; without a stated full scale it is read from the value range.

    Values within 0..1 are taken as fractions, within 0..255 as 8-bit, within 0..65535 as
    16-bit; anything else (negative, larger) is stretched from its minimum to its maximum.
    """
    values = np.nan_to_num(values.astype(np.float64))
    low, high = float(values.min()), float(values.max())
    if full_scale is None:
        if low >= 0.0 and high <= 1.0:
            full_scale = 1.0
        elif low >= 0.0 and high <= 255.0:
            full_scale = 255.0
        elif low >= 0.0 and high <= 65535.0:
            full_scale = 65535.0
        else:
            values, full_scale = values - low, max(high - low, 1e-12)
    return np.clip(np.rint(values * (255.0 / full_scale)), 0, 255).astype(np.uint8)


def _to_rgb(image: Image.Image, subject: str) -> Image.Image:
    """8-bit RGB from any mode; `image` must be a private copy (an RGB one is returned as is)."""
    mode = image.mode
    colour_key = "transparency" in image.info and mode in ("P", "L", "RGB")
    if mode == "RGB" and not colour_key:
        return image
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or colour_key:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND_RGB, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode.startswith("I;16"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image), full_scale=65535.0)).convert("RGB")
    if mode in ("I", "F"):
        return Image.fromarray(_scale_to_uint8(np.asarray(image))).convert("RGB")
    if mode == "1":
        # 1-bit photos are dithered; a one-pixel blur turns the dots back into grey tones.
        return image.convert("L").filter(ImageFilter.GaussianBlur(1)).convert("RGB")
    try:
        return image.convert("RGB")
    except ValueError as error:
        raise ImageInputError(f"{subject} uses the colour mode {mode}, which we cannot read.") from error


# ---------------------------------------------------------------------------------------------
# The crop rule (no detector needed)


@dataclass(frozen=True, eq=False)
class HeadSquare:
    """An oriented square in image pixels: where a crop is taken from.

    `x_axis` is the unit direction of the crop's +x in the image; the crop's +y is `x_axis`
    turned by +90 degrees (so the square is rotated, never mirrored). Coordinates are
    continuous pixels: pixel (i, j) covers [i, i+1) x [j, j+1).
    """

    centre: np.ndarray
    x_axis: np.ndarray
    half_side: float

    @property
    def y_axis(self) -> np.ndarray:
        return np.array([-self.x_axis[1], self.x_axis[0]])

    @property
    def side(self) -> float:
        return 2.0 * self.half_side

    @property
    def top_left(self) -> np.ndarray:
        return self.centre - self.half_side * (self.x_axis + self.y_axis)

    def to_crop(self, points: np.ndarray, output_size: int) -> np.ndarray:
        """Image pixel coordinates [N, 2] -> coordinates in the `output_size` crop."""
        relative = np.asarray(points, np.float64) - self.top_left
        axes = np.stack([self.x_axis, self.y_axis], axis=1)
        return relative @ axes * (output_size / self.side)

    def to_image(self, points: np.ndarray, output_size: int) -> np.ndarray:
        """Coordinates in the `output_size` crop [N, 2] -> image pixel coordinates."""
        axes = np.stack([self.x_axis, self.y_axis], axis=0)
        return self.top_left + np.asarray(points, np.float64) * (self.side / output_size) @ axes


def head_square(
    eye_left: np.ndarray,
    eye_right: np.ndarray,
    mouth_left: np.ndarray,
    mouth_right: np.ndarray,
    *,
    scale: float = HEAD_SCALE,
    shift: float = HEAD_SHIFT,
) -> HeadSquare:
    """The upright square around the whole head, from four key points in image pixels.

    `eye_left` / `eye_right` are the centres of the eyes that appear on the left / right of the
    picture when the face is upright (the subject's right / left eye; for Face Mesh the mean of
    each eye's two corners), `mouth_left` / `mouth_right` the mouth corners likewise. The roll
    comes from both the eye line and the eye-to-mouth axis (robust for profiles); the size
    from the larger of the eye distance and the eye-to-mouth distance (robust for yaw/pitch).
    """
    points = [np.asarray(point, np.float64) for point in (eye_left, eye_right, mouth_left, mouth_right)]
    centre, x_axis, half_side = head_squares(*points, scale=scale, shift=shift)
    if not np.isfinite(x_axis).all() or np.hypot(*x_axis) < 0.5:
        raise ValueError("The eye and mouth points coincide, so they define no face orientation.")
    return HeadSquare(centre=centre, x_axis=x_axis, half_side=float(half_side))


def head_squares(eye_left, eye_right, mouth_left, mouth_right, *, scale: float = HEAD_SCALE, shift: float = HEAD_SHIFT):
    """`head_square` for batches: key points (..., 2) as NumPy arrays or torch tensors.

    Returns (centre (..., 2), x_axis (..., 2), half_side (...)) in the inputs' library, so
    batched training renders apply the very rule photos get. Rows whose points coincide get
    an x_axis of (near) zero length instead of an error.
    """
    if isinstance(eye_left, np.ndarray):
        xp = np
    else:
        import torch as xp  # only training renders pass tensors; the app's crop stays NumPy
    eye_mid = (eye_left + eye_right) / 2.0
    eye_to_eye, eye_to_mouth = eye_right - eye_left, (mouth_left + mouth_right) / 2.0 - eye_mid
    x_axis = xp.stack([eye_to_eye[..., 0] + eye_to_mouth[..., 1], eye_to_eye[..., 1] - eye_to_mouth[..., 0]], -1)
    length = xp.hypot(x_axis[..., 0], x_axis[..., 1])
    half_side = scale * xp.maximum(
        2.0 * xp.hypot(eye_to_eye[..., 0], eye_to_eye[..., 1]),
        1.8 * xp.hypot(eye_to_mouth[..., 0], eye_to_mouth[..., 1]),
    )
    return eye_mid + shift * eye_to_mouth, x_axis / (length + (length < 1e-6))[..., None], half_side


def sample_square(
    image: Image.Image,
    square: HeadSquare,
    output_size: int = 512,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> Image.Image:
    """Resample an oriented square of an RGB image to an `output_size` square image.

    Only the square's neighbourhood is touched (cheap on huge photos); it is first shrunk with
    Lanczos when the square is larger than the output (no aliasing), and parts outside the
    photo are edge pixels blurred by 1/16 of the side, which reads as out-of-focus background.
    `resample` is the filter of the final rotation (BILINEAR is 2-3x faster, a little softer).
    """
    corners = square.top_left + square.side * np.array([[0, 0], [1, 0], [0, 1], [1, 1]]) @ np.stack(
        [square.x_axis, square.y_axis]
    )
    width, height = image.size
    low = np.floor(corners.min(axis=0)).astype(int) - 2
    high = np.ceil(corners.max(axis=0)).astype(int) + 2
    inner_low = np.minimum(np.maximum(low, 0), [width - 1, height - 1])
    inner_high = np.maximum(np.minimum(high, [width, height]), inner_low + 1)
    region = image.crop((*inner_low, *inner_high))
    shrink = min(1.0, output_size / square.side)
    if shrink < 1.0:
        size = np.maximum(np.rint(np.array(region.size) * shrink), 1).astype(int)
        region = region.resize(tuple(size), Image.Resampling.LANCZOS, reducing_gap=3.0)
    factor = np.array(region.size) / (inner_high - inner_low)
    before = np.rint((inner_low - low) * factor).astype(int)
    after = np.rint((high - inner_high) * factor).astype(int)
    pixels = np.asarray(region)
    if before.any() or after.any():
        padded = np.pad(pixels, ((before[1], after[1]), (before[0], after[0]), (0, 0)), mode="edge")
        radius = max(2.0, square.side * shrink / 16.0)
        blurred = np.asarray(Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius)))
        inside = np.zeros(padded.shape[:2], bool)
        inside[before[1] : before[1] + pixels.shape[0], before[0] : before[0] + pixels.shape[1]] = True
        pixels = np.where(inside[..., None], padded, blurred)
    # Affine map from output pixels to region pixels (PIL samples at pixel centres, like us).
    step = square.side / output_size
    origin = (square.top_left - inner_low) * factor + before
    coefficients = (
        step * square.x_axis[0] * factor[0],
        step * square.y_axis[0] * factor[0],
        origin[0],
        step * square.x_axis[1] * factor[1],
        step * square.y_axis[1] * factor[1],
        origin[1],
    )
    return Image.fromarray(pixels).transform((output_size, output_size), Image.Transform.AFFINE, coefficients, resample)


def crop_from_landmarks(
    image: Image.Image,
    eye_left: np.ndarray,
    eye_right: np.ndarray,
    mouth_left: np.ndarray,
    mouth_right: np.ndarray,
    output_size: int = 512,
) -> tuple[Image.Image, HeadSquare]:
    """Apply the project's crop rule to an RGB image given its four key points (see `head_square`).

    The same function serves photos (points from Face Mesh) and training renders (points
    projected from the 3D head), so both see heads framed identically. Returns the crop and
    the square, whose `to_crop` maps any other points into the crop.
    """
    square = head_square(eye_left, eye_right, mouth_left, mouth_right)
    return sample_square(image, square, output_size), square


def mesh_key_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The crop rule's four key points (eye_left, eye_right, mouth_left, mouth_right) from Face Mesh."""
    return (
        landmarks[list(MESH_EYE_LEFT)].mean(axis=0),
        landmarks[list(MESH_EYE_RIGHT)].mean(axis=0),
        landmarks[MESH_MOUTH_LEFT],
        landmarks[MESH_MOUTH_RIGHT],
    )


# ---------------------------------------------------------------------------------------------
# Detection (MediaPipe 0.10.21: its models ship inside the wheel)

_MEDIAPIPE_LOCK = threading.Lock()
_MEDIAPIPE_MODELS: dict[str, Any] = {}
# A turned orientation wins only with a confident short-range hit that beats the photo as it is
# (values from the reference study: 0 false faces, all rotated test faces found).
_TURN_MIN_SCORE = 0.75
_TURN_MARGIN = 0.05


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
        return k, _run_detector("full_range", turned[k]) or _run_detector("short_range", turned[k])


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
        return _centre_crop(photo, output_size)

    factor = np.array(photo.size) / np.array(small.size)
    face = max(faces, key=lambda f: (f.box[2] - f.box[0]) * (f.box[3] - f.box[1]))
    keypoints = _unrotate(face.keypoints, k, small.width, small.height) * factor
    box_corners = np.array([face.box[[0, 1]], face.box[[2, 1]], face.box[[0, 3]], face.box[[2, 3]]])
    corners = _unrotate(box_corners, k, small.width, small.height) * factor
    face_box = (*corners.min(axis=0).tolist(), *corners.max(axis=0).tolist())
    warnings = [f"{len(faces)} faces were found; the largest one was used."] if len(faces) > 1 else []

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


def _centre_crop(photo: Image.Image, output_size: int) -> FaceCrop:
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
