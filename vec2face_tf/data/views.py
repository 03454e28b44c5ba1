"""Augmented views of the cached aligned crops, for distilling the student.

The engine labels any image, so an augmented view of a photo is a new, correctly labelled
distillation example once the engine has embedded it. Views are a pure function of the photo's
content hash and the view's index: view 1 is the horizontal mirror, views 2.. draw a random
mirror, rotation, scale, shift and colour jitter. The same view is rendered on every run, so
its content hash (the cache key) is stable and a rerun embeds nothing twice.
"""

from __future__ import annotations

import dataclasses

import numpy as np

# Part of every view's random seed: changing how views are drawn changes their hashes, so an
# old cache is never mistaken for the new views.
VIEW_RECIPE_VERSION = 1
VIEWS_TABLE = "views"


@dataclasses.dataclass(frozen=True)
class ViewParams:
    """One view's transform of an aligned crop.

    Attributes:
      mirror: flip left-right first.
      angle: rotation in degrees about the crop centre (counter-clockwise).
      scale: zoom factor (> 1 magnifies).
      shift_x, shift_y: translation as a fraction of the crop side.
      brightness: added to every channel, in grey levels.
      contrast: factor on the deviation from the crop's mean grey level.
      saturation: factor on the deviation from each pixel's grey value.
    """

    mirror: bool = False
    angle: float = 0.0
    scale: float = 1.0
    shift_x: float = 0.0
    shift_y: float = 0.0
    brightness: float = 0.0
    contrast: float = 1.0
    saturation: float = 1.0

    @property
    def is_geometric_identity(self) -> bool:
        return (self.angle == 0.0 and self.scale == 1.0 and self.shift_x == 0.0
                and self.shift_y == 0.0)


def view_params(photo_hash: str, index: int) -> ViewParams:
    """The transform of view ``index`` (>= 1) of the photo with content hash ``photo_hash``.

    Args:
      photo_hash: the photo's sha256 hex digest (the cache key).
      index: 1 is the plain mirror image; 2 and up are random augmentations.

    Raises:
      ValueError: for an index below 1 or a hash that is not hexadecimal.
    """
    if isinstance(index, bool) or not isinstance(index, int) or index < 1:
        raise ValueError(f"view index must be an int >= 1 (0 is the photo), got {index!r}")
    try:
        photo_seed = int(photo_hash[:16], 16)
    except ValueError as error:
        raise ValueError(f"photo_hash must be a hex digest, got {photo_hash!r}") from error
    if index == 1:
        return ViewParams(mirror=True)
    rng = np.random.default_rng([photo_seed, index, VIEW_RECIPE_VERSION])
    return ViewParams(
        mirror=bool(rng.random() < 0.5),
        angle=float(rng.uniform(-10.0, 10.0)),
        scale=float(rng.uniform(0.9, 1.1)),
        shift_x=float(rng.uniform(-0.05, 0.05)),
        shift_y=float(rng.uniform(-0.05, 0.05)),
        brightness=float(rng.uniform(-20.0, 20.0)),
        contrast=float(rng.uniform(0.8, 1.2)),
        saturation=float(rng.uniform(0.7, 1.3)))


def render_view(crop: np.ndarray, params: ViewParams) -> np.ndarray:
    """Applies ``params`` to a uint8[S, S, 3] RGB crop; returns a new uint8[S, S, 3] crop.

    Borders that the rotation or shift uncover are filled by reflection, so no black wedge
    appears that the engine (or the student) could key on.
    """
    import cv2

    crop = np.asarray(crop)
    if crop.dtype != np.uint8 or crop.ndim != 3 or crop.shape[2] != 3 or (
            crop.shape[0] != crop.shape[1]):
        raise ValueError(f"a view needs a square uint8 RGB crop [S, S, 3], got "
                         f"{crop.dtype}{crop.shape}")
    image = crop[:, ::-1] if params.mirror else crop
    size = crop.shape[0]
    if not params.is_geometric_identity:
        centre = ((size - 1) / 2.0, (size - 1) / 2.0)
        matrix = cv2.getRotationMatrix2D(centre, params.angle, params.scale)
        matrix[:, 2] += (params.shift_x * size, params.shift_y * size)
        image = cv2.warpAffine(np.ascontiguousarray(image), matrix, (size, size),
                               flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    values = image.astype(np.float32)
    if params.saturation != 1.0:
        grey = values @ np.array([0.299, 0.587, 0.114], np.float32)
        values = grey[..., None] + params.saturation * (values - grey[..., None])
    if params.contrast != 1.0:
        values = values.mean() + params.contrast * (values - values.mean())
    values += params.brightness
    return np.ascontiguousarray(np.clip(np.round(values), 0, 255).astype(np.uint8))


def view_key(photo_key: str, index: int) -> str:
    """The record key of a view: its photo's key and the view's index."""
    return f"{photo_key}#view{index}"
