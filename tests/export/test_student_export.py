"""The exported student: layout, the serving contract, parity with the Keras student, errors."""

import json

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.evaluation.reconstruction import from_uint8
from vec2face_tf.export import exporter, savedmodel
from vec2face_tf.export import student as student_export


@pytest.fixture(scope="module")
def student_run(tmp_path_factory):
    """A smoke run whose student stage is done (seeded, untrained weights with non-trivial
    batch-norm statistics, so that an export that ignored them would show it)."""
    import keras

    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    model_dir = tmp_path_factory.mktemp("student_run")
    config = config_lib.get_config("smoke")
    keras.utils.set_random_seed(4)
    parts = dibigan.build_parts(config, embedding_dim=128)
    rng = np.random.default_rng(0)
    for variable in parts.student.variables:
        if "moving_mean" in variable.path:
            variable.assign(rng.uniform(-0.1, 0.1, variable.shape).astype(np.float32))
        elif "moving_variance" in variable.path or "gamma" in variable.path:
            variable.assign(rng.uniform(0.5, 1.5, variable.shape).astype(np.float32))
    g_optimizer = keras.optimizers.Adam(use_ema=True, ema_momentum=0.9)
    g_optimizer.build(parts.generator.trainable_variables)
    checkpoint = dibigan.checkpoint_for(parts, g_optimizer=g_optimizer)
    tf.train.CheckpointManager(checkpoint, model_dir / "checkpoints", max_to_keep=1).save(1)
    (model_dir / "config.json").write_text(config.to_json())
    (model_dir / "run.json").write_text(json.dumps({
        "engine": "dlib", "embedding_dim": 128, "cache_dir": str(model_dir / "cache")}))
    (model_dir / "split.json").write_text(json.dumps({"train_identities": ["a", "b"],
                                                      "held_out_identities": ["c"]}))
    (model_dir / "center.json").write_text(json.dumps([0.01] * 128))
    (model_dir / config_lib.STUDENT_DONE_FILE).write_text("done\n")
    return model_dir, parts.student


@pytest.fixture(scope="module")
def exported(student_run, tmp_path_factory):
    model_dir, _ = student_run
    base = tmp_path_factory.mktemp("exports")
    written = exporter.export(model_dir, base, "m", formats="savedmodel")
    return base, written


def _faces(batch=5, size=32, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)


def test_savedmodel_export_writes_the_student_and_names_its_version(exported):
    base, written = exported
    assert written["student"] == str(base / "m" / "student" / "1")
    metadata = savedmodel.read_metadata(base / "m" / "1")
    assert metadata["student"] == {"version": 1, "path": "student/1"}
    student_metadata = savedmodel.read_metadata(base / "m" / "student" / "1")
    assert student_metadata["format"] == "vec2face_tf student"
    assert (student_metadata["engine"], student_metadata["embedding_dim"],
            student_metadata["height"]) == ("dlib", 128, 32)
    assert student_metadata["center"] == [0.01] * 128
    assert student_metadata["train_identities"] == ["a", "b"]
    # TF Serving serves the numeric version folders only; models.config names the model once.
    assert (base / "models.config").read_text().count("name:") == 1


def test_exported_student_loads_with_plain_tensorflow_and_matches_the_keras_student(
        student_run, exported):
    _, keras_student = student_run
    base, _ = exported
    loaded = tf.saved_model.load(str(base / "m" / "student" / "1"))
    signature = loaded.signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    assert list(inputs) == ["image"] and inputs["image"].dtype == tf.uint8
    assert inputs["image"].shape.as_list() == [None, 32, 32, 3]
    assert list(signature.structured_outputs) == ["embedding"]
    faces = _faces()
    vectors = signature(image=tf.constant(faces))["embedding"].numpy()
    assert vectors.shape == (5, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    expected = keras_student(from_uint8(faces), training=False).numpy()
    np.testing.assert_allclose(vectors, expected, atol=1e-5)
    # Different faces, different vectors (the signature is not a constant).
    assert np.abs(vectors[0] - vectors[1]).max() > 1e-3


@pytest.mark.parametrize("images, message", [
    (_faces(size=16), "image must be uint8\\[batch, 32, 32, 3\\]"),
    (_faces(batch=1)[0], "image must be uint8\\[batch, 32, 32, 3\\]"),
    (np.zeros((0, 32, 32, 3), np.uint8), "image batch is empty"),
])
def test_bad_images_get_a_named_error_through_the_loaded_signature(exported, images,
                                                                   message):
    base, _ = exported
    signature = tf.saved_model.load(str(base / "m" / "student" / "1")).signatures[
        "serving_default"]
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        signature(image=tf.constant(images))


def test_a_float_image_is_refused_by_the_signature_type(exported):
    base, _ = exported
    signature = tf.saved_model.load(str(base / "m" / "student" / "1")).signatures[
        "serving_default"]
    with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
        signature(image=tf.constant(from_uint8(_faces())))


def test_student_versions_are_monotonic_and_student_alone_is_exportable(student_run,
                                                                        tmp_path):
    model_dir, _ = student_run
    first = exporter.export(model_dir, tmp_path, "m", formats="student")
    second = exporter.export(model_dir, tmp_path, "m", formats="student")
    assert (first["version"], second["version"]) == (1, 2)
    assert not (tmp_path / "m" / "1").exists()  # no generator was written
    with pytest.raises(savedmodel.ExportError, match="exists"):
        student_export.write_student(*student_export.load_student(model_dir), tmp_path, "m",
                                     version=2)


def test_runs_without_a_distilled_image_student_are_refused(student_run, tmp_path):
    model_dir, _ = student_run
    flow_run = tmp_path / "flow"
    flow_run.mkdir()
    config = json.loads((model_dir / "config.json").read_text())
    config["student"]["kind"] = "flow"
    (flow_run / "config.json").write_text(json.dumps(config))
    with pytest.raises(savedmodel.ExportError, match="only an image student is exported"):
        student_export.load_student(flow_run)
    assert not student_export.has_student(flow_run)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(savedmodel.ExportError, match="has not finished its student stage"):
        student_export.load_student(unfinished)
    with pytest.raises(savedmodel.ExportError, match="not a training folder"):
        student_export.load_student(tmp_path / "nothing")


def test_embed_float_matches_serving_default_and_passes_gradients(exported):
    base, _ = exported
    loaded = tf.saved_model.load(str(base / "m" / "student" / "1"))
    assert set(loaded.signatures) == {"serving_default", "embed_float"}
    faces = _faces()
    expected = loaded.signatures["serving_default"](image=tf.constant(faces))["embedding"]
    vectors = loaded.signatures["embed_float"](image=tf.constant(from_uint8(faces)))
    np.testing.assert_allclose(vectors["embedding"].numpy(), expected.numpy(), atol=1e-6)
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError),
                       match="image must be float32\\[batch, 32, 32, 3\\]"):
        loaded.signatures["embed_float"](image=tf.constant(from_uint8(_faces(size=16))))
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="NaN or Inf"):
        loaded.signatures["embed_float"](image=tf.fill([1, 32, 32, 3], float("nan")))


def test_a_student_rebuilt_from_its_export_gives_the_same_vectors(exported, tmp_path):
    base, _ = exported
    model, metadata = student_export.load_exported_student(base / "m" / "student" / "1")
    written = student_export.write_student(model, metadata, tmp_path, "again")
    faces = tf.constant(_faces())
    vectors = [tf.saved_model.load(str(path)).signatures["serving_default"](image=faces)[
        "embedding"].numpy() for path in (base / "m" / "student" / "1", written.path)]
    np.testing.assert_array_equal(vectors[0], vectors[1])
    assert metadata["center"] == [0.01] * 128


def test_embed_float_passes_gradients_to_the_image(tmp_path):
    # A width-16 student: TF 2.21's oneDNN CPU kernels crash (double free) on the input
    # gradient of a 1x1 stride-2 convolution with <= 8 input channels, which the smoke
    # student's width 4 has; cpu64's width 32 does not (measured, benchmarks/NOTES.md).
    from vec2face_tf import config as config_lib
    from vec2face_tf.models import dibigan

    config = config_lib.get_config("smoke", ["student.width=16"])
    student_export.build_student_archive(dibigan.build_student(config, 128)).write_out(
        str(tmp_path / "student"), verbose=False)
    loaded = tf.saved_model.load(str(tmp_path / "student"))
    signature = loaded.signatures["embed_float"]
    floats = tf.constant(from_uint8(_faces()))
    with tf.GradientTape() as tape:
        tape.watch(floats)
        value = tf.reduce_sum(signature(image=floats)["embedding"][:, 0])
    gradient = tape.gradient(value, floats)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0
