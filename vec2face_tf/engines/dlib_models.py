"""Locates the dlib model files shipped by the ``face-recognition-models`` package.

The package's ``__init__`` imports ``pkg_resources`` (gone in setuptools >= 82), so the files
are found from the import spec without executing that module.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib

from vec2face_tf.engines.base import EngineError

MODELS_PACKAGE = "face_recognition_models"
SHAPE_PREDICTOR_5 = "shape_predictor_5_face_landmarks.dat"
FACE_RECOGNITION_RESNET = "dlib_face_recognition_resnet_model_v1.dat"


@functools.cache
def _models_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(MODELS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EngineError(f"the {MODELS_PACKAGE!r} package is not installed; it ships dlib's "
                          "model files (pip install face-recognition-models==0.3.0)")
    return pathlib.Path(next(iter(spec.submodule_search_locations))) / "models"


def dlib_model_path(filename: str) -> pathlib.Path:
    """Returns the path of a dlib model file shipped by ``face-recognition-models``.

    Args:
      filename: a file name in the package's ``models`` folder, e.g.
        ``shape_predictor_5_face_landmarks.dat`` or
        ``dlib_face_recognition_resnet_model_v1.dat``.

    Returns:
      The absolute path of an existing file.

    Raises:
      EngineError: when the package is not installed or does not contain ``filename``.
    """
    if not isinstance(filename, str) or not filename or pathlib.Path(filename).name != filename:
        raise EngineError(f"dlib model file name must be a bare file name, got {filename!r}")
    models_dir = _models_dir()
    path = models_dir / filename
    if not path.is_file():
        shipped = sorted(p.name for p in models_dir.glob("*.dat")) if models_dir.is_dir() else []
        raise EngineError(f"dlib model file {filename!r} not found in {models_dir}; the "
                          f"{MODELS_PACKAGE!r} package ships {shipped}")
    return path
