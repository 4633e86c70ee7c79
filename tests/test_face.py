"""Face crop: what a person uploading a photo relies on (real photos from scikit-image)."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from diffnphr.face import (
    BACKGROUND_RGB,
    MIN_FACE_SIZE_PX,
    FaceCrop,
    ImageInputError,
    NoFaceError,
    crop_face,
    crop_from_landmarks,
    head_square,
    load_image,
    mesh_key_points,
)

SIZE = 512


@pytest.fixture(scope="module")
def astronaut_crop() -> FaceCrop:
    from skimage import data

    return crop_face(data.astronaut())


def _eye_mouth(crop: FaceCrop) -> tuple[np.ndarray, np.ndarray, float]:
    """Eye midpoint, mouth midpoint and eye-line angle (degrees) in crop pixels."""
    eye_left, eye_right, mouth_left, mouth_right = mesh_key_points(crop.landmarks.astype(np.float64))
    eye_line = eye_right - eye_left
    angle = float(np.degrees(np.arctan2(eye_line[1], eye_line[0])))
    return (eye_left + eye_right) / 2, (mouth_left + mouth_right) / 2, angle


def _assert_upright_centred_head(crop: FaceCrop) -> None:
    assert crop.image.size == (SIZE, SIZE) and crop.image.mode == "RGB"
    assert not crop.centred_fallback
    assert crop.landmarks is not None and crop.landmarks.shape == (478, 2)
    assert crop.landmarks.dtype == np.float32
    assert ((crop.landmarks > 0) & (crop.landmarks < SIZE)).all()
    eyes, mouth, angle = _eye_mouth(crop)
    assert abs(angle) < 2.0
    assert abs(eyes[0] - SIZE / 2) < 0.05 * SIZE and abs(mouth[0] - SIZE / 2) < 0.05 * SIZE
    assert SIZE * 0.3 < eyes[1] < mouth[1] < SIZE * 0.7  # upright, room for hair above, chin below


def _mean_difference(a: Image.Image | np.ndarray, b: Image.Image | np.ndarray) -> float:
    return float(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)).mean())


def test_portrait_gives_an_upright_centred_head(astronaut_crop):
    _assert_upright_centred_head(astronaut_crop)
    assert astronaut_crop.rotation == 0
    assert astronaut_crop.warnings == []
    x0, y0, x1, y1 = astronaut_crop.face_box
    assert 150 < x0 < x1 < 300 and 50 < y0 < y1 < 200  # the astronaut's face, in photo pixels
    assert astronaut_crop.face_size_px > MIN_FACE_SIZE_PX


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_turned_photo_gives_the_same_crop(face_photo, astronaut_crop, turn):
    turned = crop_face(face_photo.rotate(turn, expand=True))

    _assert_upright_centred_head(turned)
    assert turned.rotation == (360 - turn) % 360
    # the person is told the photo was used the other way up, in words
    expected = {90: "clockwise", 180: "upside down", 270: "anticlockwise"}[turn]
    assert any("The photo was used turned" in w and expected in w for w in turned.warnings), turned.warnings
    for here, there in zip(_eye_mouth(turned)[:2], _eye_mouth(astronaut_crop)[:2]):
        assert np.abs(here - there).max() < 0.05 * SIZE
    assert turned.face_size_px == pytest.approx(astronaut_crop.face_size_px, rel=0.05)
    assert _mean_difference(turned.image, astronaut_crop.image) < 12
    eyes_in_photo = turned.square.to_image(_eye_mouth(turned)[0][None], SIZE)[0]
    x0, y0, x1, y1 = turned.face_box
    assert x0 < eyes_in_photo[0] < x1 and y0 < eyes_in_photo[1] < y1


def test_exif_orientation_is_applied(face_photo, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = tmp_path / "phone.jpg"
    face_photo.rotate(90, expand=True).save(path, "JPEG", quality=95, exif=exif)

    assert _mean_difference(load_image(path), face_photo) < 6
    assert crop_face(path).rotation == 0


def test_photo_without_a_face_raises_a_plain_sentence(no_face_photo):
    with pytest.raises(NoFaceError) as raised:
        crop_face(no_face_photo)
    message = str(raised.value)
    assert message.startswith("No face was found") and message.endswith(".")
    assert "\n" not in message and ". " not in message
    assert isinstance(raised.value, ImageInputError) and isinstance(raised.value, ValueError)


def test_no_face_allowed_gives_the_centre_with_a_warning(no_face_photo):
    crop = crop_face(no_face_photo, allow_no_face=True)

    assert crop.centred_fallback and crop.landmarks is None and crop.face_box is None
    assert crop.image.size == (SIZE, SIZE)
    assert len(crop.warnings) == 1 and crop.warnings[0].startswith("No face was found")
    width, height = no_face_photo.size
    centre = no_face_photo.crop(((width - height) // 2, 0, (width + height) // 2, height))
    assert _mean_difference(crop.image, centre.resize((SIZE, SIZE), Image.Resampling.LANCZOS)) < 4


def _save_in_mode(photo: Image.Image, mode: str, folder: Path) -> Path:
    """The photo stored in a file of the given PIL mode, in a format that keeps that mode."""
    grey = np.asarray(photo.convert("L"))
    transparent = np.zeros(grey.shape, bool)
    transparent[:, :40] = True  # a transparent strip at the left edge, away from the face
    if mode == "RGBA":
        image = photo.copy()
        image.putalpha(Image.fromarray(np.where(transparent, 0, 255).astype(np.uint8)))
    elif mode == "LA":
        image = photo.convert("LA")
        image.putalpha(Image.fromarray(np.where(transparent, 0, 255).astype(np.uint8)))
    elif mode == "P":
        quantized = photo.quantize(255)
        indices = np.asarray(quantized).copy()
        indices[transparent] = 255  # a magenta entry, shown only if transparency were ignored
        image = Image.fromarray(indices, "P")
        image.putpalette(quantized.getpalette()[: 3 * 255] + [255, 0, 255])
        image.info["transparency"] = 255
    elif mode == "I;16":
        image = Image.fromarray(grey.astype(np.uint16) * 257)
    elif mode == "F":
        image = Image.fromarray(grey.astype(np.float32) / 255.0)
    else:
        image = photo.convert(mode)
    assert image.mode == mode
    suffix = {"CMYK": ".jpg", "I": ".tif", "F": ".tif"}.get(mode, ".png")
    path = folder / f"photo_{mode.replace(';', '')}{suffix}"
    image.save(path, **({"transparency": 255} if mode == "P" else {}))
    with Image.open(path) as stored:
        assert stored.mode == mode
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "I;16", "I", "F", "CMYK", "1"])
def test_every_colour_mode_is_read_and_cropped(face_photo, tmp_path, mode):
    path = _save_in_mode(face_photo, mode, tmp_path)

    loaded = load_image(path)
    assert loaded.mode == "RGB" and loaded.size == face_photo.size
    pixels = np.asarray(loaded)
    if mode in ("RGBA", "LA", "P"):
        assert (pixels[:, :40] == BACKGROUND_RGB).all()
    reference = face_photo if mode in ("RGBA", "P", "CMYK") else face_photo.convert("L").convert("RGB")
    tolerance = {"1": 30, "P": 8, "CMYK": 6}.get(mode, 1)
    assert _mean_difference(pixels[:, 40:], np.asarray(reference)[:, 40:]) < tolerance
    _assert_upright_centred_head(crop_face(path))


@pytest.mark.parametrize("suffix", [".gif", ".png"])
def test_animated_image_uses_its_first_frame(face_photo, no_face_photo, tmp_path, suffix):
    path = tmp_path / f"animated{suffix}"
    later = no_face_photo.resize(face_photo.size)
    face_photo.save(path, save_all=True, append_images=[later], duration=200, loop=0)
    with Image.open(path) as animated:
        assert animated.n_frames == 2
        animated.seek(1)
        assert _mean_difference(load_image(animated), face_photo) < 12

    assert _mean_difference(load_image(path), face_photo) < 12
    _assert_upright_centred_head(crop_face(path))


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares its size but holds no pixel data (cheap stand-in for a huge photo)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        checksum = struct.pack(">I", zlib.crc32(kind + payload))
        return struct.pack(">I", len(payload)) + kind + payload + checksum

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


@pytest.mark.parametrize("width, height", [(9000, 7000), (20000, 12000)])
def test_image_over_the_pixel_limit_is_refused_before_decoding(tmp_path, width, height):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(width, height))
    with pytest.raises(ImageInputError, match=r"^'huge.png' is .*megapixels.*resize it first\.$"):
        load_image(path)
    lazy = np.broadcast_to(np.zeros((1, 1, 3), np.uint8), (height, width, 3))  # no memory used
    with pytest.raises(ImageInputError, match="megapixels"):
        load_image(lazy)


def test_large_photo_within_the_limit_is_cropped(face_photo, astronaut_crop):
    big = face_photo.resize((5000, 5000), Image.Resampling.BILINEAR)  # 25 megapixels

    crop = crop_face(big)
    _assert_upright_centred_head(crop)
    assert crop.warnings == []
    assert crop.face_size_px == pytest.approx(astronaut_crop.face_size_px * 5000 / 512, rel=0.05)


def test_small_face_gives_a_warning_not_a_failure(face_photo):
    photo = Image.new("RGB", (800, 600), (120, 120, 120))
    photo.paste(face_photo.resize((256, 256), Image.Resampling.LANCZOS), (300, 200))  # face about 50 px

    crop = crop_face(photo)
    _assert_upright_centred_head(crop)
    assert crop.face_size_px < MIN_FACE_SIZE_PX
    assert len(crop.warnings) == 1 and "small" in crop.warnings[0]


def test_several_faces_keep_the_largest_and_say_so(face_photo):
    photo = Image.new("RGB", (900, 512), (128, 128, 128))
    photo.paste(face_photo, (0, 0))
    photo.paste(face_photo.resize((320, 320), Image.Resampling.LANCZOS), (560, 150))

    crop = crop_face(photo)
    _assert_upright_centred_head(crop)
    assert crop.warnings == ["2 faces were found; the largest one was used."]
    assert crop.face_box[2] < 512


def test_a_sheet_of_small_faces_is_searched_in_tiles(face_photo):
    """Nine portraits in a 3 × 3 sheet: too small for the detectors in the whole image, found tile by tile."""
    sheet = Image.new("RGB", (3 * 512, 3 * 512))
    for row in range(3):
        for column in range(3):
            sheet.paste(face_photo, (512 * column, 512 * row))
    crop = crop_face(sheet)
    _assert_upright_centred_head(crop)
    assert len(crop.warnings) == 1 and crop.warnings[0].endswith("faces were found; the largest one was used.")
    assert int(crop.warnings[0].split()[0]) in range(4, 10)  # each face counted once, not once per tile


def test_non_image_input_is_refused_with_a_sentence(tmp_path, face_photo):
    with pytest.raises(ImageInputError, match=r"^The uploaded data is not an image we can read \(PNG"):
        load_image(b"name,age\nAda,36\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("not a photo")
    with pytest.raises(ImageInputError, match=r"^'notes.txt' is not an image we can read"):
        crop_face(notes)
    with pytest.raises(ImageInputError, match="no image file"):
        load_image(tmp_path / "missing.jpg")
    with pytest.raises(ImageInputError, match="shape"):
        load_image(np.zeros((8, 8, 2), np.uint8))


def test_truncated_jpeg_is_refused_with_a_sentence(face_photo):
    encoded = io.BytesIO()
    face_photo.save(encoded, "JPEG", quality=90)
    with pytest.raises(ImageInputError, match="damaged or cut off"):
        crop_face(encoded.getvalue()[: len(encoded.getvalue()) // 2])


def test_rgb_colour_key_transparency_is_composited(tmp_path):
    pixels = np.full((8, 8, 3), 200, np.uint8)
    pixels[:, :4] = 0
    path = tmp_path / "keyed.png"
    Image.fromarray(pixels).save(path, transparency=(0, 0, 0))
    loaded = np.asarray(load_image(path))
    assert (loaded[:, :4] == BACKGROUND_RGB).all() and (loaded[:, 4:] == 200).all()


def test_byte_and_zero_to_one_arrays_read_alike(face_photo):
    pixels = np.asarray(face_photo)
    assert np.array_equal(np.asarray(load_image(pixels)), pixels)
    assert _mean_difference(load_image(pixels / 255.0), pixels) < 0.5


def test_padding_outside_the_photo_is_the_blurred_edge_not_a_mirror():
    # A photo of sharp black/white stripes whose left column is red above y=100 and blue below;
    # key points of a face near that edge put the left third of the head square outside it.
    photo = np.zeros((200, 200, 3), np.uint8)
    photo[:, :, :] = ((np.arange(200) // 4) % 2 * 255)[None, :, None]
    red, blue = np.array([200, 40, 40]), np.array([40, 40, 200])
    photo[:100, 0], photo[100:, 0] = red, blue

    eye_left, eye_right, mouth_left, mouth_right = np.array([[20, 90], [60, 90], [30, 130], [50, 130]])
    crop, square = crop_from_landmarks(Image.fromarray(photo), eye_left, eye_right, mouth_left, mouth_right)
    assert square.to_image(np.array([[0.0, SIZE / 2]]), SIZE)[0, 0] < -60  # the crop starts well outside
    outside = np.asarray(crop, np.float64)[:, :40]  # image x < -40: far from the photo's inside
    rows_y = square.to_image(np.stack([np.full(SIZE, 20.0), np.arange(SIZE) + 0.5], axis=1), SIZE)[:, 1]
    assert np.abs(outside[rows_y < 60].mean(axis=(0, 1)) - red).max() < 10
    assert np.abs(outside[rows_y > 140].mean(axis=(0, 1)) - blue).max() < 10
    assert outside.std(axis=1).max() < 6  # no stripes: a mirror would repeat them (std ~127)
    assert np.abs(np.diff(outside, axis=0)).max() < 15  # red turns into blue smoothly (blurred)


def test_crop_rule_is_shared_by_photos_and_projected_landmarks(face_photo, astronaut_crop):
    # Renders reuse `crop_from_landmarks` with projected points: it must reproduce the photo crop.
    points = astronaut_crop.square.to_image(astronaut_crop.landmarks, SIZE)
    crop, square = crop_from_landmarks(face_photo, *mesh_key_points(points))
    assert np.allclose(square.centre, astronaut_crop.square.centre, atol=0.05)
    assert square.half_side == pytest.approx(astronaut_crop.square.half_side, abs=0.05)
    assert _mean_difference(crop, astronaut_crop.image) < 0.5


@pytest.mark.parametrize("degrees, scale, offset", [(30.0, 2.0, (50.0, 20.0)), (-100.0, 0.5, (10.0, 300.0))])
def test_key_points_land_at_the_same_crop_place_whatever_the_pose(degrees, scale, offset):
    points = np.array([[100.0, 100.0], [140.0, 100.0], [108.0, 140.0], [132.0, 140.0]])
    in_crop = head_square(*points).to_crop(points, SIZE)
    angle = np.radians(degrees)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = (points - points.mean(axis=0)) @ turn.T * scale + points.mean(axis=0) + offset

    square = head_square(*moved)
    assert np.allclose(square.to_crop(moved, SIZE), in_crop, atol=1e-6)
    assert np.allclose(square.to_image(in_crop, SIZE), moved, atol=1e-6)
    assert in_crop[0, 1] == pytest.approx(in_crop[1, 1]) and in_crop[0, 0] < in_crop[1, 0]
