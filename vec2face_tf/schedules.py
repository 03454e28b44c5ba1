"""Exponential loss-weighting schedules over training steps (DESIGN §1.7).

The identity and metric terms start at weight 0 and ramp up exponentially against the
adversarial term, ``w(t) = w_max * (1 - exp(-t / tau))``: early in training the generator first
learns to make faces at all, and identity pressure grows as the images become worth judging.
Options for ablations: an exponentially decaying pixel (L1) term, exponential weights over the
generator's output scales that move from coarse to fine, and constant weights (``none``).

Every schedule is a serialisable ``keras.optimizers.schedules.LearningRateSchedule``: it can be
called with a Python int, a tensor or a ``tf.Variable`` step (also inside ``tf.function``),
returns float32, and round-trips through ``keras.saving.serialize_keras_object``. Negative
steps are treated as step 0.
"""

from __future__ import annotations

import math

import keras
from keras import ops

from vec2face_tf.config import ScheduleConfig

SCHEDULE_KINDS = ("exponential", "decaying_pixel", "scale_weights", "none", "two_phase")
DEFAULT_SCALE_SHARPNESS = 2.0


def _check_finite(name: str, value: float, minimum: float, strict: bool = False) -> float:
    value = float(value)
    too_small = value <= minimum if strict else value < minimum
    if not math.isfinite(value) or too_small:
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum:g}, got {value}")
    return value


def _step_as_float(step):
    return ops.maximum(ops.cast(step, "float32"), 0.0)


@keras.saving.register_keras_serializable(package="vec2face")
class ExponentialRamp(keras.optimizers.schedules.LearningRateSchedule):
    """``w(t) = w_max * (1 - exp(-t / tau))``: 0 at t = 0, 63 % of ``w_max`` at t = tau.

    Args:
      w_max: the weight approached as training goes on, >= 0.
      tau: the time constant in steps, > 0.
    """

    def __init__(self, w_max: float, tau: float, start: int = 0):
        self.w_max = _check_finite("w_max", w_max, 0.0)
        self.tau = _check_finite("tau", tau, 0.0, strict=True)
        self.start = int(_check_finite("start", start, 0.0))

    def __call__(self, step):
        return self.w_max * (1.0 - ops.exp(-_step_as_float(step - self.start) / self.tau))

    def get_config(self) -> dict:
        return {"w_max": self.w_max, "tau": self.tau, "start": self.start}


@keras.saving.register_keras_serializable(package="vec2face")
class ExponentialDecay(keras.optimizers.schedules.LearningRateSchedule):
    """``w(t) = w0 * exp(-t / tau)``, for a pixel term that should fade as training goes on.

    The same curve as ``keras.optimizers.schedules.ExponentialDecay(w0, tau, exp(-1))``, but
    parametrised by the time constant ``tau`` like ``ExponentialRamp``, so one config field
    drives both.

    Args:
      w0: the weight at step 0, >= 0.
      tau: the time constant in steps, > 0.
    """

    def __init__(self, w0: float, tau: float, start: int = 0):
        self.w0 = _check_finite("w0", w0, 0.0)
        self.tau = _check_finite("tau", tau, 0.0, strict=True)
        self.start = int(_check_finite("start", start, 0.0))

    def __call__(self, step):
        return self.w0 * ops.exp(-_step_as_float(step - self.start) / self.tau)

    def get_config(self) -> dict:
        return {"w0": self.w0, "tau": self.tau, "start": self.start}


@keras.saving.register_keras_serializable(package="vec2face")
class ScaleWeights(keras.optimizers.schedules.LearningRateSchedule):
    """Normalised exponential weights over N generator output scales, moving coarse to fine.

    With progress ``p(t) = 1 - exp(-t / tau)`` and scale index ``s`` (0 = coarsest,
    N - 1 = finest), ``w_s(t) = softmax_s(k * (2 p(t) - 1) * s / (N - 1))``. At t = 0 the
    coarsest scale has ``exp(k)`` times the weight of the finest; the weights are equal at
    ``t = tau * ln 2``; and as t grows the finest has ``exp(k)`` times the weight of the
    coarsest. ``k = 0`` gives equal weights at every step.

    Args:
      num_scales: N, the number of output scales (``GeneratorConfig.rgb_scales``), >= 1.
      tau: the time constant in steps, > 0.
      sharpness: k, >= 0.

    Returns (when called with a step):
      float32[N], non-negative and summing to 1.
    """

    def __init__(self, num_scales: int, tau: float, sharpness: float = DEFAULT_SCALE_SHARPNESS):
        if isinstance(num_scales, bool) or not isinstance(num_scales, int) or num_scales < 1:
            raise ValueError(f"num_scales must be an integer >= 1, got {num_scales!r}")
        self.num_scales = num_scales
        self.tau = _check_finite("tau", tau, 0.0, strict=True)
        self.sharpness = _check_finite("sharpness", sharpness, 0.0)

    def __call__(self, step):
        progress = 1.0 - ops.exp(-_step_as_float(step) / self.tau)
        if self.num_scales == 1:
            return ops.ones([1], dtype="float32") + 0.0 * progress
        positions = ops.arange(self.num_scales, dtype="float32") / (self.num_scales - 1)
        return ops.softmax(self.sharpness * (2.0 * progress - 1.0) * positions)

    def get_config(self) -> dict:
        return {"num_scales": self.num_scales, "tau": self.tau, "sharpness": self.sharpness}


@keras.saving.register_keras_serializable(package="vec2face")
class LinearRamp(keras.optimizers.schedules.LearningRateSchedule):
    """0 up to step ``start``, then linear to ``w_max`` over ``ramp_steps``, then ``w_max``.

    Brings the critic in after the regression phase: a critic at full weight from its first
    step, while it still tells real from fake at random, would push the generator anywhere.

    Args:
      w_max: the final weight, >= 0.
      start: the last step at weight 0, >= 0.
      ramp_steps: steps from 0 to ``w_max``; 0 jumps at ``start``.
    """

    def __init__(self, w_max: float, start: int = 0, ramp_steps: int = 0):
        self.w_max = _check_finite("w_max", w_max, 0.0)
        self.start = int(_check_finite("start", start, 0.0))
        self.ramp_steps = int(_check_finite("ramp_steps", ramp_steps, 0.0))

    def __call__(self, step):
        elapsed = _step_as_float(step - self.start)
        if self.ramp_steps == 0:
            return self.w_max * ops.cast(elapsed > 0.0, "float32")
        return self.w_max * ops.minimum(elapsed / float(self.ramp_steps), 1.0)

    def get_config(self) -> dict:
        return {"w_max": self.w_max, "start": self.start, "ramp_steps": self.ramp_steps}


@keras.saving.register_keras_serializable(package="vec2face")
class Constant(keras.optimizers.schedules.LearningRateSchedule):
    """``w(t) = value`` at every step (schedule kind ``none``, for ablations).

    Args:
      value: the weight, >= 0.
    """

    def __init__(self, value: float):
        self.value = _check_finite("value", value, 0.0)

    def __call__(self, step):
        # Multiplying by zero keeps the step in the graph, so the result is a float32 tensor
        # of the same kind as the other schedules' (eager or symbolic).
        return self.value + 0.0 * _step_as_float(step)

    def get_config(self) -> dict:
        return {"value": self.value}


def build_loss_weight_schedules(schedule_config: ScheduleConfig, *, pixel_weight: float = 0.0,
                                num_scales: int = 2, perceptual_weight: float = 0.0,
                                adversarial_weight: float = 1.0,
                                ) -> dict[str, keras.optimizers.schedules.LearningRateSchedule]:
    """Builds the loss-weight schedules selected by ``schedule_config.kind``.

    All kinds return the same keys, so a training step can always read every weight:

    ============== ========================= ====================== ====================
    kind           identity / metric         pixel                  scales
    ============== ========================= ====================== ====================
    exponential    ExponentialRamp           Constant               equal weights
    decaying_pixel ExponentialRamp           ExponentialDecay       equal weights
    scale_weights  ExponentialRamp           Constant               ScaleWeights
    none           Constant (the maxima)     Constant               equal weights
    two_phase      identity Constant;        Constant, then         equal weights
                   metric ExponentialRamp    ExponentialDecay
                   from regression_steps     from regression_steps
    ============== ========================= ====================== ====================

    ``perceptual`` is constant for every kind. ``adversarial`` is constant for every kind but
    ``two_phase``, where it is 0 for the ``regression_steps`` and then a ``LinearRamp`` over
    ``critic_ramp`` steps: the trainer skips the critic (and the flow) while it is 0.

    Args:
      schedule_config: ``kind``, ``identity_max``, ``metric_max`` and ``tau``.
      pixel_weight: the pixel (L1) weight at step 0 (``LossConfig.l1_weight``), >= 0; it must
        be > 0 for ``decaying_pixel``, which would otherwise have nothing to decay.
      num_scales: number of generator output scales (``GeneratorConfig.rgb_scales``), >= 1.
      perceptual_weight: the perceptual term's weight (``LossConfig.perceptual_weight``).
      adversarial_weight: the adversarial term's weight (``LossConfig.adversarial_weight``).

    Returns:
      ``{"identity", "metric", "pixel", "perceptual", "adversarial", "scales"}`` mapped to
      schedules; ``scales`` returns a
      float32[num_scales] weight vector (index 0 the coarsest scale), the others a scalar.

    Raises:
      ValueError: for an unknown kind (naming the allowed ones) or out-of-range values.
    """
    kind = schedule_config.kind
    if kind not in SCHEDULE_KINDS:
        raise ValueError(f"unknown schedule kind {kind!r}; choose one of {SCHEDULE_KINDS}")
    tau = schedule_config.tau
    if kind == "decaying_pixel" and not pixel_weight > 0:
        raise ValueError("schedule kind 'decaying_pixel' needs pixel_weight > 0 (set "
                         f"losses.l1_weight), got {pixel_weight}")
    equal_scales = ScaleWeights(num_scales, tau, sharpness=0.0)
    shared = {"perceptual": Constant(perceptual_weight),
              "adversarial": Constant(adversarial_weight)}
    if kind == "none":
        return {"identity": Constant(schedule_config.identity_max),
                "metric": Constant(schedule_config.metric_max),
                "pixel": Constant(pixel_weight),
                "scales": equal_scales, **shared}
    if kind == "two_phase":
        start = schedule_config.regression_steps
        return {"identity": Constant(schedule_config.identity_max),
                "metric": ExponentialRamp(schedule_config.metric_max, tau, start=start),
                "pixel": ExponentialDecay(pixel_weight, tau, start=start),
                "scales": equal_scales,
                "perceptual": Constant(perceptual_weight),
                "adversarial": LinearRamp(adversarial_weight, start=start,
                                          ramp_steps=schedule_config.critic_ramp)}
    return {
        "identity": ExponentialRamp(schedule_config.identity_max, tau),
        "metric": ExponentialRamp(schedule_config.metric_max, tau),
        "pixel": (ExponentialDecay(pixel_weight, tau) if kind == "decaying_pixel"
                  else Constant(pixel_weight)),
        "scales": ScaleWeights(num_scales, tau) if kind == "scale_weights" else equal_scales,
        **shared,
    }
