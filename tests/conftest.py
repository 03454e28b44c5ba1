"""Shared fixtures. Tests that need real faces use ``faces_dev``: it skips with a reason when
the data is absent, and fails instead when VEC2FACE_REQUIRE_DATA=1 (CI sets it).

Under ``CI=true`` a test (or test module) that ``pytest.importorskip``s a dependency that is
not installed fails instead of skipping: in CI every dependency is installed, so a missing one
is a broken install, not a reason to pass.
"""

import os
import pathlib

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT_FACES_DEV = REPO_ROOT.parent / "shared" / "data" / "faces-dev"


def _missing_dependency_in_ci(report) -> str | None:
    """The skip message of ``report`` when it is an importorskip under CI=true, else None."""
    if os.environ.get("CI") != "true" or not report.skipped:
        return None
    longrepr = report.longrepr
    message = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
    return message if "could not import" in message else None


def _fail_missing_dependency(report) -> None:
    message = _missing_dependency_in_ci(report)
    if message is not None:
        report.outcome = "failed"
        report.longrepr = (f"{message} -- under CI=true a dependency that a test imports must be "
                           "installed: this is a failure, not a skip")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_missing_dependency(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_missing_dependency(outcome.get_result())


# scripts/test.sh sets this after `bazel test //:fast_tests` passed: pytest then leaves out the
# fast tests Bazel just ran, so the test command runs every test once.
BAZEL_RAN_FAST_TESTS = "VEC2FACE_BAZEL_RAN_FAST_TESTS"


def files_bazel_leaves_to_pytest(build_file: pathlib.Path = REPO_ROOT / "BUILD") -> set[str]:
    """The test files of BUILD's ``PYTEST_ONLY`` list: those Bazel's fast tests leave out."""
    import re

    block = re.search(r"^PYTEST_ONLY = \[(.*?)\]", build_file.read_text(), re.S | re.M)
    if block is None:
        raise RuntimeError(f"{build_file} has no PYTEST_ONLY list")
    return set(re.findall(r'"([^"]+\.py)"', block.group(1)))


def pytest_collection_modifyitems(config, items):
    # A copy of this conftest outside the repository (tests/test_ci_skips.py) has no BUILD.
    if os.environ.get(BAZEL_RAN_FAST_TESTS) != "1" or not (REPO_ROOT / "BUILD").is_file():
        return
    only_here = files_bazel_leaves_to_pytest()
    kept, ran_under_bazel = [], []
    for item in items:
        path = pathlib.Path(str(item.path)).resolve()
        relative = path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(
            REPO_ROOT) else None
        fast = not (item.get_closest_marker("slow") or item.get_closest_marker("fault"))
        if fast and relative and relative.startswith("tests/") and relative not in only_here:
            ran_under_bazel.append(item)
        else:
            kept.append(item)
    if ran_under_bazel:
        config.hook.pytest_deselected(items=ran_under_bazel)
        items[:] = kept


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


def link_identities(faces_dev: pathlib.Path, folder: pathlib.Path, every: int, count: int,
                    photos: int) -> pathlib.Path:
    """Links ``photos`` photos of every ``every``-th faces-dev identity that has that many,
    ``count`` identities in all, into ``folder/<identity>/<photo>``."""
    identities = [d for d in sorted(faces_dev.iterdir())
                  if d.is_dir() and len(list(d.glob("*.jpg"))) >= photos][::every][:count]
    for identity in identities:
        (folder / identity.name).mkdir()
        for photo in sorted(identity.glob("*.jpg"))[:photos]:
            (folder / identity.name / photo.name).symlink_to(photo)
    return folder


@pytest.fixture(scope="session")
def same_person_cosine() -> float:
    """dlib's cosine threshold at FMR 1e-3, measured on every impostor pair of faces-dev
    (20,733,193 pairs, shipped in the demo's vec2face.json): the tests' "same person" rule."""
    from vec2face_tf import demo
    from vec2face_tf.export import savedmodel

    thresholds = savedmodel.read_metadata(demo.model_dir())["thresholds"]["fmr"]["0.001"]
    return float(thresholds["cosine"])


@pytest.fixture(scope="session")
def small_faces(faces_dev, tmp_path_factory) -> pathlib.Path:
    """16 faces-dev identities with 3 photos each (training tests)."""
    return link_identities(faces_dev, tmp_path_factory.mktemp("small_faces"), 30, 16, 3)


@pytest.fixture(scope="session")
def real_faces_folder(faces_dev, tmp_path_factory) -> pathlib.Path:
    """210 faces-dev photos (70 identities x 3) for export parity and evaluation tests."""
    return link_identities(faces_dev, tmp_path_factory.mktemp("real_faces"), 5, 70, 3)


@pytest.fixture(scope="session")
def verification_faces_folder(faces_dev, tmp_path_factory) -> pathlib.Path:
    """600 faces-dev photos (200 identities x 3) for engines' genuine/impostor rates: 600
    genuine and 179,100 impostor pairs, enough for FMR 1e-4 (17 false matches)."""
    return link_identities(faces_dev, tmp_path_factory.mktemp("verification_faces"), 2, 200, 3)


@pytest.fixture(scope="session")
def dlib():
    """The dlib engine, shared by the tests that score images."""
    from vec2face_tf.engines import get_engine

    engine = get_engine("dlib")
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def real_faces_cache(real_faces_folder, tmp_path_factory) -> pathlib.Path:
    """The dlib embedding cache of ``real_faces_folder``.

    prepare runs in-process (``workers=0``), about 15 s on a 2-core CPU.
    """
    from vec2face_tf.data import prepare

    folder = real_faces_folder
    cache = tmp_path_factory.mktemp("real_faces_cache")
    prepare.prepare(str(folder), "dlib", cache, workers=0, progress=False)
    return cache


@pytest.fixture(scope="session")
def real_faces(real_faces_cache):
    """``real_faces_cache`` loaded as ``Faces``: real dlib vectors for calibration and parity."""
    from vec2face_tf.data import pipeline
    from vec2face_tf.engines import get_engine

    engine = get_engine("dlib")
    try:
        return pipeline.load_faces(real_faces_cache, engine.name)
    finally:
        engine.close()


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory) -> pathlib.Path:
    """A ``smoke`` training folder (dlib, D=128) whose checkpoint holds untrained weights.

    The EMA holds Keras-initialised weights perturbed once, and the live generator weights
    are perturbed again after that, so the two differ: an export that used the wrong one
    shows it. The folder holds calibration templates, as a trained run's does.
    """
    import json

    import keras
    import tensorflow as tf

    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    model_dir = tmp_path_factory.mktemp("smoke_run")
    config = config_lib.get_config("smoke")
    keras.utils.set_random_seed(0)  # the same initial weights, so parity figures repeat
    parts = dibigan.build_parts(config, embedding_dim=128)
    g_optimizer = keras.optimizers.Adam(use_ema=True, ema_momentum=config.train.ema_momentum)
    weights = parts.generator.trainable_variables
    rng = tf.random.Generator.from_seed(0)

    def perturb():
        for variable in weights:
            scale = float(tf.math.reduce_std(variable)) or 0.05
            variable.assign(variable + 0.5 * scale * rng.normal(variable.shape))

    # The FiLM generator starts with a zero noise projection (noise has no effect): the EMA
    # gets one as large as the embedding's, so samples differ visibly. A step with zero
    # gradients then moves no weight and sets the EMA to these weights; a second
    # perturbation moves the live ones.
    perturb()
    noise_projection = parts.generator.noise_projection.kernel
    noise_projection.assign(rng.normal(noise_projection.shape)
                            / np.sqrt(config.generator.noise_dim))
    g_optimizer.apply_gradients([(tf.zeros_like(v), v) for v in weights])
    perturb()
    calibration = np.random.default_rng(0).standard_normal((64, 128)).astype(np.float32)
    np.save(model_dir / dibigan.CALIBRATION_FILE,
            calibration / np.linalg.norm(calibration, axis=1, keepdims=True))
    checkpoint = dibigan.checkpoint_for(parts, g_optimizer=g_optimizer)
    tf.train.CheckpointManager(checkpoint, model_dir / "checkpoints", max_to_keep=1).save(1)
    (model_dir / "config.json").write_text(config.to_json())
    (model_dir / "run.json").write_text(json.dumps({
        "engine": "dlib", "embedding_dim": 128, "cache_dir": str(model_dir / "cache")}))
    return model_dir


@pytest.fixture(scope="session")
def smoke_export(smoke_run, tmp_path_factory):
    """Version 1 of ``smoke_run``'s SavedModel export, as an ``ExportedModel``."""
    from vec2face_tf.export import savedmodel

    generator, metadata = savedmodel.load_run(smoke_run)
    base = tmp_path_factory.mktemp("export_base")
    return savedmodel.write_savedmodel(generator, metadata, base, "smoke")
