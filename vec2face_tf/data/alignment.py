"""The one canonical aligned face crop of the project (DESIGN §3).

dlib's HOG frontal face detector finds faces, the 5-point shape predictor places eye corners
and nose, and ``dlib.get_face_chip`` rotates and scales the face to a square RGB crop. Every
engine receives this crop and the generator learns to produce it, so it is parameterised only
by ``vec2face_tf.config.CropSpec``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from vec2face_tf.config import CropSpec
from vec2face_tf.engines.dlib_models import SHAPE_PREDICTOR_5, dlib_model_path

NO_FACE = "no_face"
MULTIPLE_FACES = "multiple_faces"
OK = "ok"

MULTIPLE_FACES_POLICIES = ("largest", "skip")
SUPPORTED_METHODS = ("dlib_5point",)
# Detections at least this close in area to the largest count as equally large.
LARGEST_AREA_TOLERANCE = 0.2
DEFAULT_CROP = CropSpec()  # Frozen, so sharing it as a default is safe.


@dataclasses.dataclass(frozen=True)
class AlignResult:
    """The outcome of aligning one photo.

    Attributes:
      crop: uint8[size, size, 3] RGB aligned crop, or None when the photo was skipped.
      reason: ``OK``, ``NO_FACE`` or ``MULTIPLE_FACES`` (the latter only under "skip").
      num_faces: how many faces the detector found.
    """

    crop: np.ndarray | None
    reason: str
    num_faces: int


class FaceAligner:
    """Detects, landmarks and aligns one face per photo with dlib.

    Not thread-safe (dlib's detector and predictor are shared state); use one per thread or
    process.
    """

    def __init__(self, crop: CropSpec = DEFAULT_CROP, multiple_faces: str = "largest"):
        """Loads dlib's detector and 5-point predictor.

        Args:
          crop: the crop to produce; only method ``dlib_5point`` exists.
          multiple_faces: ``"largest"`` keeps the largest detection (ties within
            ``LARGEST_AREA_TOLERANCE`` of its area go to the higher detector score),
            ``"skip"`` skips photos with more than one face (reason ``MULTIPLE_FACES``).

        Raises:
          ValueError: for an unknown crop method, a bad size/padding or policy.
          vec2face_tf.engines.EngineError: when dlib's model files are missing.
        """
        if crop.method not in SUPPORTED_METHODS:
            raise ValueError(f"crop method {crop.method!r} is not supported; supported: "
                             f"{SUPPORTED_METHODS}")
        if not isinstance(crop.size, int) or crop.size < 8:
            raise ValueError(f"crop size must be an int >= 8, got {crop.size!r}")
        if not 0 <= crop.padding <= 2:
            raise ValueError(f"crop padding must be in [0, 2], got {crop.padding!r}")
        if multiple_faces not in MULTIPLE_FACES_POLICIES:
            raise ValueError(f"multiple_faces must be one of {MULTIPLE_FACES_POLICIES}, got "
                             f"{multiple_faces!r}")
        import dlib

        self.crop_spec = crop
        self.multiple_faces = multiple_faces
        self._detector = dlib.get_frontal_face_detector()
        self._predictor = dlib.shape_predictor(str(dlib_model_path(SHAPE_PREDICTOR_5)))
        self._dlib = dlib

    def align(self, image: np.ndarray) -> AlignResult:
        """Aligns the face in one photo.

        Args:
          image: uint8[H, W, 3] RGB photo.

        Returns:
          An AlignResult: the crop (uint8[size, size, 3] RGB) with reason ``OK``, or no crop
          with reason ``NO_FACE`` / ``MULTIPLE_FACES``.

        Raises:
          ValueError: when ``image`` is not a uint8[H, W, 3] numpy array.
        """
        image = _validate_photo(image)
        # Upsampling doubles the image (4x the detector time); only pay for it when needed,
        # since it is what finds faces smaller than dlib's 80 px minimum.
        boxes, scores, _ = self._detector.run(image, 0, 0.0)
        if len(boxes) == 0:
            boxes, scores, _ = self._detector.run(image, 1, 0.0)
        num_faces = len(boxes)
        if num_faces == 0:
            return AlignResult(crop=None, reason=NO_FACE, num_faces=0)
        if num_faces > 1 and self.multiple_faces == "skip":
            return AlignResult(crop=None, reason=MULTIPLE_FACES, num_faces=num_faces)
        box = _pick_largest(list(boxes), list(scores))
        shape = self._predictor(image, box)
        crop = self._dlib.get_face_chip(image, shape, size=self.crop_spec.size,
                                        padding=self.crop_spec.padding)
        return AlignResult(crop=np.asarray(crop, dtype=np.uint8), reason=OK,
                           num_faces=num_faces)


def _pick_largest(boxes: list, scores: list[float]) -> Any:
    """The largest box; among boxes within LARGEST_AREA_TOLERANCE of it, the best scored.

    HOG false positives (on clothing, say) can be as large as the face within a few pixels,
    and dlib's boxes are quantised, so a strict "largest" would be a coin toss between them.
    """
    largest_area = max(box.area() for box in boxes)
    candidates = [(score, index) for index, (box, score) in enumerate(zip(boxes, scores))
                  if box.area() >= (1 - LARGEST_AREA_TOLERANCE) * largest_area]
    return boxes[max(candidates)[1]]


def _validate_photo(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must have shape [H, W, 3] (RGB), got {image.shape}; convert "
                         "grey or RGBA photos to RGB first")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image is empty, shape {image.shape}")
    # dlib's pybind11 binding needs C-contiguous memory; slices and flips are not.
    return np.ascontiguousarray(image)
