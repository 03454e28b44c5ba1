"""Tests of the Glow-style bijective network H (vec2face_tf/models/flow.py)."""

import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.models import flow as flow_lib
from vec2face_tf.models.flow import (
    ActNorm,
    AffineCoupling,
    BijectiveFlow,
    FlowStep,
    InvertibleConv1x1,
)

PRIORS = pytest.mark.parametrize("prior", ["standard_normal", "learned"])


def tiny_flow(image_size: int = 8, levels: int = 2, seed: int = 0, **kwargs) -> BijectiveFlow:
    return BijectiveFlow(image_shape=(image_size, image_size, 3), levels=levels,
                         steps_per_level=2, hidden_channels=8, num_bits=5, seed=seed, **kwargs)


def uniform_images(shape, seed: int) -> tf.Tensor:
    return tf.random.stateless_uniform(shape, seed=[seed, 1], minval=-0.5, maxval=0.5)


def perturb_trainable_weights(layer: keras.layers.Layer, scale: float, seed: int) -> None:
    """Moves every trainable weight away from its init, so no test passes by an identity."""
    rng = np.random.default_rng(seed)
    for weight in layer.trainable_weights:
        weight.assign(weight.numpy() + scale * rng.standard_normal(weight.shape))


def brute_force_log_det(forward, x: tf.Tensor) -> np.ndarray:
    """log|det J| per example of ``forward(x) -> [B, ...]`` from a full batch Jacobian."""
    with tf.GradientTape() as tape:
        tape.watch(x)
        outputs = forward(x)
        flat = tf.reshape(outputs, [tf.shape(x)[0], -1])
    jacobian = tape.batch_jacobian(flat, x)
    dims = int(np.prod(x.shape[1:]))
    jacobian = tf.reshape(jacobian, [-1, dims, dims])
    _, log_abs_det = tf.linalg.slogdet(tf.cast(jacobian, tf.float64))
    return log_abs_det.numpy()


def flatten_latents(latents) -> tf.Tensor:
    return tf.concat([tf.reshape(z, [tf.shape(z)[0], -1]) for z in latents], axis=1)


def load_faces(root: pathlib.Path, count: int, size: int) -> tf.Tensor:
    """Returns ``count`` real faces as float32[count, size, size, 3] in [-1, 1]."""
    paths = sorted(root.glob("*/*.jpg"))[:count]
    assert len(paths) == count, f"faces-dev has only {len(paths)} images"
    images = []
    for path in paths:
        image = tf.io.decode_jpeg(tf.io.read_file(str(path)), channels=3)
        # LFW deep-funneled photos are 250x250 with the face in the middle half.
        image = tf.image.central_crop(image, 0.5)
        image = tf.image.resize(image, (size, size), antialias=True)
        images.append(image)
    return tf.clip_by_value(tf.stack(images) / 127.5 - 1.0, -1.0, 1.0)


# Squeeze, split.

def test_squeeze_layout_and_round_trip():
    x = tf.reshape(tf.range(16, dtype=tf.float32), [1, 4, 4, 1])
    squeezed = flow_lib.squeeze(x)
    assert squeezed.shape == (1, 2, 2, 4)
    # The top-left output pixel gathers the top-left 2x2 input block in row-major order.
    np.testing.assert_array_equal(squeezed[0, 0, 0].numpy(), [0, 1, 4, 5])
    np.testing.assert_array_equal(flow_lib.unsqueeze(squeezed).numpy(), x.numpy())


def test_squeeze_rejects_odd_sizes_and_unsqueeze_bad_channels():
    with pytest.raises(ValueError, match="even height and width"):
        flow_lib.squeeze(tf.zeros([1, 3, 4, 1]))
    with pytest.raises(ValueError, match="divisible by 4"):
        flow_lib.unsqueeze(tf.zeros([1, 2, 2, 6]))
    with pytest.raises(ValueError, match="rank-4"):
        flow_lib.squeeze(tf.zeros([4, 4, 1]))


def test_split_channels_puts_the_extra_channel_first():
    x = tf.reshape(tf.range(5, dtype=tf.float32), [1, 1, 1, 5])
    first, second = flow_lib.split_channels(x)
    np.testing.assert_array_equal(first.numpy().ravel(), [0, 1, 2])
    np.testing.assert_array_equal(second.numpy().ravel(), [3, 4])


# ActNorm.

def test_actnorm_data_dependent_init_normalises_the_first_batch_only():
    layer = ActNorm()
    layer.build((None, 4, 4, 3))
    first = tf.random.stateless_normal([8, 4, 4, 3], seed=[1, 2]) * [1.0, 3.0, 0.5] + [2, -1, 0]
    y, log_det = layer.forward(first)
    np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]).numpy(), 0.0, atol=1e-5)
    np.testing.assert_allclose(tf.math.reduce_std(y, [0, 1, 2]).numpy(), 1.0, atol=1e-4)
    np.testing.assert_allclose(log_det.numpy(), 16 * np.sum(layer.log_scale.numpy()),
                               rtol=1e-6)
    assert float(layer.initialized.numpy()) == 1.0

    bias_after_init = layer.bias.numpy().copy()
    layer.forward(first * 10.0 + 5.0)
    np.testing.assert_array_equal(layer.bias.numpy(), bias_after_init)


def test_actnorm_init_runs_inside_tf_function():
    layer = ActNorm()
    layer.build((None, 2, 2, 2))
    x = tf.constant(np.arange(32, dtype=np.float32).reshape(4, 2, 2, 2))
    y, _ = tf.function(layer.forward)(x)
    np.testing.assert_allclose(tf.reduce_mean(y, [0, 1, 2]).numpy(), 0.0, atol=1e-5)
    assert float(layer.initialized.numpy()) == 1.0


def test_actnorm_restored_weights_are_not_reinitialised():
    trained = ActNorm()
    trained.build((None, 2, 2, 3))
    trained.forward(tf.random.stateless_normal([4, 2, 2, 3], seed=[3, 4]))
    restored = ActNorm()
    restored.build((None, 2, 2, 3))
    restored.set_weights(trained.get_weights())
    other_batch = tf.random.stateless_normal([4, 2, 2, 3], seed=[5, 6]) * 7.0
    np.testing.assert_allclose(restored.forward(other_batch)[0].numpy(),
                               trained.forward(other_batch)[0].numpy(), rtol=1e-6)


def test_actnorm_inverse_and_log_det_match_brute_force():
    layer = ActNorm()
    layer.build((None, 2, 2, 3))
    x = tf.random.stateless_normal([3, 2, 2, 3], seed=[7, 8]) * 2.0 + 1.0
    layer.forward(x)
    y, log_det = layer.forward(x)
    np.testing.assert_allclose(layer.inverse(y).numpy(), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(log_det.numpy(),
                               brute_force_log_det(lambda t: layer.forward(t)[0], x), atol=1e-4)


# Invertible 1x1 convolution.

def test_conv1x1_starts_as_a_rotation():
    layer = InvertibleConv1x1(seed=3)
    layer.build((None, 2, 2, 6))
    weight = layer.weight_matrix().numpy()
    np.testing.assert_allclose(weight @ weight.T, np.eye(6), atol=1e-5)
    _, log_det = layer.forward(tf.zeros([2, 2, 2, 6]))
    np.testing.assert_allclose(log_det.numpy(), [0.0, 0.0], atol=1e-5)


def test_conv1x1_forward_inverse_and_log_det_after_training_like_changes():
    layer = InvertibleConv1x1(seed=4)
    layer.build((None, 3, 2, 4))
    perturb_trainable_weights(layer, 0.3, seed=5)
    x = tf.random.stateless_normal([2, 3, 2, 4], seed=[9, 10])
    y, log_det = layer.forward(x)
    weight = layer.weight_matrix().numpy()
    np.testing.assert_allclose(y.numpy(), x.numpy() @ weight.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(layer.inverse(y).numpy(), x.numpy(), atol=1e-4)
    expected = 6 * np.linalg.slogdet(weight.astype(np.float64))[1]
    np.testing.assert_allclose(log_det.numpy(), [expected, expected], atol=1e-4)
    np.testing.assert_allclose(log_det.numpy(),
                               brute_force_log_det(lambda t: layer.forward(t)[0], x), atol=1e-3)


def test_conv1x1_seed_makes_the_init_reproducible():
    first, second = InvertibleConv1x1(seed=11), InvertibleConv1x1(seed=11)
    first.build((None, 1, 1, 5))
    second.build((None, 1, 1, 5))
    np.testing.assert_array_equal(first.weight_matrix().numpy(), second.weight_matrix().numpy())


# Affine coupling.

def test_coupling_starts_as_the_identity():
    layer = AffineCoupling(hidden_channels=4)
    layer.build((None, 4, 4, 6))
    x = tf.random.stateless_normal([2, 4, 4, 6], seed=[11, 12])
    y, log_det = layer.forward(x)
    np.testing.assert_allclose(y.numpy(), x.numpy(), atol=1e-6)
    np.testing.assert_allclose(log_det.numpy(), [0.0, 0.0], atol=1e-6)


def test_coupling_inverse_log_det_and_passive_half():
    layer = AffineCoupling(hidden_channels=4)
    layer.build((None, 2, 2, 5))
    perturb_trainable_weights(layer, 0.5, seed=13)
    x = tf.random.stateless_normal([3, 2, 2, 5], seed=[14, 15])
    y, log_det = layer.forward(x)
    np.testing.assert_array_equal(y[..., :3].numpy(), x[..., :3].numpy())
    assert np.abs(y[..., 3:].numpy() - x[..., 3:].numpy()).max() > 1e-2
    np.testing.assert_allclose(layer.inverse(y).numpy(), x.numpy(), atol=1e-5)
    np.testing.assert_allclose(log_det.numpy(),
                               brute_force_log_det(lambda t: layer.forward(t)[0], x), atol=1e-3)
    # The scale is bounded by 1 / sigmoid(2), so no step can grow a dimension more than that.
    assert np.all(log_det.numpy() <= 8 * -math.log(1 / (1 + math.exp(-2))) + 1e-5)


def test_coupling_rejects_bad_arguments():
    with pytest.raises(ValueError, match="hidden_channels"):
        AffineCoupling(hidden_channels=0)
    with pytest.raises(ValueError, match=">= 2 channels"):
        AffineCoupling(hidden_channels=4).build((None, 2, 2, 1))


def test_flow_step_inverse_and_log_det():
    step = FlowStep(hidden_channels=4, seed=1)
    step.build((None, 2, 2, 4))
    x = tf.random.stateless_normal([2, 2, 2, 4], seed=[16, 17])
    step.forward(x)
    perturb_trainable_weights(step, 0.2, seed=18)
    y, log_det = step.forward(x)
    np.testing.assert_allclose(step.inverse(y).numpy(), x.numpy(), atol=1e-4)
    np.testing.assert_allclose(log_det.numpy(),
                               brute_force_log_det(lambda t: step.forward(t)[0], x), atol=1e-3)


# The whole flow.

def test_flow_latent_shapes_cover_every_dimension():
    flow = BijectiveFlow(image_shape=(64, 64, 3), levels=3, steps_per_level=1,
                         hidden_channels=4)
    assert flow.latent_shapes == [(32, 32, 6), (16, 16, 12), (8, 8, 48)]
    assert sum(h * w * c for h, w, c in flow.latent_shapes) == 64 * 64 * 3
    latents, log_det = flow(uniform_images([1, 64, 64, 3], seed=1))
    assert [tuple(z.shape[1:]) for z in latents] == flow.latent_shapes
    assert log_det.shape == (1,)


@PRIORS
def test_flow_round_trip_on_random_input(prior):
    flow = tiny_flow(image_size=16, prior=prior)
    x = uniform_images([4, 16, 16, 3], seed=2)
    flow(x)
    perturb_trainable_weights(flow, 0.05, seed=3)
    latents, _ = flow(x)
    np.testing.assert_allclose(flow.inverse(latents).numpy(), x.numpy(), atol=1e-4)


def test_flow_round_trip_on_real_faces(faces_dev):
    faces = BijectiveFlow.preprocess(load_faces(faces_dev, 6, 32), 5, dequantize=False)
    flow = BijectiveFlow(image_shape=(32, 32, 3), levels=3, steps_per_level=2,
                         hidden_channels=16, seed=4)
    flow(faces)
    perturb_trainable_weights(flow, 0.05, seed=5)
    latents, log_det = flow(faces)
    assert np.all(np.isfinite(log_det.numpy()))
    np.testing.assert_allclose(flow.inverse(latents).numpy(), faces.numpy(), atol=1e-4)


@PRIORS
def test_flow_log_det_matches_brute_force_jacobian(prior):
    flow = tiny_flow(image_size=8, prior=prior)
    x = uniform_images([2, 8, 8, 3], seed=6)
    flow(x)
    perturb_trainable_weights(flow, 0.1, seed=7)
    _, log_det = flow(x)
    expected = brute_force_log_det(lambda t: flatten_latents(flow(t)[0]), x)
    # The two examples differ only through the couplings, which the perturbation woke up.
    assert abs(expected[0] - expected[1]) > 1e-3
    np.testing.assert_allclose(log_det.numpy(), expected, atol=1e-3)


def test_learned_prior_starts_as_identity_then_changes_the_likelihood():
    x = uniform_images([2, 8, 8, 3], seed=30)
    plain = tiny_flow(image_size=8, seed=31)
    learned = tiny_flow(image_size=8, seed=31, prior="learned")
    plain_latents, plain_log_det = plain(x)
    learned_latents, learned_log_det = learned(x)
    np.testing.assert_allclose(learned_log_det.numpy(), plain_log_det.numpy(), rtol=1e-6)
    np.testing.assert_allclose(flatten_latents(learned_latents).numpy(),
                               flatten_latents(plain_latents).numpy(), atol=1e-6)
    # Moving only the prior's weights moves the latents and the log-det.
    for prior_layer in learned.priors:
        perturb_trainable_weights(prior_layer, 0.1, seed=32)
    moved_latents, moved_log_det = learned(x)
    assert np.abs(moved_log_det.numpy() - plain_log_det.numpy()).min() > 1e-2
    assert np.abs(flatten_latents(moved_latents).numpy()
                  - flatten_latents(plain_latents).numpy()).max() > 1e-2


def test_flow_rejects_an_unknown_prior():
    with pytest.raises(ValueError, match="unknown flow prior 'laplace'"):
        tiny_flow(image_size=8, prior="laplace")


def test_flow_forward_inside_tf_function_matches_eager():
    flow = tiny_flow(image_size=8, seed=8)
    x = uniform_images([3, 8, 8, 3], seed=9)
    graph_latents, graph_log_det = tf.function(flow.forward)(x)
    eager_latents, eager_log_det = flow.forward(x)
    np.testing.assert_allclose(graph_log_det.numpy(), eager_log_det.numpy(), rtol=1e-5)
    np.testing.assert_allclose(flatten_latents(graph_latents).numpy(),
                               flatten_latents(eager_latents).numpy(), atol=1e-5)


def test_flow_rejects_bad_shapes():
    with pytest.raises(ValueError, match="divisible by 2\\*\\*levels = 8"):
        BijectiveFlow(image_shape=(12, 12, 3), levels=3, steps_per_level=1)
    with pytest.raises(ValueError, match="levels and steps_per_level"):
        BijectiveFlow(image_shape=(8, 8, 3), levels=0, steps_per_level=1)
    with pytest.raises(ValueError, match="num_bits"):
        BijectiveFlow(image_shape=(8, 8, 3), levels=1, steps_per_level=1, num_bits=9)
    flow = tiny_flow(image_size=8)
    with pytest.raises(ValueError, match="flow input must have shape \\[B, 8, 8, 3\\]"):
        flow(tf.zeros([1, 16, 16, 3]))
    with pytest.raises(ValueError, match="expected a list of 2 latents"):
        flow.inverse([tf.zeros([1, 4, 4, 6])])
    with pytest.raises(ValueError, match="latent 1 must have shape \\[B, 2, 2, 24\\]"):
        flow.inverse([tf.zeros([1, 4, 4, 6]), tf.zeros([1, 2, 2, 12])])


@PRIORS
def test_flow_get_config_round_trip(prior):
    flow = tiny_flow(image_size=8, seed=10, prior=prior)
    x = uniform_images([2, 8, 8, 3], seed=11)
    flow(x)
    perturb_trainable_weights(flow, 0.05, seed=12)
    rebuilt = BijectiveFlow.from_config(flow.get_config())
    assert rebuilt.latent_shapes == flow.latent_shapes
    rebuilt.set_weights(flow.get_weights())
    np.testing.assert_allclose(rebuilt(x)[1].numpy(), flow(x)[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(flatten_latents(rebuilt(x)[0]).numpy(),
                               flatten_latents(flow(x)[0]).numpy(), atol=1e-6)


@PRIORS
def test_flow_save_and_load_keras_file(prior, tmp_path):
    flow = tiny_flow(image_size=8, seed=13, prior=prior)
    flow(uniform_images([4, 8, 8, 3], seed=14))
    perturb_trainable_weights(flow, 0.05, seed=15)
    path = tmp_path / "flow.keras"
    flow.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, BijectiveFlow)
    # A different batch: a loaded flow that re-ran ActNorm's init would give other numbers.
    x = uniform_images([3, 8, 8, 3], seed=16) * 0.3
    loaded_latents, loaded_log_det = loaded(x)
    latents, log_det = flow(x)
    np.testing.assert_allclose(loaded_log_det.numpy(), log_det.numpy(), rtol=1e-6)
    np.testing.assert_allclose(flatten_latents(loaded_latents).numpy(),
                               flatten_latents(latents).numpy(), atol=1e-6)


def test_flow_stays_float32_under_mixed_precision():
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        flow = tiny_flow(image_size=8)
        x = tf.cast(uniform_images([2, 8, 8, 3], seed=17), tf.float16)
        latents, log_det = flow(x)
        assert flow.dtype_policy.name == "float32"
        assert all(w.dtype == "float32" for w in flow.weights)
        assert all(z.dtype == tf.float32 for z in latents)
        assert log_det.dtype == tf.float32
        np.testing.assert_allclose(flow.inverse(latents).numpy(),
                                   tf.cast(x, tf.float32).numpy(), atol=1e-4)
    finally:
        keras.mixed_precision.set_global_policy("float32")


# Preprocessing and likelihood.

def test_preprocess_bins_without_noise_are_bin_centres():
    images = tf.constant([-1.0, -0.99, 0.0, 0.999, 1.0], shape=[1, 1, 5, 1])
    x = BijectiveFlow.preprocess(images, num_bits=5, dequantize=False).numpy().ravel()
    np.testing.assert_allclose(x, np.array([0.5, 0.5, 16.5, 31.5, 31.5]) / 32 - 0.5,
                               rtol=1e-6)


def test_preprocess_dequantisation_stays_in_its_bin_and_is_seeded():
    images = tf.random.stateless_uniform([2, 4, 4, 3], seed=[18, 19], minval=-1, maxval=1)
    centres = BijectiveFlow.preprocess(images, 3, dequantize=False)
    noisy = BijectiveFlow.preprocess(images, 3, dequantize=True, seed=7)
    again = BijectiveFlow.preprocess(images, 3, dequantize=True, seed=7)
    other = BijectiveFlow.preprocess(images, 3, dequantize=True, seed=8)
    np.testing.assert_array_equal(noisy.numpy(), again.numpy())
    assert not np.array_equal(noisy.numpy(), other.numpy())
    assert np.all(np.abs(noisy.numpy() - centres.numpy()) <= 0.5 / 8 + 1e-6)
    assert np.all(np.abs(noisy.numpy()) <= 0.5)
    assert np.std(noisy.numpy() - centres.numpy()) > 0.02


def test_preprocess_rejects_bad_input():
    with pytest.raises(tf.errors.InvalidArgumentError, match="must be in \\[-1, 1\\]"):
        BijectiveFlow.preprocess(tf.fill([1, 2, 2, 3], 255.0), 5, dequantize=False)
    with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
        BijectiveFlow.preprocess(tf.fill([1, 2, 2, 3], float("nan")), 5, dequantize=False)
    with pytest.raises(ValueError, match="num_bits"):
        BijectiveFlow.preprocess(tf.zeros([1, 2, 2, 3]), 0, dequantize=False)


def test_nll_golden_value_at_the_prior_mode():
    latents = [tf.zeros([2, 4, 4, 6]), tf.zeros([2, 2, 2, 24])]
    log_det = tf.constant([0.0, 192.0 * math.log(2.0)])
    bits = BijectiveFlow.nll_bits_per_dim(latents, log_det, num_bits=5).numpy()
    at_mode = 0.5 * math.log2(2 * math.pi) + 5
    # A log-det of D * log(2) is one bit per dimension better.
    np.testing.assert_allclose(bits, [at_mode, at_mode - 1.0], rtol=1e-6)


def test_nll_falls_while_training_on_real_faces(faces_dev):
    faces = load_faces(faces_dev, 64, 16)
    flow = BijectiveFlow(image_shape=(16, 16, 3), levels=2, steps_per_level=2,
                         hidden_channels=16, num_bits=5, seed=20)
    optimizer = keras.optimizers.Adam(learning_rate=2e-3)

    def mean_bits(x):
        latents, log_det = flow(x, training=True)
        return tf.reduce_mean(BijectiveFlow.nll_bits_per_dim(latents, log_det, num_bits=5))

    evaluation_batch = BijectiveFlow.preprocess(faces, 5, dequantize=False)
    initial_bits = float(mean_bits(evaluation_batch))

    @tf.function
    def train_step(step):
        x = BijectiveFlow.preprocess(faces, 5, dequantize=True, seed=tf.stack([step, 0]))
        with tf.GradientTape() as tape:
            loss = mean_bits(x)
        gradients = tape.gradient(loss, flow.trainable_weights)
        optimizer.apply_gradients(zip(gradients, flow.trainable_weights))
        return loss

    losses = [float(train_step(tf.constant(step))) for step in range(40)]
    final_bits = float(mean_bits(evaluation_batch))
    assert 2.0 < initial_bits < 8.0
    assert np.all(np.isfinite(losses))
    assert final_bits < initial_bits - 0.1, (initial_bits, final_bits, losses[::10])
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.1
