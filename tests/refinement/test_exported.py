"""Refinement from an exported model: --stop_at, finding the student, and refusing engines and
students of another kind."""

import numpy as np
import pytest

from vec2face_tf import demo
from vec2face_tf.export import savedmodel
from vec2face_tf.refinement import RefinementError
from vec2face_tf.refinement.exported import (
    STOP_MARGIN,
    ExportedRefiner,
    find_student,
    parse_stop_at,
)

THRESHOLDS = {"fmr": {"0.01": {"cosine": 0.90}, "0.001": {"cosine": 0.92}}}


@pytest.mark.parametrize("spec, strict, expected", [
    (None, True, None), ("none", True, None), ("", True, None),
    ("fmr=1e-3", True, 0.92 + STOP_MARGIN), ("fmr=0.01", True, 0.90 + STOP_MARGIN),
    ("cosine=0.5", True, 0.5),
    # A default the model cannot honour falls back to its strictest threshold.
    ("fmr=1e-4", False, 0.92 + STOP_MARGIN),
])
def test_stop_at_targets(spec, strict, expected):
    target, text = parse_stop_at(spec, THRESHOLDS, strict=strict)
    assert target == (None if expected is None else pytest.approx(expected))
    assert (text is None) == (expected is None)


def test_a_default_without_any_threshold_means_no_early_stop():
    assert parse_stop_at("fmr=1e-4", None, strict=False) == (None, None)


@pytest.mark.parametrize("spec, message", [
    ("fmr=1e-4", "no threshold at FMR 0.0001"), ("fmr=x", "must be 'fmr=<rate>'"),
    ("far=1e-3", "must be 'fmr=<rate>'"), ("cosine=2", "cosine must be in \\[-1, 1\\]"),
])
def test_bad_stop_at_is_named(spec, message):
    with pytest.raises(RefinementError, match=message):
        parse_stop_at(spec, THRESHOLDS)


def test_the_demo_finds_its_student_and_refuses_an_engine_of_another_dimension():
    metadata = savedmodel.read_metadata(demo.MODEL_DIR)
    assert find_student(demo.MODEL_DIR, metadata) == demo.STUDENT_DIR
    refiner = ExportedRefiner(demo.MODEL_DIR, metadata)
    assert refiner.uses_student and refiner.settings["surrogate_path"] > 0

    class OtherEngine:
        dim = 512

        def embed(self, images):
            raise AssertionError("never called")

    with pytest.raises(RefinementError, match="the engine gives D=512 vectors; the model "
                                              "inverts D=128"):
        refiner.refine(np.ones(128), OtherEngine(), 10)
    with pytest.raises(RefinementError, match="has 512 values"):
        refiner.refine(np.ones(512), type("Dlib", (), {"dim": 128, "embed": print})(), 10)
    alone = ExportedRefiner(demo.MODEL_DIR, metadata, student_dir=False)
    assert not alone.uses_student and "engine queries only" in alone.surrogate_note
    assert alone.settings == {}


def test_a_student_of_another_engine_is_refused(tmp_path):
    import shutil

    metadata = savedmodel.read_metadata(demo.MODEL_DIR)
    student = tmp_path / "student"
    shutil.copytree(demo.STUDENT_DIR, student)
    student_metadata = savedmodel.read_metadata(student)
    savedmodel.write_metadata(student / "assets", {**student_metadata,
                                                   "engine": "deepface:ArcFace"})
    with pytest.raises(RefinementError, match="imitates deepface:ArcFace"):
        ExportedRefiner(demo.MODEL_DIR, metadata, student_dir=student)
