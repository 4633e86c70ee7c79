"""Reading whatever a person uploads into an RGB image, or a one-sentence reason why not.

EXIF orientation, odd colour modes (16-bit, CMYK, palette, transparency over `BACKGROUND_RGB`),
animated files (first frame), size limits; every failure is an `ImageInputError`.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter, ImageOps

MAX_PIXELS = 50_000_000
"""Largest image accepted (50 megapixels: an 8000x6000 phone photo fits)."""
BACKGROUND_RGB = (128, 128, 128)
"""Neutral grey that transparent pixels are composited on."""
READABLE_FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"

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
