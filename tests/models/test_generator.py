"""Tests for the feature-conditional generator G(x, n)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.models.generator import (
    AdaptiveInstanceNormalization,
    FiLMConvBlock,
    FiLMGenerator,
    Generator,
    ModulatedConvBlock,
    recalibrate_batch_norm,
)

EMBEDDING_DIM = 16
NOISE_DIM = 8
TINY = dict(resolution=16, embedding_dim=EMBEDDING_DIM, noise_dim=NOISE_DIM, base_channels=16,
            min_channels=4, start_resolution=4, rgb_scales=2, style_dim=16)


def _inputs(batch=3, seed=0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(batch, EMBEDDING_DIM)).astype("float32"),
            rng.normal(size=(batch, NOISE_DIM)).astype("float32"))


@pytest.fixture
def generator():
    keras.utils.set_random_seed(1)
    model = Generator(**TINY)
    model.build([(None, EMBEDDING_DIM), (None, NOISE_DIM)])
    return model


def test_output_shape_dtype_and_range(generator):
    embedding, noise = _inputs()
    image = generator([embedding, noise]).numpy()
    assert image.shape == (3, 16, 16, 3)
    assert image.dtype == np.float32
    assert np.all(np.isfinite(image))
    assert image.min() >= -1.0 and image.max() <= 1.0
    # Not collapsed to a constant or saturated at init.
    assert image.std() > 0.05
    assert np.mean(np.abs(image) > 0.99) < 0.01


def test_all_scales_are_coarse_to_fine_and_end_with_the_image(generator):
    embedding, noise = _inputs()
    image, scales = generator([embedding, noise], return_all_scales=True)
    assert generator.output_resolutions == [8, 16]
    assert [tuple(s.shape) for s in scales] == [(3, 8, 8, 3), (3, 16, 16, 3)]
    np.testing.assert_array_equal(scales[-1].numpy(), image.numpy())
    for scale in scales:
        assert np.abs(scale.numpy()).max() <= 1.0


def test_coarse_scale_is_the_skip_sum_base_of_the_fine_scale(generator):
    embedding, noise = _inputs()
    _, (coarse, fine) = generator([embedding, noise], return_all_scales=True)
    style = generator.style_code(embedding, noise)
    features = tf.reshape(generator.start_projection(style), (-1, 4, 4, 16))
    for block in generator.blocks:
        features = block([features, style])
    fine_head = generator.to_rgb[1](features)
    coarse_logits = np.arctanh(np.clip(coarse.numpy(), -1 + 1e-7, 1 - 1e-7))
    expected = np.tanh(generator.rgb_upsampling(coarse_logits).numpy() + fine_head.numpy())
    np.testing.assert_allclose(fine.numpy(), expected, atol=2e-4)


def test_channel_widths_halve_down_to_min_channels():
    model = Generator(resolution=64, embedding_dim=4, noise_dim=2, base_channels=64,
                      min_channels=16, start_resolution=4, rgb_scales=3, style_dim=8)
    assert model.block_channels == [64, 32, 16, 16, 16]
    assert model.output_resolutions == [16, 32, 64]


def test_embedding_is_l2_normalised_inside(generator):
    embedding, noise = _inputs()
    np.testing.assert_allclose(generator([embedding, noise]).numpy(),
                               generator([7.5 * embedding, noise]).numpy(), atol=1e-5)
    zero = generator([np.zeros_like(embedding), noise]).numpy()
    assert np.all(np.isfinite(zero))


def test_bare_embedding_means_zero_noise(generator):
    embedding, noise = _inputs()
    np.testing.assert_allclose(generator(embedding).numpy(),
                               generator([embedding, np.zeros_like(noise)]).numpy(), atol=1e-6)


def test_output_changes_with_embedding_alone_and_with_noise_alone(generator):
    embedding, noise = _inputs()
    other_embedding, other_noise = _inputs(seed=1)
    base = generator([embedding, noise]).numpy()
    assert np.abs(generator([other_embedding, noise]).numpy() - base).mean() > 1e-3
    assert np.abs(generator([embedding, other_noise]).numpy() - base).mean() > 1e-3


def test_embedding_modulates_every_block(generator):
    embedding, noise = _inputs()
    other_embedding, _ = _inputs(seed=1)
    style = generator.style_code(embedding, noise)
    other_style = generator.style_code(other_embedding, noise)
    features = tf.reshape(generator.start_projection(style), (-1, 4, 4, 16))
    for block in generator.blocks:
        # Same input features, only the style (from the embedding) differs.
        output = block([features, style]).numpy()
        assert np.abs(block([features, other_style]).numpy() - output).mean() > 1e-3, block.name
        features = output

    with tf.GradientTape() as tape:
        image = generator([embedding, noise])
        loss = tf.reduce_sum(image * np.linspace(-1, 1, image.shape[1])[None, :, None, None])
    modulation_kernels = [modulation.style_to_scale.kernel for block in generator.blocks
                          for modulation in block.modulations]
    gradients = tape.gradient(loss, modulation_kernels)
    assert len(gradients) == 2 * len(generator.blocks)
    for kernel, gradient in zip(modulation_kernels, gradients):
        assert gradient is not None and np.abs(gradient.numpy()).max() > 0, kernel.path


def test_adaptive_instance_normalization_golden():
    layer = AdaptiveInstanceNormalization(epsilon=0.0)
    features = np.array([[[[1.0], [3.0]], [[5.0], [7.0]]]], dtype="float32")  # mean 4, std √5
    style = np.array([[2.0]], dtype="float32")
    layer.build([features.shape, style.shape])
    layer.style_to_scale.set_weights([np.array([[0.5]]), np.array([0.0])])  # scale 1 + 1
    layer.style_to_bias.set_weights([np.array([[1.5]]), np.array([1.0])])  # bias 4
    expected = 2.0 * (features - 4.0) / np.sqrt(5.0) + 4.0
    np.testing.assert_allclose(layer([features, style]).numpy(), expected, rtol=1e-5)


def test_block_shape_and_config():
    block = ModulatedConvBlock(6, upsample=True)
    out = block([np.ones((2, 4, 4, 3), "float32"), np.ones((2, 5), "float32")])
    assert out.shape == (2, 8, 8, 6)
    assert block.compute_output_shape([(2, 4, 4, 3), (2, 5)]) == (2, 8, 8, 6)
    assert ModulatedConvBlock.from_config(block.get_config()).upsample is True


@pytest.mark.parametrize("kwargs, message", [
    (dict(resolution=48), "power of two"),
    (dict(resolution=2), "power of two"),
    (dict(start_resolution=3), "start_resolution"),
    (dict(rgb_scales=4), "rgb_scales=4 exceeds"),
    (dict(noise_dim=-1), "noise_dim"),
    (dict(base_channels=0), "base_channels"),
])
def test_bad_constructor_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Generator(**{**TINY, **kwargs})


def test_bad_input_shapes_raise():
    model = Generator(**TINY)
    embedding, noise = _inputs()
    with pytest.raises(ValueError, match=f"embedding must have shape \\[batch, {EMBEDDING_DIM}"):
        model([embedding[:, :5], noise])
    with pytest.raises(ValueError, match=f"noise must have shape \\[batch, {NOISE_DIM}"):
        Generator(**TINY)([embedding, noise[:, :3]])
    with pytest.raises(ValueError, match="expects \\[embedding, noise\\]"):
        Generator(**TINY)([embedding, noise, noise])


def test_get_config_round_trip(generator):
    embedding, noise = _inputs()
    clone = Generator.from_config(generator.get_config())
    clone.build([(None, EMBEDDING_DIM), (None, NOISE_DIM)])
    clone.set_weights(generator.get_weights())
    assert clone.get_config() == generator.get_config()
    np.testing.assert_allclose(clone([embedding, noise]).numpy(),
                               generator([embedding, noise]).numpy(), atol=1e-6)


def test_keras_file_round_trip(generator, tmp_path):
    embedding, noise = _inputs()
    path = tmp_path / "generator.keras"
    generator.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, Generator)
    np.testing.assert_allclose(loaded([embedding, noise]).numpy(),
                               generator([embedding, noise]).numpy(), atol=1e-6)


def test_mixed_float16_policy_gives_float32_images(mixed_precision):
    model = Generator(**TINY)
    embedding, noise = _inputs()
    image, scales = model([embedding, noise], return_all_scales=True)
    assert model.blocks[0].conv_1.compute_dtype == "float16"
    assert image.dtype == tf.float32 and all(s.dtype == tf.float32 for s in scales)
    assert np.all(np.isfinite(image.numpy())) and np.abs(image.numpy()).max() <= 1.0


def test_adam_steps_change_weights_and_reduce_a_toy_loss(generator):
    embedding, noise = _inputs()
    target = np.full((3, 16, 16, 3), 0.5, dtype="float32")
    optimizer = keras.optimizers.Adam(1e-2)
    before = [w.numpy().copy() for w in generator.trainable_weights]

    def loss_value():
        return tf.reduce_mean(tf.square(generator([embedding, noise]) - target))

    losses = []
    for _ in range(5):
        with tf.GradientTape() as tape:
            loss = loss_value()
        gradients = tape.gradient(loss, generator.trainable_weights)
        optimizer.apply_gradients(zip(gradients, generator.trainable_weights))
        losses.append(float(loss))
    assert float(loss_value()) < 0.5 * losses[0]
    changed = [not np.array_equal(b, w.numpy())
               for b, w in zip(before, generator.trainable_weights)]
    assert all(changed)


@pytest.mark.parametrize("kind", ["adain", "film"])
def test_converts_to_tflite_with_builtin_ops_only(kind, request, tmp_path):
    # Guards the static shapes TFLite needs: a dynamic-shape upsampling made the converter
    # demand Flex (TF Select) kernels for the following Conv2D.
    from ai_edge_litert.interpreter import Interpreter

    generator = request.getfixturevalue({"adain": "generator", "film": "film_generator"}[kind])

    archive = keras.export.ExportArchive()
    archive.track(generator)
    archive.add_endpoint(
        "serving_default", lambda embedding: {"image": generator(embedding)},
        input_signature=[tf.TensorSpec([None, EMBEDDING_DIM], tf.float32, name="embedding")])
    archive.write_out(str(tmp_path / "saved_model"), verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "saved_model"))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    runner = Interpreter(model_content=converter.convert()).get_signature_runner(
        "serving_default")
    embedding, _ = _inputs(batch=2)
    np.testing.assert_allclose(runner(embedding=embedding)["image"],
                               generator(embedding).numpy(), atol=1e-4)


def test_features_and_noise_weigh_alike_in_the_style_code():
    """Unit features against N(0, 1) noise made the style code mostly noise (a collapsed G)."""
    rng = np.random.default_rng(0)
    generator = Generator(resolution=8, embedding_dim=128, noise_dim=64, base_channels=16,
                          min_channels=8)
    rows = rng.standard_normal((256, 128)).astype(np.float32)
    noise = rng.standard_normal((256, 64)).astype(np.float32)
    across_features = np.asarray(generator.style_code(
        rows, np.repeat(noise[:1], 256, axis=0))).std(axis=0).mean()
    across_noise = np.asarray(generator.style_code(
        np.repeat(rows[:1], 256, axis=0), noise)).std(axis=0).mean()
    assert 0.7 < across_features / across_noise < 3.0


# --- FiLMGenerator (generator.kind=film) ------------------------------------------------------

FILM_TINY = dict(resolution=16, embedding_dim=EMBEDDING_DIM, noise_dim=NOISE_DIM,
                 base_channels=16, min_channels=4, start_resolution=4, style_dim=16)


@pytest.fixture
def film_generator():
    keras.utils.set_random_seed(2)
    model = FiLMGenerator(**FILM_TINY)
    model.build([(None, EMBEDDING_DIM), (None, NOISE_DIM)])
    return model


def test_film_output_shape_range_and_channel_halving(film_generator):
    embedding, noise = _inputs()
    image = film_generator([embedding, noise])
    assert image.shape == (3, 16, 16, 3) and image.dtype == tf.float32
    assert float(tf.reduce_max(tf.abs(image))) <= 1.0
    # The start map has base_channels; each of the two stages (4 -> 8 -> 16) halves them.
    assert film_generator.block_channels == [8, 4]
    final, scales = film_generator([embedding, noise], return_all_scales=True)
    assert len(scales) == 1 and film_generator.output_resolutions == [16]
    np.testing.assert_array_equal(final, scales[0])


def test_film_ignores_noise_until_trained_and_reads_the_embedding(film_generator):
    embedding, noise = _inputs()
    # The noise projection starts at zero: a regression-trained model draws one face per
    # template whatever the noise, and the bare embedding means noise 0.
    np.testing.assert_allclose(film_generator([embedding, noise]), film_generator(embedding),
                               atol=1e-6)
    other, _ = _inputs(seed=1)
    assert float(tf.reduce_mean(tf.abs(film_generator(embedding) - film_generator(other)))) \
        > 1e-3


def test_film_block_modulation_follows_the_code():
    keras.utils.set_random_seed(3)
    block = FiLMConvBlock(4, upsample=True)
    features = tf.random.normal([2, 4, 4, 3])
    code = tf.random.normal([2, 5])
    out = block([features, code], training=False)
    assert out.shape == (2, 8, 8, 4)
    block.scales[0].kernel.assign(tf.zeros_like(block.scales[0].kernel))
    block.scales[0].bias.assign(tf.fill(block.scales[0].bias.shape, -1.0))
    block.shifts[0].kernel.assign(tf.zeros_like(block.shifts[0].kernel))
    block.shifts[0].bias.assign(tf.zeros_like(block.shifts[0].bias))
    # (1 + scale) = 0 and shift = 0 after the first conv: the second conv sees zeros, so
    # the block's output is its second FiLM shift through LeakyReLU, the same at every pixel.
    out = np.asarray(block([features, code], training=False))
    np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :], out.shape), atol=1e-5)
    assert FiLMConvBlock.from_config(block.get_config()).get_config() == block.get_config()


def test_film_get_config_round_trip_and_keras_file(film_generator, tmp_path):
    clone = FiLMGenerator.from_config(film_generator.get_config())
    assert clone.get_config() == film_generator.get_config()
    path = tmp_path / "film.keras"
    film_generator.save(path)
    loaded = keras.saving.load_model(path)
    embedding, noise = _inputs()
    np.testing.assert_allclose(loaded([embedding, noise]), film_generator([embedding, noise]),
                               atol=1e-6)


def test_film_bad_arguments_and_inputs_raise():
    with pytest.raises(ValueError, match="resolution must be a power of two"):
        FiLMGenerator(resolution=4, start_resolution=4)
    with pytest.raises(ValueError, match="noise_dim"):
        FiLMGenerator(noise_dim=-1)
    model = FiLMGenerator(**FILM_TINY)
    with pytest.raises(ValueError, match="embedding must have shape"):
        model.build((None, EMBEDDING_DIM + 1))


def test_film_batch_norm_uses_batch_statistics_only_in_training(film_generator):
    embedding, noise = _inputs(batch=8)
    before = [v.numpy().copy() for v in film_generator.non_trainable_variables]
    film_generator([embedding, noise], training=False)
    assert all(np.array_equal(b, v.numpy())
               for b, v in zip(before, film_generator.non_trainable_variables))
    film_generator([embedding, noise], training=True)
    assert any(not np.array_equal(b, v.numpy())
               for b, v in zip(before, film_generator.non_trainable_variables))



def test_recalibrated_batch_norm_makes_inference_match_training_on_that_batch(film_generator):
    embeddings, _ = _inputs(batch=8)
    # One batch: the statistics become exactly that batch's, so an inference pass on the
    # same inputs normalises as the training pass did.
    passes = recalibrate_batch_norm(film_generator, embeddings, batch_size=8, seed=4)
    assert passes == 1
    # The same draws as recalibrate_batch_norm's: the order, then the noise, from one seed.
    rng = np.random.default_rng(4)
    order = rng.permutation(8)
    drawn = rng.standard_normal((8, NOISE_DIM)).astype(np.float32)
    inference = film_generator([embeddings[order], drawn], training=False)
    momenta = [layer.momentum for layer in film_generator._flatten_layers()
               if isinstance(layer, keras.layers.BatchNormalization)]
    assert momenta and all(m == pytest.approx(0.99) for m in momenta)  # restored
    training = film_generator([embeddings[order], drawn], training=True)
    np.testing.assert_allclose(inference, training, atol=2e-3)


def test_recalibration_ignores_a_generator_without_batch_norm(generator):
    embeddings, _ = _inputs()
    before = [v.numpy().copy() for v in generator.variables]
    assert recalibrate_batch_norm(generator, embeddings) == 0
    assert all(np.array_equal(b, v.numpy()) for b, v in zip(before, generator.variables))
