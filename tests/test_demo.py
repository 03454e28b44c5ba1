"""The bundled demo model and the README's main job (inverting skimage's astronaut)."""

import json

import numpy as np
import pytest

from vec2face_tf import demo
from vec2face_tf.evaluation import invert
from vec2face_tf.export import savedmodel

# The demo student's mean centred cosine with dlib on all 610 photos of its 150 held-out
# identities (benchmarks/results/student.json, docs/results.md); the test below checks 40 of
# them, within 0.05.
DEMO_STUDENT_CENTRED = 0.790


def test_demo_is_a_small_dlib_cpu64_export_with_its_config_and_evaluation():
    model = demo.model_dir()
    size = sum(p.stat().st_size for p in model.rglob("*") if p.is_file())
    assert size <= 25 * 2**20
    metadata = savedmodel.read_metadata(model)
    assert (metadata["engine"], metadata["embedding_dim"], metadata["height"],
            metadata["width"]) == ("dlib", 128, 64, 64)
    assert metadata["training_config"]["preset"] == "cpu64"
    # Thresholds measured on every faces-dev face of the run's cache (~2e7 impostor pairs).
    assert metadata["thresholds"]["fmr"]["0.001"]["impostor_pairs"] > 10**7
    config = json.loads((demo.DEMO_DIR / "config.json").read_text())
    assert config == metadata["training_config"]
    report = json.loads((demo.DEMO_DIR / "report.json").read_text())
    probes = set(report["probe_identity_names"])
    assert len(probes) == report["probe_identities"] and not probes & set(
        metadata["train_identities"])
    assert report["probe_identities"] == config["data"]["holdout_identities"]
    for name in ("report.md", "grid.png", "scores.png"):
        assert (demo.DEMO_DIR / name).stat().st_size > 500


def test_readme_main_job_inverts_the_astronaut_offline(tmp_path):
    result = invert.invert(None, tmp_path, image="skimage:astronaut")
    assert result["engine"] == "dlib" and result["fmr"] == pytest.approx(1e-3)
    assert np.isfinite(result["cosine"]) and 0.5 < result["cosine"] <= 1.0
    assert result["passes"] == (result["cosine"] > result["threshold"])
    for name in ("reconstruction.png", "side_by_side.png"):
        assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")
    assert json.loads((tmp_path / "result.json").read_text())["cosine"] == result["cosine"]


@pytest.fixture(scope="module")
def demo_student_probes(faces_dev, tmp_path_factory):
    """Two photos each of 20 of the demo's probe identities (never seen by its student),
    aligned and embedded by dlib, at the student's 64 px."""
    from vec2face_tf.data import pipeline, prepare

    report = json.loads((demo.DEMO_DIR / "report.json").read_text())
    folder = tmp_path_factory.mktemp("demo_probes")
    for name in sorted(report["probe_identity_names"])[:20]:
        (folder / name).mkdir()
        for photo in sorted((faces_dev / name).glob("*.jpg"))[:2]:
            (folder / name / photo.name).symlink_to(photo)
    cache = tmp_path_factory.mktemp("demo_probe_cache")
    prepare.prepare(str(folder), "dlib", cache, workers=0, progress=False)
    return pipeline.load_faces(cache, "dlib", resolution=64), set(report["probe_identity_names"])


def test_demo_student_never_saw_the_probes_and_agrees_with_dlib_on_them(demo_student_probes):
    import tensorflow as tf

    from vec2face_tf.evaluation import student as student_evaluation

    faces, probes = demo_student_probes
    metadata = savedmodel.read_metadata(demo.student_dir())
    assert metadata["format"] == "vec2face_tf student" and metadata["engine"] == "dlib"
    assert (metadata["height"], metadata["embedding_dim"]) == (64, 128)
    assert not probes & set(metadata["train_identities"])
    signature = tf.saved_model.load(str(demo.student_dir())).signatures["serving_default"]
    vectors = signature(image=tf.constant(faces.crops))["embedding"].numpy()
    center = np.asarray(metadata["center"], np.float32)
    same = student_evaluation.agreement(vectors, faces.embeddings, center)
    # Another person's engine vector: what a student that ignored identity would match.
    other = student_evaluation.agreement(vectors, np.roll(faces.embeddings, 2, axis=0), center)
    print(f"\ndemo student on {len(faces)} probe photos: centred {same['centred_cosine']:.3f}"
          f" (raw {same['raw_cosine']:.4f}); against other people {other['centred_cosine']:.3f}")
    assert same["centred_cosine"] >= DEMO_STUDENT_CENTRED - 0.05
    assert other["centred_cosine"] < 0.2
    size = sum(p.stat().st_size for p in demo.student_dir().rglob("*") if p.is_file())
    assert size <= 15 * 2**20


@pytest.mark.slow
def test_a_wheel_ships_the_demo_generator_and_student_without_packaging_warnings(tmp_path):
    import pathlib
    import subprocess
    import sys
    import zipfile

    root = pathlib.Path(__file__).resolve().parents[1]
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(root), "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr[-3000:]
    # setuptools warns once per data folder it was not told about (about 150 lines before).
    assert "absent from the `packages` configuration" not in build.stdout + build.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("*.whl"))).namelist())
    for part in ("model", "student"):
        for file in ("saved_model.pb", "variables/variables.index",
                     "variables/variables.data-00000-of-00001", "assets/vec2face.json"):
            assert f"vec2face_tf/demo/{part}/{file}" in names, (part, file)
