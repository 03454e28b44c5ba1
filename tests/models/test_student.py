"""Tests for the student head C of S = C∘H."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.models.student import LatentLevelEncoder, StudentHead

# The flow's latents for a 16x16x3 image with 3 levels.
LATENT_SHAPES = [(8, 8, 6), (4, 4, 12), (2, 2, 48)]
EMBEDDING_DIM = 8
TINY = dict(latent_shapes=LATENT_SHAPES, embedding_dim=EMBEDDING_DIM, hidden_units=16,
            dropout=0.5)


def _latents(batch=3, seed=0, shapes=LATENT_SHAPES):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(batch, *shape)).astype("float32") for shape in shapes]


@pytest.fixture
def student():
    keras.utils.set_random_seed(3)
    model = StudentHead(**TINY)
    model.build([(None, *shape) for shape in LATENT_SHAPES])
    return model


def test_output_is_a_unit_vector_per_row(student):
    features = student(_latents()).numpy()
    assert features.shape == (3, EMBEDDING_DIM)
    assert features.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    # Different inputs give different directions.
    assert np.abs(features - student(_latents(seed=1)).numpy()).max() > 1e-3


def test_every_level_contributes(student):
    latents = _latents()
    base = student(latents).numpy()
    for level in range(len(LATENT_SHAPES)):
        changed = list(latents)
        changed[level] = changed[level] + 1.0
        assert np.abs(student(changed).numpy() - base).max() > 1e-4, level


@pytest.mark.parametrize("shapes, downsamples", [
    ([(32, 32, 6), (16, 16, 12), (8, 8, 48)], [3, 2, 1]),  # 64x64x3 with 3 levels.
    ([(5, 7, 2)], [1]),  # Odd sizes, one level.
    ([(4, 4, 3), (1, 1, 9)], [0, 0]),
])
def test_works_with_any_list_of_latent_shapes(shapes, downsamples):
    model = StudentHead(shapes, embedding_dim=4, hidden_units=8, dropout=0.0)
    for batch in (1, 2):
        features = model(_latents(batch=batch, shapes=shapes)).numpy()
        assert features.shape == (batch, 4)
        np.testing.assert_allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
    assert [encoder.downsamples for encoder in model.level_encoders] == downsamples


def test_dropout_only_in_training(student):
    latents = _latents()
    np.testing.assert_array_equal(student(latents).numpy(), student(latents).numpy())
    keras.utils.set_random_seed(0)
    first = student(latents, training=True).numpy()
    second = student(latents, training=True).numpy()
    assert np.abs(first - second).max() > 1e-4
    np.testing.assert_allclose(np.linalg.norm(first, axis=1), 1.0, atol=1e-5)


def test_level_encoder_pools_to_filters():
    encoder = LatentLevelEncoder(5, downsamples=2)
    assert encoder(np.ones((2, 16, 16, 3), "float32")).shape == (2, 5)
    assert LatentLevelEncoder.from_config(encoder.get_config()).downsamples == 2


@pytest.mark.parametrize("kwargs, message", [
    (dict(latent_shapes=[]), "at least one"),
    (dict(latent_shapes=[(8, 8)]), "latent_shapes\\[0\\] must be three positive ints"),
    (dict(latent_shapes=[(8, 0, 6)]), "latent_shapes\\[0\\]"),
    (dict(embedding_dim=0), "embedding_dim"),
    (dict(dropout=1.0), "dropout"),
    (dict(level_channels=0), "level_channels"),
])
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StudentHead(**{**TINY, **kwargs})


def test_bad_latents_raise(student):
    latents = _latents()
    with pytest.raises(ValueError, match="expects 3 latent levels, got 2"):
        student(latents[:2])
    with pytest.raises(ValueError, match="latent level 0 must have shape \\[batch, 8, 8, 6\\]"):
        student([latents[1], latents[0], latents[2]])
    with pytest.raises(ValueError, match="list of latent tensors"):
        StudentHead(**TINY)(latents[0])


def test_get_config_round_trip(student):
    latents = _latents()
    clone = StudentHead.from_config(student.get_config())
    clone.build([(None, *shape) for shape in LATENT_SHAPES])
    clone.set_weights(student.get_weights())
    assert clone.get_config() == student.get_config()
    np.testing.assert_allclose(clone(latents).numpy(), student(latents).numpy(), atol=1e-6)


def test_keras_file_round_trip(student, tmp_path):
    latents = _latents()
    path = tmp_path / "student.keras"
    student.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, StudentHead)
    np.testing.assert_allclose(loaded(latents).numpy(), student(latents).numpy(), atol=1e-6)


def test_mixed_float16_policy_gives_float32_unit_vectors(mixed_precision):
    model = StudentHead(**TINY)
    features = model(_latents())
    assert model.level_encoders[0].convs[0].compute_dtype == "float16"
    assert features.dtype == tf.float32
    np.testing.assert_allclose(np.linalg.norm(features.numpy(), axis=1), 1.0, atol=1e-4)


def test_adam_steps_change_weights_and_raise_cosine_to_targets(student):
    latents = _latents(batch=4)
    rng = np.random.default_rng(9)
    targets = rng.normal(size=(4, EMBEDDING_DIM)).astype("float32")
    targets /= np.linalg.norm(targets, axis=1, keepdims=True)
    optimizer = keras.optimizers.Adam(1e-2)
    before = [w.numpy().copy() for w in student.trainable_weights]

    def distillation_loss(training):
        return 1.0 - tf.reduce_mean(tf.reduce_sum(student(latents, training=training) * targets,
                                                  axis=1))

    initial = float(distillation_loss(False))
    for _ in range(20):
        with tf.GradientTape() as tape:
            loss = distillation_loss(True)
        gradients = tape.gradient(loss, student.trainable_weights)
        optimizer.apply_gradients(zip(gradients, student.trainable_weights))
    final = float(distillation_loss(False))
    assert final < 0.5 * initial
    assert all(not np.array_equal(b, w.numpy())
               for b, w in zip(before, student.trainable_weights))


def test_student_composes_with_the_flow():
    from vec2face_tf.models.flow import BijectiveFlow

    flow = BijectiveFlow(image_shape=(8, 8, 3), levels=2, steps_per_level=1, hidden_channels=4,
                         seed=0)
    images = tf.random.stateless_uniform((2, 8, 8, 3), seed=(1, 2), minval=-0.5, maxval=0.5)
    head = StudentHead(flow.latent_shapes, embedding_dim=4, hidden_units=8, dropout=0.0)
    with tf.GradientTape() as tape:
        latents, _ = flow.forward(images)
        features = head(latents)
        loss = tf.reduce_sum(features[:, 0])
    np.testing.assert_allclose(np.linalg.norm(features.numpy(), axis=1), 1.0, atol=1e-5)
    # S = C∘H is trained end to end in stage 1: the gradient reaches every flow variable.
    gradients = tape.gradient(loss, flow.trainable_variables)
    assert gradients and all(g is not None for g in gradients)
    assert max(float(tf.reduce_max(tf.abs(g))) for g in gradients) > 0
