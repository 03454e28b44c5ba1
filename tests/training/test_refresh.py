"""The student refresh: engine queries only through numpy, and it closes the student-teacher
gap on generated images."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf import config as config_lib
from vec2face_tf.engines.base import Engine
from vec2face_tf.evaluation.reconstruction import to_uint8
from vec2face_tf.models import dibigan
from vec2face_tf.training import callbacks

DIM = 16


class ProjectionEngine(Engine):
    """A deterministic stand-in engine: a fixed random projection of 8x8 pooled pixels."""

    name, dim, input_size = "projection", DIM, 32

    def __init__(self):
        self.projection = np.random.default_rng(7).standard_normal((8 * 8 * 3, DIM))
        self.calls = 0

    def _embed(self, images):
        self.calls += len(images)
        pooled = images.reshape(len(images), 8, 4, 8, 4, 3).mean(axis=(2, 4)) / 255.0 - 0.5
        return pooled.reshape(len(images), -1) @ self.projection


@pytest.fixture(scope="module")
def gan():
    keras.utils.set_random_seed(0)
    config = config_lib.get_config("smoke")
    parts = dibigan.build_parts(config, DIM)
    images = tf.random.stateless_uniform([8, 32, 32, 3], seed=[1, 2], minval=-1, maxval=1)
    parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(images, 5, dequantize=False))
    model = dibigan.DiBiGAN(parts, config)
    model.compile(d_optimizer=keras.optimizers.Adam(), g_optimizer=keras.optimizers.Adam())
    model.build_optimizers()
    return model


def test_engine_cannot_be_called_on_tensors_so_no_gradient_reaches_it(gan):
    engine = ProjectionEngine()
    embeddings = tf.math.l2_normalize(tf.random.stateless_normal([4, DIM], seed=[3, 4]), 1)
    noise = tf.zeros([4, gan.config.generator.noise_dim])
    with tf.GradientTape() as tape:
        generated = gan.generator([embeddings, noise], training=False)
        teacher = engine.embed(to_uint8(generated))  # numpy in, numpy out
        loss = tf.reduce_sum(tf.constant(teacher))
    assert isinstance(teacher, np.ndarray)
    gradients = tape.gradient(loss, gan.generator.trainable_variables)
    assert all(g is None for g in gradients)
    # Inside a graph, the engine refuses the symbolic tensor instead of being traced
    # (autograph re-raises the EngineError as a StagingError with the same message).
    with pytest.raises(Exception, match="images must be a numpy array, got SymbolicTensor"):
        tf.function(lambda x: engine.embed(x))(tf.zeros([1, 32, 32, 3], tf.uint8))


def test_refresh_lowers_the_gap_on_fresh_generated_images(gan):
    engine = ProjectionEngine()
    rng = np.random.default_rng(0)
    real_embeddings = rng.standard_normal((64, DIM)).astype(np.float32)
    real_embeddings /= np.linalg.norm(real_embeddings, axis=1, keepdims=True)
    real_images = rng.uniform(-1, 1, (64, 32, 32, 3)).astype(np.float32)
    refresh = callbacks.StudentRefresh(
        engine, real_images, real_embeddings, every=1, buffer_size=64, max_queries=96,
        queries_per_refresh=32, distill_steps=25, batch_size=16, learning_rate=3e-3, seed=0)
    refresh.set_model(gan)

    # Fresh generated faces that the refresh never sees, labelled by the engine.
    noise = rng.standard_normal((16, gan.config.generator.noise_dim)).astype(np.float32)
    fresh = np.asarray(gan.generator([real_embeddings[:16], noise], training=False))
    fresh_teacher = engine.embed(to_uint8(fresh))
    queries_for_check = engine.calls
    before = refresh.student_gap(fresh, fresh_teacher)
    refresh.refresh()
    # Only the first refresh starts from an untrained student, so only its own gap must
    # fall; later ones start near convergence, where a fresh batch may score a hair worse.
    first_gap_before, first_gap_after = refresh.last_gap
    assert first_gap_after < first_gap_before - 0.05, refresh.last_gap
    for _ in range(3):  # the fourth refresh is refused: 3 x 32 = the 96-query cap
        refresh.refresh()
    after = refresh.student_gap(fresh, fresh_teacher)

    assert after < before - 0.05, (before, after)
    assert refresh.queries == 96 and engine.calls - queries_for_check == 96
    assert refresh.refreshes == 3 and len(refresh.buffer) == 64  # bounded buffer


def test_replay_buffer_keeps_the_newest_and_survives_a_checkpoint(tmp_path):
    buffer = callbacks.ReplayBuffer(3, (2, 2, 3), 1)
    images = np.arange(4, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    buffer.add(images[:2], np.arange(2, dtype=np.float32)[:, None])
    buffer.add(images[2:], np.arange(2, 4, dtype=np.float32)[:, None])
    np.testing.assert_array_equal(buffer.images[:, 0, 0, 0], [1, 2, 3])
    np.testing.assert_array_equal(buffer.vectors[:, 0], [1, 2, 3])
    sampled, vectors = buffer.sample(5, np.random.default_rng(0))
    np.testing.assert_allclose(sampled[:, 0, 0, 0], vectors[:, 0] / 127.5 - 1.0)

    path = tf.train.Checkpoint(buffer=buffer).save(str(tmp_path / "ckpt"))
    restored = callbacks.ReplayBuffer(3, (2, 2, 3), 1)
    tf.train.Checkpoint(buffer=restored).restore(path).assert_consumed()
    restored.reload()
    np.testing.assert_array_equal(restored.images, buffer.images)
    np.testing.assert_array_equal(restored.vectors, buffer.vectors)

    with pytest.raises(ValueError, match="2 images but 1 vectors"):
        buffer.add(images[:2], np.zeros((1, 1), np.float32))
    with pytest.raises(ValueError, match="must be uint8, got float32"):
        buffer.add(images[:1].astype(np.float32), np.zeros((1, 1), np.float32))
