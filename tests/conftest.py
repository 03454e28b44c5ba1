"""Shared fixtures. Tests that need real faces use ``faces_dev``: it skips with a reason when
the data is absent, and fails instead when VEC2FACE_REQUIRE_DATA=1 (CI sets it)."""

import os
import pathlib

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FACES_DEV = REPO_ROOT.parent / "shared" / "data" / "faces-dev"


def faces_dev_path() -> pathlib.Path:
    return pathlib.Path(os.environ.get("VEC2FACE_FACES_DEV", DEFAULT_FACES_DEV))


@pytest.fixture(scope="session")
def faces_dev() -> pathlib.Path:
    """The faces-dev folder of real LFW photos (``<identity>/<file>.jpg``)."""
    root = faces_dev_path()
    if not root.is_dir() or not any(root.iterdir()):
        message = (f"faces-dev data not found at {root} (set VEC2FACE_FACES_DEV to its "
                   "location)")
        if os.environ.get("VEC2FACE_REQUIRE_DATA") == "1":
            pytest.fail(message + "; VEC2FACE_REQUIRE_DATA=1 makes this a failure")
        pytest.skip(message)
    return root
