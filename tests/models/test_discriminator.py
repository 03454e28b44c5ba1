"""Tests for the conditional projection discriminator D(I, x)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.models.discriminator import Discriminator, ResidualDownBlock

EMBEDDING_DIM = 8
TINY = dict(resolution=16, embedding_dim=EMBEDDING_DIM, base_channels=4, max_channels=8)


def _inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-1, 1, size=(batch, 16, 16, 3)).astype("float32"),
            rng.normal(size=(batch, EMBEDDING_DIM)).astype("float32"))


def _largest_singular_value(kernel) -> float:
    matrix = np.reshape(np.asarray(kernel), (-1, kernel.shape[-1]))
    return float(np.linalg.svd(matrix, compute_uv=False)[0])


def _spectral_layers(model):
    layers = [model.from_rgb, model.psi, model.embed]
    for block in model.blocks:
        layers += [block.conv_1, block.conv_2, block.shortcut]
    return layers


@pytest.fixture
def discriminator():
    keras.utils.set_random_seed(2)
    model = Discriminator(**TINY)
    model.build([(None, 16, 16, 3), (None, EMBEDDING_DIM)])
    return model


def test_logits_shape_dtype_and_finite(discriminator):
    images, embedding = _inputs()
    logits = discriminator([images, embedding])
    assert logits.shape == (3,)
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


def test_channels_double_down_to_4x4_up_to_max():
    model = Discriminator(resolution=64, embedding_dim=4, base_channels=32, max_channels=128)
    assert model.block_channels == [64, 128, 128, 128]
    block = ResidualDownBlock(5)
    assert block(np.zeros((2, 8, 8, 3), "float32")).shape == (2, 4, 4, 5)


def test_logit_is_psi_plus_projection_of_the_unit_embedding(discriminator):
    images, embedding = _inputs()
    features = discriminator.features(images).numpy()
    unit = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    psi_kernel, psi_bias = discriminator.psi.layer.kernel.numpy(), discriminator.psi.layer.bias
    expected = (features @ psi_kernel)[:, 0] + psi_bias.numpy()[0] + np.sum(
        (unit @ discriminator.embed.layer.kernel.numpy()) * features, axis=1)
    np.testing.assert_allclose(discriminator([images, embedding]).numpy(), expected,
                               rtol=1e-4, atol=1e-4)


def test_logits_depend_on_the_embedding_direction_only(discriminator):
    images, embedding = _inputs()
    _, other_embedding = _inputs(seed=5)
    logits = discriminator([images, embedding]).numpy()
    assert np.abs(discriminator([images, other_embedding]).numpy() - logits).min() > 1e-4
    np.testing.assert_allclose(discriminator([images, 3.0 * embedding]).numpy(), logits,
                               rtol=1e-5, atol=1e-5)
    # Projection is linear in the unit embedding: D(I, x) + D(I, -x) = 2 psi(phi(I)).
    features = discriminator.features(images)
    psi = discriminator.psi(features).numpy()[:, 0]
    np.testing.assert_allclose(logits + discriminator([images, -embedding]).numpy(), 2 * psi,
                               rtol=1e-4, atol=1e-4)


def test_every_conv_and_dense_is_spectrally_normalised(discriminator):
    layers = _spectral_layers(discriminator)
    assert all(isinstance(layer, keras.layers.SpectralNormalization) for layer in layers)
    kernels = {id(layer.layer.kernel) for layer in layers}
    all_kernels = {id(weight) for weight in discriminator.trainable_weights
                   if weight.name == "kernel"}
    assert kernels == all_kernels


def test_spectral_norm_brings_largest_singular_value_to_one(discriminator):
    images, embedding = _inputs()
    layers = _spectral_layers(discriminator)
    for layer in layers:
        layer.layer.kernel.assign(layer.layer.kernel * 5.0)
    inflated = [_largest_singular_value(layer.layer.kernel) for layer in layers]
    discriminator([images, embedding])  # Inference does not touch the kernels.
    assert [_largest_singular_value(layer.layer.kernel) for layer in layers] == inflated
    assert min(inflated) > 2.0
    # One power iteration per call (the Keras default), so give it a few calls to converge.
    for _ in range(20):
        discriminator([images, embedding], training=True)
    for layer in layers:
        sigma = _largest_singular_value(layer.layer.kernel)
        assert abs(sigma - 1.0) < 0.05, (layer.name, sigma)


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=4), "power of two >= 8"),
    (dict(resolution=24), "power of two >= 8"),
    (dict(embedding_dim=0), "embedding_dim"),
    (dict(max_channels=1.5), "max_channels"),
])
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Discriminator(**{**TINY, **kwargs})


def test_bad_input_shapes_raise():
    images, embedding = _inputs()
    with pytest.raises(ValueError, match="images must have shape \\[batch, 16, 16, 3\\]"):
        Discriminator(**TINY)([images[:, :8, :8], embedding])
    with pytest.raises(ValueError, match=f"embedding must have shape \\[batch, {EMBEDDING_DIM}"):
        Discriminator(**TINY)([images, embedding[:, :3]])
    with pytest.raises(ValueError, match="expects \\[images, embedding\\]"):
        Discriminator(**TINY)(images)


def test_get_config_round_trip(discriminator):
    images, embedding = _inputs()
    clone = Discriminator.from_config(discriminator.get_config())
    clone.build([(None, 16, 16, 3), (None, EMBEDDING_DIM)])
    clone.set_weights(discriminator.get_weights())
    assert clone.get_config() == discriminator.get_config()
    np.testing.assert_allclose(clone([images, embedding]).numpy(),
                               discriminator([images, embedding]).numpy(), atol=1e-5)


def test_keras_file_round_trip(discriminator, tmp_path):
    images, embedding = _inputs()
    discriminator([images, embedding], training=True)  # Non-trivial power-iteration state.
    path = tmp_path / "discriminator.keras"
    discriminator.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Discriminator)
    np.testing.assert_allclose(loaded([images, embedding]).numpy(),
                               discriminator([images, embedding]).numpy(), atol=1e-5)
    np.testing.assert_allclose(loaded.from_rgb.vector_u.numpy(),
                               discriminator.from_rgb.vector_u.numpy())


def test_mixed_float16_policy_gives_float32_logits(mixed_precision):
    model = Discriminator(**TINY)
    images, embedding = _inputs()
    logits = model([images, embedding], training=True)
    assert model.blocks[0].conv_1.compute_dtype == "float16"
    assert logits.dtype == tf.float32
    assert np.all(np.isfinite(logits.numpy()))


def test_adam_steps_change_weights_and_reduce_a_toy_loss(discriminator):
    images, embedding = _inputs()
    fake_images, _ = _inputs(seed=3)
    optimizer = keras.optimizers.Adam(1e-2)
    before = [w.numpy().copy() for w in discriminator.trainable_weights]

    def loss_value(training):
        real = discriminator([images, embedding], training=training)
        fake = discriminator([fake_images, embedding], training=training)
        return tf.reduce_mean(tf.nn.softplus(-real)) + tf.reduce_mean(tf.nn.softplus(fake))

    initial = float(loss_value(False))
    for _ in range(10):
        with tf.GradientTape() as tape:
            loss = loss_value(True)
        gradients = tape.gradient(loss, discriminator.trainable_weights)
        optimizer.apply_gradients(zip(gradients, discriminator.trainable_weights))
    assert float(loss_value(False)) < 0.7 * initial
    changed = [not np.array_equal(b, w.numpy())
               for b, w in zip(before, discriminator.trainable_weights)]
    assert all(changed)
