import json

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.export import savedmodel
from vec2face_tf.models import dibigan

D, Z, SIZE = 128, 8, 32


@pytest.fixture(scope="module")
def loaded(smoke_export):
    return tf.saved_model.load(str(smoke_export.path))


def _unit_rows(count, seed=0):
    rows = np.random.default_rng(seed).standard_normal((count, D)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _max_level_diff(first, second):
    return np.abs(first.astype(int) - second.astype(int)).max()


def _serve(loaded, embedding):
    return loaded.signatures["serving_default"](embedding=tf.constant(embedding))["image"].numpy()


def test_signatures_follow_the_contract(loaded, smoke_export):
    assert set(loaded.signatures) == {"serving_default", "sample", "sample_float"}
    serving = loaded.signatures["serving_default"]
    assert serving.structured_input_signature[1] == {
        "embedding": tf.TensorSpec([None, D], tf.float32, name="embedding")}
    assert serving.structured_outputs["image"].dtype == tf.uint8
    assert serving.structured_outputs["image"].shape.as_list() == [None, SIZE, SIZE, 3]
    sample = loaded.signatures["sample"]
    assert sample.structured_input_signature[1] == {
        "embedding": tf.TensorSpec([None, D], tf.float32, name="embedding"),
        "noise": tf.TensorSpec([None, Z], tf.float32, name="noise")}
    assert smoke_export.path.name == "1" and smoke_export.version == 1


def test_serving_default_is_the_ema_generator_at_zero_noise(loaded, smoke_run):
    embedding = _unit_rows(3)
    image = _serve(loaded, embedding)
    assert image.shape == (3, SIZE, SIZE, 3) and image.dtype == np.uint8
    ema = dibigan.load_ema_generator(smoke_run, D)
    expected = ema([embedding, np.zeros((3, Z), np.float32)], training=False)
    # One grey level of slack: a value on a rounding boundary may fall either way.
    assert _max_level_diff(image, savedmodel.to_uint8_image(expected).numpy()) <= 1
    assert len(np.unique(image)) > 20  # a real image, not a constant


def test_the_live_generator_is_not_what_is_exported(loaded, smoke_run):
    import json as json_lib

    import keras

    from vec2face_tf import config as config_lib

    config = config_lib.config_from_dict(json_lib.loads((smoke_run / "config.json").read_text()))
    parts = dibigan.build_parts(config, D)
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build(parts.generator.trainable_variables)
    dibigan.checkpoint_for(parts, g_optimizer=optimizer).restore(
        tf.train.latest_checkpoint(str(smoke_run / "checkpoints"))).expect_partial()
    embedding = _unit_rows(2)
    live = parts.generator([embedding, np.zeros((2, Z), np.float32)], training=False)
    diff = np.abs(_serve(loaded, embedding).astype(int)
                  - savedmodel.to_uint8_image(live).numpy().astype(int))
    assert diff.max() > 10


def test_raw_engine_vectors_are_normalised_inside(loaded):
    embedding = _unit_rows(2, seed=1)
    assert _max_level_diff(_serve(loaded, embedding), _serve(loaded, 7.5 * embedding)) <= 1


def test_sample_at_zero_noise_matches_serving_and_noise_changes_the_face(loaded):
    embedding = _unit_rows(2, seed=2)
    sample = loaded.signatures["sample"]
    zero = sample(embedding=tf.constant(embedding),
                  noise=tf.zeros([2, Z]))["image"].numpy()
    np.testing.assert_array_equal(zero, _serve(loaded, embedding))
    noisy = sample(embedding=tf.constant(embedding),
                   noise=tf.random.stateless_normal([2, Z], [1, 2]))["image"].numpy()
    assert np.abs(noisy.astype(int) - zero.astype(int)).mean() > 0.5


@pytest.mark.parametrize("embedding, message", [
    (np.full((2, D), np.nan, np.float32), "NaN or Inf"),
    (np.full((1, D), np.inf, np.float32), "NaN or Inf"),
    (np.zeros((2, D), np.float32), "all-zero row"),
    (np.zeros((0, D), np.float32), "batch is empty"),
    (np.ones((2, 64), np.float32), "embedding (engine dimension D) must be float32[batch, 128]"),
    (np.ones((D,), np.float32), "must be float32[batch, 128]"),
    (np.ones((2, 1, D), np.float32), "must be float32[batch, 128]"),
    (np.ones((2, D, 1), np.float32), "must be float32[batch, 128]"),
    (np.float32(1.0), "must be float32[batch, 128]"),
])
def test_bad_embeddings_fail_through_the_loaded_signature(loaded, embedding, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=r".*" + _literal(message)):
        _serve(loaded, embedding)


def test_bad_noise_fails_through_the_sample_signature(loaded):
    sample = loaded.signatures["sample"]
    embedding = tf.constant(_unit_rows(2))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"noise \(noise dimension Z\)"):
        sample(embedding=embedding, noise=tf.zeros([2, Z + 1]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="same batch size"):
        sample(embedding=embedding, noise=tf.zeros([3, Z]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="noise contains NaN"):
        sample(embedding=embedding, noise=tf.fill([2, Z], np.nan))


def _literal(text):
    import re

    return re.escape(text)


def test_metadata_asset(smoke_export, smoke_run):
    metadata = savedmodel.read_metadata(smoke_export.path)
    assert metadata == json.loads((smoke_export.path / "assets" / "vec2face.json").read_text())
    assert (metadata["engine"], metadata["embedding_dim"], metadata["height"],
            metadata["width"], metadata["noise_dim"]) == ("dlib", D, SIZE, SIZE, Z)
    assert metadata["crop"] == {"method": "dlib_5point", "size": 150, "padding": 0.25}
    assert metadata["training_config"] == json.loads((smoke_run / "config.json").read_text())
    import vec2face_tf

    assert metadata["package_version"] == vec2face_tf.__version__


def test_versions_are_monotonic_and_never_overwritten(smoke_run, tmp_path):
    generator, metadata = savedmodel.load_run(smoke_run)
    first = savedmodel.write_savedmodel(generator, metadata, tmp_path, "faces")
    second = savedmodel.write_savedmodel(generator, metadata, tmp_path, "faces")
    assert (first.version, second.version) == (1, 2)
    stamp = (first.path / "saved_model.pb").stat().st_mtime_ns
    with pytest.raises(savedmodel.ExportError, match="never overwrites"):
        savedmodel.write_savedmodel(generator, metadata, tmp_path, "faces", version=1)
    assert (first.path / "saved_model.pb").stat().st_mtime_ns == stamp
    tenth = savedmodel.write_savedmodel(generator, metadata, tmp_path, "faces", version=10)
    assert savedmodel.write_savedmodel(generator, metadata, tmp_path, "faces").version == 11
    assert sorted(p.name for p in (tmp_path / "faces").iterdir()) == ["1", "10", "11", "2"]
    assert savedmodel.resolve_version_dir(tmp_path / "faces") == tmp_path / "faces" / "11"
    assert savedmodel.resolve_version_dir(tenth.path) == tenth.path


def test_models_config_lists_every_exported_model(smoke_run, tmp_path):
    generator, metadata = savedmodel.load_run(smoke_run)
    savedmodel.write_savedmodel(generator, metadata, tmp_path, "b_model")
    savedmodel.write_savedmodel(generator, metadata, tmp_path, "a_model")
    (tmp_path / "not_a_model").mkdir()
    assert (tmp_path / "models.config").read_text() == (
        "model_config_list {\n"
        '  config {\n    name: "a_model"\n    base_path: "/models/a_model"\n'
        '    model_platform: "tensorflow"\n  }\n'
        '  config {\n    name: "b_model"\n    base_path: "/models/b_model"\n'
        '    model_platform: "tensorflow"\n  }\n'
        "}\n")


@pytest.mark.parametrize("name", ["", "../up", "a b", "x/y", ".hidden"])
def test_bad_model_names_are_rejected(smoke_run, tmp_path, name):
    with pytest.raises(savedmodel.ExportError, match="model name"):
        savedmodel.check_model_name(name)


def test_load_run_needs_a_training_folder_with_a_checkpoint(tmp_path, smoke_run):
    with pytest.raises(savedmodel.ExportError, match="no config.json"):
        savedmodel.load_run(tmp_path)
    (tmp_path / "config.json").write_text((smoke_run / "config.json").read_text())
    with pytest.raises(savedmodel.ExportError, match="no checkpoint"):
        savedmodel.load_run(tmp_path)


def test_read_metadata_and_resolve_reject_other_folders(tmp_path):
    with pytest.raises(savedmodel.ExportError, match="not a vec2face_tf export"):
        savedmodel.read_metadata(tmp_path)
    with pytest.raises(savedmodel.ExportError, match="holds no SavedModel"):
        savedmodel.resolve_version_dir(tmp_path)


def test_thresholds_come_from_the_runs_cache(smoke_run, real_faces_cache, real_faces,
                                             tmp_path):
    import shutil

    from vec2face_tf.evaluation import metrics

    run = tmp_path / "run"
    shutil.copytree(smoke_run, run)
    (run / "run.json").write_text(json.dumps({"engine": "dlib", "embedding_dim": D,
                                              "cache_dir": str(real_faces_cache)}))
    _, metadata = savedmodel.load_run(run)
    thresholds = metadata["thresholds"]
    _, impostor = metrics.pair_scores(real_faces.embeddings, real_faces.labels)
    # 210 faces of 70 people: 21,735 - 210 impostor pairs support 1e-2 and 1e-3, not 1e-4.
    assert set(thresholds["fmr"]) == {"0.01", "0.001"}
    assert thresholds["fmr"]["0.001"]["impostor_pairs"] == len(impostor)
    assert thresholds["fmr"]["0.001"]["cosine"] == pytest.approx(
        metrics.threshold_at_fmr(impostor, 1e-3).value)
    assert (thresholds["faces"], thresholds["identities"]) == (len(real_faces), 70)
    assert savedmodel.load_run(smoke_run)[1]["thresholds"] is None  # no cache, no thresholds


def test_each_weight_is_saved_once(smoke_export, smoke_run):
    generator, _ = savedmodel.load_run(smoke_run)
    weight_bytes = 4 * generator.count_params()
    data = sum(p.stat().st_size for p in (smoke_export.path / "variables").glob("*.data*"))
    assert weight_bytes <= data < 1.05 * weight_bytes


def test_sample_float_is_sample_before_rounding_and_passes_gradients(loaded):
    embedding = _unit_rows(3, seed=7)
    noise = np.random.default_rng(8).standard_normal((3, Z)).astype(np.float32)
    signature = loaded.signatures["sample_float"]
    assert signature.structured_input_signature[1] == {
        "embedding": tf.TensorSpec([None, D], tf.float32, name="embedding"),
        "noise": tf.TensorSpec([None, Z], tf.float32, name="noise")}
    faces = signature(embedding=tf.constant(embedding), noise=tf.constant(noise))["image"]
    assert faces.dtype == tf.float32 and faces.shape == (3, SIZE, SIZE, 3)
    assert float(tf.reduce_min(faces)) >= -1.0 and float(tf.reduce_max(faces)) <= 1.0
    rounded = loaded.signatures["sample"](embedding=tf.constant(embedding),
                                          noise=tf.constant(noise))["image"].numpy()
    np.testing.assert_array_equal(savedmodel.to_uint8_image(faces).numpy(), rounded)
    inputs = [tf.constant(embedding), tf.constant(noise)]
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        value = tf.reduce_mean(signature(embedding=inputs[0], noise=inputs[1])["image"])
    gradients = tape.gradient(value, inputs)
    assert all(g is not None and float(tf.reduce_max(tf.abs(g))) > 0 for g in gradients)


def test_an_export_rebuilt_from_its_own_weights_gives_the_same_faces(loaded, smoke_export,
                                                                     tmp_path):
    generator, metadata = savedmodel.load_exported_generator(smoke_export.path)
    assert metadata["signatures"] == savedmodel.read_metadata(smoke_export.path)["signatures"]
    written = savedmodel.write_savedmodel(generator, metadata, tmp_path, "again")
    again = tf.saved_model.load(str(written.path))
    embedding = _unit_rows(4, seed=3)
    noise = np.random.default_rng(4).standard_normal((4, Z)).astype(np.float32)
    for name in ("sample", "sample_float"):
        np.testing.assert_array_equal(
            again.signatures[name](embedding=embedding, noise=noise)["image"].numpy(),
            loaded.signatures[name](embedding=embedding, noise=noise)["image"].numpy())


def test_rebuilding_from_another_architecture_is_a_named_error(smoke_export):
    import keras

    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, name="dense")],
                             name="generator")
    with pytest.raises(savedmodel.ExportError, match="has no weight generator/dense"):
        savedmodel.restore_exported_weights(other, smoke_export.path)
