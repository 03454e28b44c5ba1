"""The canonical aligned crop: dlib 5-point alignment, get_face_chip, RGB (DESIGN §3)."""

import pathlib

import numpy as np
import pytest
import skimage.data

from vec2face_tf.config import CropSpec
from vec2face_tf.data.alignment import MULTIPLE_FACES, NO_FACE, OK, AlignResult, FaceAligner


@pytest.fixture(scope="module")
def aligner() -> FaceAligner:
    return FaceAligner()


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def astronaut_crop(aligner, astronaut) -> np.ndarray:
    return aligner.align(astronaut).crop


def mean_abs_difference(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def test_astronaut_face_is_aligned_to_a_150px_rgb_crop(aligner, astronaut):
    result = aligner.align(astronaut)
    assert isinstance(result, AlignResult)
    assert result.reason == OK
    assert result.num_faces == 1
    assert result.crop.shape == (150, 150, 3)
    assert result.crop.dtype == np.uint8
    # RGB, not BGR: the astronaut's face is skin-toned, so red dominates blue.
    centre = result.crop[50:100, 50:100].reshape(-1, 3).mean(axis=0)
    assert centre[0] > centre[2] + 20


def test_alignment_is_deterministic(aligner, astronaut, astronaut_crop):
    np.testing.assert_array_equal(aligner.align(astronaut).crop, astronaut_crop)


def test_crop_does_not_depend_on_where_the_face_is(aligner, astronaut, astronaut_crop):
    shifted = np.pad(astronaut, ((37, 0), (53, 0), (0, 0)))
    result = aligner.align(shifted)
    assert result.reason == OK
    # Only resampling differs; a wrong face or a misaligned crop differs by ~60 grey levels.
    assert mean_abs_difference(result.crop, astronaut_crop) < 6


def test_largest_breaks_near_ties_by_detector_score(aligner, astronaut, astronaut_crop):
    # Padding makes dlib also fire on the suit with a box as large as the face.
    shifted = np.pad(astronaut, ((40, 0), (40, 0), (0, 0)))
    result = aligner.align(shifted)
    assert result.num_faces == 2
    assert mean_abs_difference(result.crop, astronaut_crop) < 6


def test_skip_policy_skips_photos_with_several_faces(astronaut):
    shifted = np.pad(astronaut, ((40, 0), (40, 0), (0, 0)))
    result = FaceAligner(multiple_faces="skip").align(shifted)
    assert result == AlignResult(crop=None, reason=MULTIPLE_FACES, num_faces=2)


def test_photo_without_face_is_skipped_not_replaced(aligner):
    camera = np.repeat(skimage.data.camera()[:, :, None], 3, axis=2)
    assert aligner.align(camera) == AlignResult(crop=None, reason=NO_FACE, num_faces=0)


def test_crop_spec_sets_size_and_padding(astronaut, astronaut_crop):
    small = FaceAligner(CropSpec(size=64, padding=0.25)).align(astronaut).crop
    assert small.shape == (64, 64, 3)
    wide = FaceAligner(CropSpec(size=150, padding=0.5)).align(astronaut).crop
    assert wide.shape == (150, 150, 3)
    assert mean_abs_difference(wide, astronaut_crop) > 20


def test_non_contiguous_input_is_accepted(aligner, astronaut, astronaut_crop):
    with_alpha = np.concatenate([astronaut, np.zeros_like(astronaut[:, :, :1])], axis=2)
    rgb_view = with_alpha[:, :, :3]
    assert not rgb_view.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(aligner.align(rgb_view).crop, astronaut_crop)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((64, 64, 3), np.float32), "uint8"),
    (np.zeros((64, 64), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((64, 64, 4), np.uint8), r"\[H, W, 3\]"),
    (np.zeros((0, 64, 3), np.uint8), "empty"),
    ([[0, 0, 0]], "numpy array"),
])
def test_bad_input_raises_value_error_naming_the_problem(aligner, bad, message):
    with pytest.raises(ValueError, match=message):
        aligner.align(bad)


@pytest.mark.parametrize("kwargs, message", [
    ({"multiple_faces": "first"}, "multiple_faces"),
    ({"crop": CropSpec(method="mtcnn")}, "crop method"),
    ({"crop": CropSpec(size=4)}, "crop size"),
])
def test_bad_configuration_raises_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message):
        FaceAligner(**kwargs)


def test_real_photos_align(aligner, faces_dev: pathlib.Path):
    from PIL import Image

    photos = sorted(faces_dev.glob("*/*.jpg"))[:40]
    assert len(photos) == 40
    results = [aligner.align(np.asarray(Image.open(p).convert("RGB"))) for p in photos]
    aligned = [r for r in results if r.reason == OK]
    # Deep-funneled LFW photos are centred frontal faces; dlib's HOG finds nearly all.
    assert len(aligned) >= 36
    assert all(r.crop.shape == (150, 150, 3) and r.crop.dtype == np.uint8 for r in aligned)
    assert all(r.crop is None for r in results if r.reason != OK)
