import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from vec2face_tf import demo
from vec2face_tf.data.alignment import FaceAligner
from vec2face_tf.evaluation import invert
from vec2face_tf.evaluation.invert import InvertError

D, Z, SIZE = 128, 8, 32
REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _thresholds(cosine):
    return {"fmr": {"0.01": {"cosine": cosine - 0.1, "impostor_pairs": 21_000,
                             "false_matches": 210},
                    "0.001": {"cosine": cosine, "impostor_pairs": 21_000,
                              "false_matches": 21}},
            "faces": 210, "identities": 70, "genuine_pairs": 210, "source": "test"}


def _export_copy(smoke_export, folder, **changes):
    """A copy of the smoke export whose vec2face.json has ``changes`` applied."""
    copy = folder / "model" / "1"
    shutil.copytree(smoke_export.path, copy)
    metadata_file = copy / "assets" / "vec2face.json"
    metadata = json.loads(metadata_file.read_text())
    metadata.update(changes)
    metadata_file.write_text(json.dumps(metadata))
    return copy


@pytest.fixture(scope="module")
def passing_model(smoke_export, tmp_path_factory):
    """Every reconstruction passes: the threshold at FMR 1e-3 is -1."""
    return _export_copy(smoke_export, tmp_path_factory.mktemp("passing"),
                        thresholds=_thresholds(-1.0))


@pytest.fixture(scope="module")
def failing_model(smoke_export, tmp_path_factory):
    """No reconstruction passes: the threshold at FMR 1e-3 is 1."""
    return _export_copy(smoke_export, tmp_path_factory.mktemp("failing"),
                        thresholds=_thresholds(1.0))


@pytest.fixture(scope="module")
def aligner():
    return FaceAligner()


@pytest.fixture(scope="module")
def loaded(smoke_export):
    return tf.saved_model.load(str(smoke_export.path))


def _read_png(path):
    return np.asarray(Image.open(path))


def _own_cosine(dlib, png, template):
    """The cosine recomputed from the written PNG, as a user would."""
    unit = np.asarray(template, np.float64).ravel()
    unit /= np.linalg.norm(unit)
    return float(dlib.embed(_read_png(png)[None])[0] @ unit)


def _serve(loaded, template):
    embedding = tf.constant(np.asarray(template, np.float32).reshape(1, D))
    return loaded.signatures["serving_default"](embedding=embedding)["image"].numpy()[0]


def _template(path):
    return np.asarray(json.loads(pathlib.Path(path).read_text())["embedding"], np.float32)


def test_npy_vector_end_to_end_passes_a_low_threshold(passing_model, real_faces, dlib, loaded,
                                                      tmp_path):
    # A raw engine vector need not be unit length, and may be a [1, D] row.
    raw = 3.0 * real_faces.embeddings[:1]
    np.save(tmp_path / "template.npy", raw)
    result = invert.invert(passing_model, tmp_path / "out", vector=tmp_path / "template.npy")

    out = tmp_path / "out"
    reconstruction = _read_png(out / "reconstruction.png")
    assert reconstruction.shape == (SIZE, SIZE, 3) and reconstruction.dtype == np.uint8
    np.testing.assert_array_equal(reconstruction, _serve(loaded, raw))
    assert result["cosine"] == pytest.approx(
        _own_cosine(dlib, out / "reconstruction.png", raw), abs=1e-5)
    assert result["passes"] is True and result["threshold"] == -1.0
    assert result["fmr"] == 1e-3 and result["impostor_pairs"] == 21_000
    assert result["input"] == {"kind": "vector", "path": str(tmp_path / "template.npy"),
                               "faces_found": None, "note": None}
    assert result["model"] == str(passing_model) and result["engine"] == "dlib"
    assert json.loads((out / "result.json").read_text()) == result
    np.testing.assert_array_equal(_template(out / "template.json"), raw[0])
    side_by_side = _read_png(out / "side_by_side.png")
    assert side_by_side.shape[0] > 2 * SIZE and side_by_side.shape[2] == 3
    assert "samples.png" not in os.listdir(out) and result["samples"] is None
    assert "PASS at FMR 1e-3" in invert.summary(result)


def test_json_vector_with_its_engine_fails_a_high_threshold(failing_model, real_faces, dlib,
                                                            tmp_path):
    template = real_faces.embeddings[1]
    (tmp_path / "template.json").write_text(json.dumps(
        {"embedding": template.tolist(), "engine": "dlib"}))
    result = invert.invert(failing_model, tmp_path / "out", vector=tmp_path / "template.json")

    assert result["cosine"] == pytest.approx(
        _own_cosine(dlib, tmp_path / "out" / "reconstruction.png", template), abs=1e-5)
    assert result["passes"] is False and result["threshold"] == 1.0
    text = invert.summary(result)
    assert f"{result['cosine']:.4f}" in text
    assert "FAIL at FMR 1e-3" in text and "threshold 1.0000 (from 21,000 impostor pairs)" in text


def test_plain_json_list_and_model_base_without_thresholds(smoke_export, real_faces, dlib,
                                                           tmp_path):
    (tmp_path / "template.json").write_text(json.dumps(real_faces.embeddings[2].tolist()))
    result = invert.invert(smoke_export.path.parent, tmp_path / "out",
                           vector=tmp_path / "template.json")

    assert result["model"] == str(smoke_export.path)  # the base resolved to its version
    assert result["cosine"] == pytest.approx(_own_cosine(
        dlib, tmp_path / "out" / "reconstruction.png", real_faces.embeddings[2]), abs=1e-5)
    assert result["passes"] is None and result["threshold"] is None
    assert "no thresholds" in result["decision_note"]
    assert "pass/fail at FMR 1e-3 cannot be decided" in invert.summary(result)


def test_photo_is_aligned_embedded_and_inverted(faces_dev, passing_model, dlib, aligner, loaded,
                                                tmp_path):
    photo = sorted(faces_dev.glob("*/*.jpg"))[0]
    result = invert.invert(passing_model, tmp_path / "out", image=photo)

    crop = aligner.align(np.asarray(Image.open(photo).convert("RGB"))).crop
    expected = dlib.embed(crop[None])[0]
    template = _template(tmp_path / "out" / "template.json")
    np.testing.assert_allclose(template, expected, atol=1e-6)
    reconstruction = tmp_path / "out" / "reconstruction.png"
    np.testing.assert_array_equal(_read_png(reconstruction), _serve(loaded, expected))
    assert result["cosine"] == pytest.approx(_own_cosine(dlib, reconstruction, template),
                                             abs=1e-5)
    assert result["input"] == {"kind": "image", "path": str(photo), "faces_found": 1,
                               "note": None}
    # The written template is valid --vector input and inverts to the same face.
    again = invert.invert(passing_model, tmp_path / "again",
                          vector=tmp_path / "out" / "template.json")
    np.testing.assert_array_equal(_read_png(tmp_path / "again" / "reconstruction.png"),
                                  _read_png(reconstruction))
    assert again["cosine"] == pytest.approx(result["cosine"], abs=1e-6)


def test_skimage_astronaut(smoke_export, dlib, tmp_path):
    result = invert.invert(smoke_export.path, tmp_path, image="skimage:astronaut")

    assert result["input"]["faces_found"] == 1 and result["input"]["path"] == \
        "skimage:astronaut"
    assert result["cosine"] == pytest.approx(_own_cosine(
        dlib, tmp_path / "reconstruction.png", _template(tmp_path / "template.json")), abs=1e-5)
    side_by_side = _read_png(tmp_path / "side_by_side.png")
    assert side_by_side.shape[1] > side_by_side.shape[0]  # [aligned input | reconstruction]


def test_the_largest_of_several_faces_is_inverted_with_a_note(faces_dev, smoke_export, dlib,
                                                               aligner, tmp_path):
    photos = sorted(faces_dev.glob("*/*.jpg"))
    large = Image.open(photos[0]).convert("RGB").resize((375, 375))
    small = Image.open(photos[-1]).convert("RGB")
    canvas = Image.new("RGB", (625, 375), (128, 128, 128))
    canvas.paste(large, (0, 0))
    canvas.paste(small, (375, 60))
    canvas.save(tmp_path / "two.png")
    result = invert.invert(smoke_export.path, tmp_path / "out", image=tmp_path / "two.png")

    assert result["input"]["faces_found"] == 2
    assert result["input"]["note"] == f"2 faces found in {tmp_path / 'two.png'}; inverted the " \
        "largest"
    assert "note: 2 faces found" in invert.summary(result)
    template = _template(tmp_path / "out" / "template.json")
    large_vector = dlib.embed(aligner.align(np.asarray(large)).crop[None])[0]
    small_vector = dlib.embed(aligner.align(np.asarray(small)).crop[None])[0]
    assert template @ large_vector > 0.99
    assert template @ small_vector < 0.95


def test_photo_without_a_face(smoke_export, tmp_path):
    Image.new("RGB", (200, 200), (128, 128, 128)).save(tmp_path / "grey.png")
    with pytest.raises(InvertError, match=f"^no face found in {tmp_path / 'grey.png'}$"):
        invert.invert(smoke_export.path, tmp_path / "out", image=tmp_path / "grey.png")
    assert not (tmp_path / "out").exists()


def test_unreadable_photos_are_named(faces_dev, smoke_export, tmp_path):
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sorted(faces_dev.glob("*/*.jpg"))[0].read_bytes()[:400])
    (tmp_path / "notes.jpg").write_text("not a photo")
    (tmp_path / "empty.png").write_bytes(b"")
    cases = {
        str(truncated): f"cannot decode photo {truncated}: corrupt: ",
        str(tmp_path / "notes.jpg"): "not an image format that Pillow reads",
        str(tmp_path / "empty.png"): "the file is empty",
        str(tmp_path / "missing.jpg"): "does not exist",
        str(tmp_path): "is not a file",
        "skimage:nonexistent": "not a scikit-image sample image",
        "skimage:download_all": "not a scikit-image sample image",
    }
    for photo, message in cases.items():
        with pytest.raises(InvertError) as error:
            invert.invert(smoke_export.path, tmp_path / "out", image=photo)
        assert message in str(error.value), photo


def test_samples_follow_the_seed_and_differ(smoke_export, real_faces, dlib, loaded, tmp_path):
    template = real_faces.embeddings[3]
    np.save(tmp_path / "template.npy", template)
    result = invert.invert(smoke_export.path, tmp_path / "out", vector=tmp_path / "template.npy",
                           samples=3, seed=5)

    out = tmp_path / "out"
    assert _read_png(out / "samples.png").shape[1] > 3 * SIZE
    noise = np.random.default_rng(5).standard_normal((3, Z)).astype(np.float32)
    expected = loaded.signatures["sample"](embedding=tf.constant(np.repeat(template[None], 3, 0)),
                                           noise=tf.constant(noise))["image"].numpy()
    faces = np.stack([_read_png(out / f"sample_{i}.png") for i in (1, 2, 3)])
    np.testing.assert_array_equal(faces, expected)
    reconstruction = _read_png(out / "reconstruction.png").astype(int)
    for first in range(3):
        assert np.abs(faces[first].astype(int) - reconstruction).mean() > 2
        for second in range(first + 1, 3):
            assert np.abs(faces[first].astype(int) - faces[second].astype(int)).mean() > 2
    report = result["samples"]
    assert report["count"] == 3 and report["seed"] == 5 and report["passes"] is None
    own = [_own_cosine(dlib, out / f"sample_{i}.png", template) for i in (1, 2, 3)]
    np.testing.assert_allclose(report["cosines"], own, atol=1e-5)
    assert len(set(report["cosines"])) == 3


def _write_vector(path, values):
    if path.suffix == ".npy":
        np.save(path, np.asarray(values, np.float32))
    else:
        path.write_text(json.dumps(values))
    return path


@pytest.mark.parametrize("name, values, message", [
    ("short.npy", np.ones(64), "^vector has 64 values but this model inverts dlib vectors of "
                               "D=128$"),
    ("short.json", [1.0] * 64, "vector has 64 values but this model inverts dlib vectors"),
    ("arcface.json", {"embedding": [1.0] * D, "engine": "deepface:ArcFace"},
     "engine 'deepface:ArcFace', but this model inverts 'dlib' vectors"),
    ("nan.npy", np.r_[np.nan, np.ones(D - 1)], "NaN or Inf \\(as float32\\) in row\\(s\\) \\[0\\]"),
    ("inf.json", [1.0] * (D - 1) + [1e300], "NaN or Inf \\(as float32\\)"),
    ("zero.npy", np.zeros(D), "all-zero row\\(s\\) \\[0\\], which have no direction to invert"),
    ("two.npy", np.ones((2, D)), "holds 2 vectors; invert one template at a time"),
    ("cube.npy", np.ones((1, 1, D)), "must be a \\[128\\] or \\[1, 128\\] vector"),
    ("words.json", ["a"] * D, "must hold only numbers, found 'a'"),
    ("flags.json", [True] * D, "must hold only numbers, found True"),
    ("object.json", {"vector": [1.0] * D}, "an object with an \"embedding\" list"),
    ("vector.txt", "1 2 3", "must end in .npy or .json"),
])
def test_bad_vectors_are_named(smoke_export, tmp_path, name, values, message):
    path = tmp_path / name
    if path.suffix == ".txt":
        path.write_text(values)
    else:
        _write_vector(path, values)
    with pytest.raises(InvertError, match=message):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)
    assert not (tmp_path / "out").exists()


def test_bad_arguments_are_named(smoke_export, tmp_path):
    vector = _write_vector(tmp_path / "v.npy", np.ones(D))
    with pytest.raises(InvertError, match="exactly one of --image"):
        invert.invert(smoke_export.path, tmp_path, image="skimage:astronaut", vector=vector)
    with pytest.raises(InvertError, match="exactly one of --image"):
        invert.invert(smoke_export.path, tmp_path)
    for samples in (-1, 17, 1.5):
        with pytest.raises(InvertError, match="samples must be an integer from 0 to 16"):
            invert.invert(smoke_export.path, tmp_path, vector=vector, samples=samples)
    for queries in (-1, 2.5, True):
        with pytest.raises(InvertError, match="queries must be an integer >= 0"):
            invert.invert(smoke_export.path, tmp_path, vector=vector, queries=queries)
    with pytest.raises(InvertError, match="--stop_at must be 'fmr=<rate>'"):
        invert.invert(smoke_export.path, tmp_path, vector=vector, queries=5, stop_at="far=1")
    with pytest.raises(InvertError, match="no threshold at FMR 1e-06"):
        invert.invert(smoke_export.path, tmp_path, vector=vector, queries=5,
                      stop_at="fmr=1e-6")
    with pytest.raises(InvertError, match="missing.*does not exist"):
        invert.invert(smoke_export.path, tmp_path, vector=tmp_path / "missing.npy")
    with pytest.raises(InvertError, match="holds no SavedModel"):
        invert.invert(tmp_path / "nowhere", tmp_path, vector=vector)


def test_missing_demo_model_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "MODEL_DIR", tmp_path / "model")
    with pytest.raises(InvertError, match="demo model is not bundled.*pass --model="):
        invert.invert(None, tmp_path / "out", image="skimage:astronaut")


def test_an_engine_that_cannot_load_costs_only_the_score(smoke_export, tmp_path):
    model = _export_copy(smoke_export, tmp_path, engine="onnx:/nonexistent/engine.onnx",
                         thresholds=_thresholds(0.5))
    vector = _write_vector(tmp_path / "v.npy", np.linspace(-1, 1, D))
    # The default refinement queries the engine: without it, the feed-forward face is written.
    result = invert.invert(model, tmp_path / "out", vector=vector, samples=2, queries=50)

    assert _read_png(tmp_path / "out" / "reconstruction.png").shape == (SIZE, SIZE, 3)
    assert result["refinement"] is None
    assert result["refinement_note"].startswith("no query refinement: it queries the model's")
    assert result["cosine"] is None and result["passes"] is None
    assert result["samples"]["cosines"] is None and result["samples"]["passes"] is None
    assert "could not be loaded" in result["score_note"]
    assert "/nonexistent/engine.onnx does not exist" in result["score_note"]
    assert result["threshold"] == 0.5  # still reported
    text = invert.summary(result)
    assert "no cosine: the engine" in text and "cannot be decided" in text
    assert "no query refinement" in text
    # A photo cannot even be embedded without the engine.
    with pytest.raises(InvertError, match="must be embedded by the model's engine"):
        invert.invert(model, tmp_path / "photo", image="skimage:astronaut")


def test_pass_fail_is_strictly_above_the_threshold():
    thresholds = _thresholds(0.6)
    assert invert.pass_fail(0.6001, thresholds)["passes"] is True
    assert invert.pass_fail(0.6, thresholds)["passes"] is False
    assert invert.pass_fail(0.5999, thresholds)["passes"] is False
    decision = invert.pass_fail(0.9, thresholds)
    assert decision["threshold"] == 0.6 and decision["impostor_pairs"] == 21_000
    assert decision["false_matches"] == 21 and decision["threshold_source"] == "test"
    assert invert.pass_fail(0.9, None)["passes"] is None
    del thresholds["fmr"]["0.001"]
    too_few = invert.pass_fail(0.9, thresholds)
    assert too_few["passes"] is None and too_few["threshold"] is None
    assert "no entry at FMR 1e-3" in too_few["decision_note"]
    assert "'0.01'" in too_few["decision_note"]


@pytest.mark.slow  # two interpreters that import TensorFlow: ~13 s
def test_the_binary_prints_the_verdict_and_exits_on_errors(passing_model, real_faces, tmp_path):
    np.save(tmp_path / "template.npy", real_faces.embeddings[4])
    np.save(tmp_path / "short.npy", np.ones(64, np.float32))
    binary = [sys.executable, str(REPO_ROOT / "train" / "invert.py"),
              f"--model={passing_model}", f"--out={tmp_path / 'out'}"]
    done = subprocess.run(binary + [f"--vector={tmp_path / 'template.npy'}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    # Refinement is on by default; this model's thresholds stop at FMR 1e-3 (-1.0), so the
    # feed-forward face passes its target at once: one query.
    refined = result["refinement"]
    assert refined["queries"] == 1 and refined["stopped"] == "target"
    assert "the model has no threshold at FMR 0.0001" in refined["stop_at"]
    assert (f"feed-forward {refined['feed_forward_cosine']:.4f} -> refined "
            f"{result['cosine']:.4f}") in done.stdout
    assert "PASS at FMR 1e-3" in done.stdout
    plain = subprocess.run(binary + [f"--vector={tmp_path / 'template.npy'}", "--queries=0"],
                           capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["refinement"] is None
    assert f"cosine (input vs reconstruction, dlib): {result['cosine']:.4f}" in plain.stdout

    failed = subprocess.run(binary + [f"--vector={tmp_path / 'short.npy'}"],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1] == (
        "error: vector has 64 values but this model inverts dlib vectors of D=128")


def test_an_engine_that_fails_during_refinement_is_one_clear_error(smoke_export, tmp_path,
                                                                   monkeypatch):
    from vec2face_tf.engines import EngineError

    class FailingEngine:
        dim = D

        def embed(self, images):
            raise EngineError("the engine's worker died")

        def close(self):
            pass

    monkeypatch.setattr(invert, "_load_engine", lambda metadata: FailingEngine())
    vector = _write_vector(tmp_path / "v.npy", np.linspace(-1, 1, D))
    with pytest.raises(InvertError, match="query refinement failed: the engine's worker died"):
        invert.invert(smoke_export.path, tmp_path / "out", vector=vector, queries=5)
