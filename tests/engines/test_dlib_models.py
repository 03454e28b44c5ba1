"""Finding dlib's model files without importing face_recognition_models (pkg_resources)."""

import sys

import pytest

from vec2face_tf.engines import EngineError, dlib_models
from vec2face_tf.engines.dlib_models import (
    FACE_RECOGNITION_RESNET,
    SHAPE_PREDICTOR_5,
    dlib_model_path,
)


@pytest.mark.parametrize("filename, min_bytes", [(SHAPE_PREDICTOR_5, 9_000_000),
                                                  (FACE_RECOGNITION_RESNET, 22_000_000)])
def test_shipped_model_files_are_found(filename, min_bytes):
    path = dlib_model_path(filename)
    assert path.is_absolute() and path.name == filename
    assert path.stat().st_size > min_bytes


def test_locating_does_not_import_the_package():
    sys.modules.pop("face_recognition_models", None)
    dlib_model_path(SHAPE_PREDICTOR_5)
    assert "face_recognition_models" not in sys.modules


def test_missing_file_is_an_engine_error_listing_what_ships():
    with pytest.raises(EngineError, match="not found.*shape_predictor_5_face_landmarks.dat"):
        dlib_model_path("no_such_model.dat")


@pytest.mark.parametrize("bad", ["", "../models/x.dat", None])
def test_path_like_names_are_rejected(bad):
    with pytest.raises(EngineError, match="bare file name"):
        dlib_model_path(bad)


def test_missing_package_is_an_engine_error(monkeypatch):
    monkeypatch.setattr(dlib_models, "MODELS_PACKAGE", "no_such_package_vec2face")
    dlib_models._models_dir.cache_clear()
    try:
        with pytest.raises(EngineError, match="not installed.*face-recognition-models"):
            dlib_model_path(SHAPE_PREDICTOR_5)
    finally:
        monkeypatch.undo()
        dlib_models._models_dir.cache_clear()
