"""Face crop: any photo a person uploads -> an upright 512x512 head crop plus 478 landmarks.

This is the first step of reconstruction, and the one that sees raw user input:

* `images`: reading images (EXIF orientation, odd colour modes, animated files, size limits,
  clear errors: `ImageInputError`, `NoFaceError`);
* `squares`: the crop rule (an enlarged FFHQ alignment from eyes and mouth corners), which
  needs no detector, so training renders apply exactly the same rule to projected landmarks;
* `crop`: finding the face (MediaPipe 0.10.21 BlazeFace over the four right-angle orientations,
  then Face Mesh) and `crop_face`, the step the pipeline runs.
"""

from diffnphr.face.crop import MIN_FACE_SIZE_PX, FaceCrop, crop_face
from diffnphr.face.images import BACKGROUND_RGB, ImageInputError, ImageSource, NoFaceError, load_image
from diffnphr.face.squares import HeadSquare, crop_from_landmarks, head_square, head_squares, mesh_key_points

__all__ = [
    "BACKGROUND_RGB",
    "MIN_FACE_SIZE_PX",
    "FaceCrop",
    "HeadSquare",
    "ImageInputError",
    "ImageSource",
    "NoFaceError",
    "crop_face",
    "crop_from_landmarks",
    "head_square",
    "head_squares",
    "load_image",
    "mesh_key_points",
]
