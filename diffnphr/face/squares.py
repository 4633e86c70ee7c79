"""The crop rule: from two eye centres and two mouth corners to the square the model sees.

The crop rule is the FFHQ alignment, enlarged so the whole head (hair, chin, some neck) fits:
from the two eye centres and the two mouth corners, the square is rotated so the face is
upright, centred a little below the eyes and about 5.3 eye-to-mouth distances wide. It needs
no detector, so training renders can apply exactly the same rule to projected landmarks. Parts
of the square outside the photo are filled with edge pixels, blurred (never mirrored: mirroring
makes ghost faces).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

HEAD_SCALE = 1.4
"""Head square size relative to the FFHQ alignment square (1.0 cuts the top of the hair)."""
HEAD_SHIFT = 0.2
"""Square centre below the eye midpoint, in eye-to-mouth distances (FFHQ: 0.1; 0.2 keeps the chin)."""

# Face Mesh indices of the key points the crop rule needs (image left/right of an upright face).
MESH_EYE_LEFT = (33, 133)  # outer and inner corner of the eye on the image's left
MESH_EYE_RIGHT = (362, 263)  # inner and outer corner of the eye on the image's right
MESH_MOUTH_LEFT = 61
MESH_MOUTH_RIGHT = 291


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
