"""Golden values, shape invariants and serialisation of vec2face_tf.schedules."""

import dataclasses
import importlib.util
import math
import pathlib

import keras
import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf import schedules
from vec2face_tf.config import ScheduleConfig, get_config


def _value(schedule, step):
    return np.asarray(schedule(step))


def test_exponential_ramp_golden():
    ramp = schedules.ExponentialRamp(w_max=2.0, tau=100.0)
    assert float(_value(ramp, 0)) == 0.0
    # t = tau: 2 * (1 - e^-1) = 2 * 0.6321206 = 1.2642411
    assert float(_value(ramp, 100)) == pytest.approx(1.2642411, rel=1e-6)
    # t = 10 tau: 2 * (1 - e^-10) = 2 * (1 - 4.54e-5) = 1.9999092
    assert float(_value(ramp, 1000)) == pytest.approx(1.9999092, rel=1e-6)
    assert float(_value(ramp, 10**7)) == pytest.approx(2.0)


def test_exponential_decay_golden():
    decay = schedules.ExponentialDecay(w0=0.5, tau=100.0)
    assert float(_value(decay, 0)) == pytest.approx(0.5)
    # t = tau: 0.5 * e^-1 = 0.1839397; t = 10 tau: 0.5 * e^-10 = 2.2700e-5
    assert float(_value(decay, 100)) == pytest.approx(0.1839397, rel=1e-6)
    assert float(_value(decay, 1000)) == pytest.approx(2.2700e-5, rel=1e-4)
    # the same curve as Keras' own ExponentialDecay with decay_rate e^-1
    keras_decay = keras.optimizers.schedules.ExponentialDecay(0.5, 100, math.exp(-1.0))
    for step in (0, 37, 250):
        assert float(_value(decay, step)) == pytest.approx(float(keras_decay(step)), rel=1e-5)


def test_scale_weights_golden_two_scales():
    weights = schedules.ScaleWeights(num_scales=2, tau=100.0, sharpness=2.0)
    # t = 0: softmax([0, -2]) = [1 / (1 + e^-2), e^-2 / (1 + e^-2)] = [0.8807971, 0.1192029]
    np.testing.assert_allclose(_value(weights, 0), [0.8807971, 0.1192029], rtol=1e-6)
    # t = tau ln 2: p = 1/2, all logits 0 -> equal weights
    np.testing.assert_allclose(_value(weights, 100.0 * math.log(2.0)), [0.5, 0.5], rtol=1e-5)
    # t -> infinity: p -> 1, softmax([0, 2]) = [0.1192029, 0.8807971]
    np.testing.assert_allclose(_value(weights, 10**6), [0.1192029, 0.8807971], rtol=1e-6)


def test_scale_weights_golden_three_scales_at_tau():
    weights = schedules.ScaleWeights(num_scales=3, tau=100.0, sharpness=2.0)
    # p = 1 - e^-1 = 0.6321206, 2p - 1 = 0.2642411; logits 2 * 0.2642411 * [0, 0.5, 1]
    # = [0, 0.2642411, 0.5284822]; exp = [1, 1.3024603, 1.6964199], sum 3.9988802
    # -> [0.2500752, 0.3257084, 0.4242164]
    np.testing.assert_allclose(_value(weights, 100), [0.2500752, 0.3257084, 0.4242164],
                               rtol=1e-5)


def test_scale_weights_single_scale_and_zero_sharpness():
    np.testing.assert_allclose(_value(schedules.ScaleWeights(1, 10.0), 5), [1.0])
    np.testing.assert_allclose(_value(schedules.ScaleWeights(4, 10.0, sharpness=0.0), 3),
                               [0.25] * 4)


def test_constant_golden():
    constant = schedules.Constant(0.7)
    for step in (0, 10, 10**6):
        assert float(_value(constant, step)) == pytest.approx(0.7)
    assert schedules.Constant(0.7)(tf.constant(3)).dtype == tf.float32


def test_monotonic_and_normalised_over_steps():
    steps = np.arange(0, 5000, 25)
    ramp = np.array([_value(schedules.ExponentialRamp(1.0, 500.0), s) for s in steps])
    decay = np.array([_value(schedules.ExponentialDecay(1.0, 500.0), s) for s in steps])
    scales = np.array([_value(schedules.ScaleWeights(3, 500.0), s) for s in steps])
    assert np.all(np.diff(ramp) > 0) and np.all((ramp >= 0) & (ramp < 1))
    assert np.all(np.diff(decay) < 0) and np.all((decay > 0) & (decay <= 1))
    np.testing.assert_allclose(scales.sum(axis=1), 1.0, rtol=1e-6)
    assert np.all(np.diff(scales[:, 0]) < 0)  # coarsest loses weight
    assert np.all(np.diff(scales[:, -1]) > 0)  # finest gains weight


def test_negative_steps_are_treated_as_step_zero():
    assert float(_value(schedules.ExponentialRamp(1.0, 10.0), -5)) == 0.0
    assert float(_value(schedules.ExponentialDecay(1.0, 10.0), -5)) == pytest.approx(1.0)


ALL_SCHEDULES = [
    schedules.ExponentialRamp(1.5, 20.0),
    schedules.ExponentialDecay(0.25, 20.0),
    schedules.ScaleWeights(3, 20.0, sharpness=1.5),
    schedules.Constant(0.3),
]


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_serialisation_round_trip(schedule):
    serialised = keras.saving.serialize_keras_object(schedule)
    assert serialised["registered_name"] == f"vec2face>{type(schedule).__name__}"
    restored = keras.saving.deserialize_keras_object(serialised)
    assert type(restored) is type(schedule)
    assert restored.get_config() == schedule.get_config()
    for step in (0, 7, 60):
        np.testing.assert_allclose(_value(restored, step), _value(schedule, step))


@pytest.mark.parametrize("schedule", ALL_SCHEDULES, ids=lambda s: type(s).__name__)
def test_works_with_a_variable_step_inside_tf_function(schedule):
    step = tf.Variable(0, dtype=tf.int64)

    @tf.function
    def weight_then_advance():
        weight = schedule(step)
        step.assign_add(10)
        return weight

    traced = [np.asarray(weight_then_advance()) for _ in range(3)]
    for index, value in enumerate(traced):
        np.testing.assert_allclose(value, _value(schedule, 10 * index), rtol=1e-6)
    assert traced[0].dtype == np.float32


def test_schedule_drives_an_optimizer_learning_rate():
    # A LearningRateSchedule is also accepted where Keras expects one.
    variable = keras.Variable(1.0)
    optimizer = keras.optimizers.SGD(learning_rate=schedules.ExponentialRamp(1.0, 1.0))
    optimizer.apply_gradients([(tf.constant(1.0), variable)])  # step 0: rate 0
    optimizer.apply_gradients([(tf.constant(1.0), variable)])  # step 1: rate 1 - e^-1
    assert float(variable.numpy()) == pytest.approx(1.0 - (1.0 - math.exp(-1.0)), rel=1e-6)


@pytest.mark.parametrize("factory, message", [
    (lambda: schedules.ExponentialRamp(1.0, 0.0), "tau must be a finite number > 0"),
    (lambda: schedules.ExponentialRamp(-1.0, 5.0), "w_max must be a finite number >= 0"),
    (lambda: schedules.ExponentialDecay(float("nan"), 5.0), "w0 must be a finite number"),
    (lambda: schedules.ExponentialDecay(1.0, float("inf")), "tau must be a finite number"),
    (lambda: schedules.ScaleWeights(0, 5.0), "num_scales must be an integer >= 1"),
    (lambda: schedules.ScaleWeights(2.0, 5.0), "num_scales must be an integer >= 1"),
    (lambda: schedules.ScaleWeights(2, 5.0, sharpness=-1.0), "sharpness must be"),
    (lambda: schedules.Constant(-0.1), "value must be a finite number >= 0"),
])
def test_bad_parameters_are_named(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_build_default_config_ramps_identity_and_metric():
    built = schedules.build_loss_weight_schedules(
        ScheduleConfig(identity_max=2.0, metric_max=0.5, tau=100.0), pixel_weight=0.3,
        num_scales=3)
    assert sorted(built) == ["adversarial", "identity", "metric", "perceptual", "pixel",
                             "scales"]
    assert isinstance(built["identity"], schedules.ExponentialRamp)
    # t = tau: 2 (1 - e^-1) = 1.2642411 and 0.5 (1 - e^-1) = 0.3160603
    assert float(_value(built["identity"], 100)) == pytest.approx(1.2642411, rel=1e-6)
    assert float(_value(built["metric"], 100)) == pytest.approx(0.3160603, rel=1e-6)
    assert float(_value(built["pixel"], 100)) == pytest.approx(0.3)
    np.testing.assert_allclose(_value(built["scales"], 100), [1 / 3] * 3, rtol=1e-6)


def test_build_each_kind():
    base = ScheduleConfig(tau=100.0)
    decaying = schedules.build_loss_weight_schedules(
        dataclasses.replace(base, kind="decaying_pixel"), pixel_weight=0.5)
    assert float(_value(decaying["pixel"], 100)) == pytest.approx(0.1839397, rel=1e-6)
    scaled = schedules.build_loss_weight_schedules(
        dataclasses.replace(base, kind="scale_weights"), num_scales=2)
    np.testing.assert_allclose(_value(scaled["scales"], 0), [0.8807971, 0.1192029], rtol=1e-6)
    constant = schedules.build_loss_weight_schedules(dataclasses.replace(base, kind="none"))
    assert float(_value(constant["identity"], 0)) == pytest.approx(1.0)
    assert float(_value(constant["metric"], 10**6)) == pytest.approx(1.0)
    assert float(_value(constant["pixel"], 0)) == 0.0


def test_build_rejects_unknown_kind_and_pixel_decay_without_weight():
    with pytest.raises(ValueError, match=r"unknown schedule kind 'linear'; choose one of "
                                         r"\('exponential', 'decaying_pixel'"):
        schedules.build_loss_weight_schedules(ScheduleConfig(kind="linear"))
    with pytest.raises(ValueError, match="needs pixel_weight > 0"):
        schedules.build_loss_weight_schedules(ScheduleConfig(kind="decaying_pixel"))
    with pytest.raises(ValueError, match="tau must be"):
        schedules.build_loss_weight_schedules(ScheduleConfig(tau=-1.0))


def test_build_from_every_preset():
    for preset in ("smoke", "cpu64", "paper128"):
        config = get_config(preset)
        built = schedules.build_loss_weight_schedules(
            config.schedule, pixel_weight=config.losses.l1_weight,
            num_scales=config.generator.rgb_scales,
            perceptual_weight=config.losses.perceptual_weight,
            adversarial_weight=config.losses.adversarial_weight)
        # Every preset regresses first: identity, pixels and the perceptual term at their
        # full weights from step 0, no critic until regression_steps.
        start = config.schedule.regression_steps
        assert config.schedule.kind == "two_phase" and start > 0
        assert float(_value(built["identity"], 0)) == config.schedule.identity_max
        assert float(_value(built["perceptual"], 0)) == config.losses.perceptual_weight
        assert float(_value(built["adversarial"], start)) == 0.0
        assert float(_value(built["adversarial"], start + 1)) > 0.0
        assert _value(built["scales"], 0).shape == (config.generator.rgb_scales,)


def test_linear_ramp_golden():
    ramp = schedules.LinearRamp(0.4, start=100, ramp_steps=50)
    # 0 up to the start, 0.4 * 25 / 50 = 0.2 half-way, 0.4 from start + ramp_steps on.
    values = [float(_value(ramp, step)) for step in (0, 100, 125, 150, 10**6)]
    assert values == pytest.approx([0.0, 0.0, 0.2, 0.4, 0.4], rel=1e-6)
    jump = schedules.LinearRamp(2.0, start=10)
    assert [float(_value(jump, step)) for step in (10, 11)] == [0.0, 2.0]
    with pytest.raises(ValueError, match="ramp_steps must be"):
        schedules.LinearRamp(1.0, ramp_steps=-1)


def test_two_phase_kind_golden():
    built = schedules.build_loss_weight_schedules(
        ScheduleConfig(kind="two_phase", identity_max=1.5, metric_max=0.5, tau=100.0,
                       regression_steps=200, critic_ramp=40),
        pixel_weight=2.0, perceptual_weight=0.7, adversarial_weight=0.1)
    at = {name: [float(np.asarray(_value(s, t)).ravel()[0]) for t in (0, 200, 220, 300)]
          for name, s in built.items()}
    assert at["identity"] == pytest.approx([1.5] * 4)
    assert at["perceptual"] == pytest.approx([0.7] * 4)
    # The pixel term holds its weight through the regression, then decays: 2 e^-1 at +tau.
    assert at["pixel"] == pytest.approx([2.0, 2.0, 2.0 * math.exp(-0.2), 0.7357589], rel=1e-6)
    # The metric rises from the end of the regression: 0.5 (1 - e^-1) at +tau.
    assert at["metric"] == pytest.approx([0.0, 0.0, 0.5 * (1 - math.exp(-0.2)), 0.3160603],
                                         rel=1e-6)
    assert at["adversarial"] == pytest.approx([0.0, 0.0, 0.05, 0.1], rel=1e-6)


def test_docs_plot_script_writes_a_small_png(tmp_path):
    script = pathlib.Path(__file__).resolve().parents[2] / "docs" / "plot_schedules.py"
    spec = importlib.util.spec_from_file_location("plot_schedules", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    written = module.plot_schedules("smoke", tmp_path / "schedules.png")
    data = written.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert 5_000 < len(data) < 100_000
