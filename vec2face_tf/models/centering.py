"""Centred unit normalisation of engine features, the first layer of G and of D."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vec2face")
class CenteredUnitNormalization(keras.layers.Layer):
    """``unit(unit(x) - center)``: the direction of a feature away from the training mean.

    Engine features of different people are far from isotropic (dlib vectors of two strangers
    have a mean cosine of about 0.83), so the plain unit vectors a network sees differ by a few
    percent from one person to the next, and a generator can ignore them and emit one face for
    everyone. Removing the mean of the training vectors first leaves only the part that tells
    people apart. ``center`` is a non-trainable weight, saved and exported with the model; at
    its initial value zero the layer is plain unit normalisation.

    Args:
      epsilon: floor of the norms, so a zero row gives zeros, not NaN.
    """

    def __init__(self, epsilon: float = 1e-12, **kwargs):
        super().__init__(**kwargs)
        self.epsilon = float(epsilon)
        self.center = None

    def build(self, input_shape):
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(f"CenteredUnitNormalization needs a known feature dimension, got "
                             f"{input_shape}")
        self.center = self.add_weight(shape=(dim,), initializer="zeros", trainable=False,
                                      name="center")

    def set_center(self, center) -> None:
        """Sets the mean engine vector of the training faces (float[D])."""
        center = ops.convert_to_numpy(center).astype("float32")
        if center.shape != tuple(self.center.shape):
            raise ValueError(f"center must have shape {tuple(self.center.shape)}, got "
                             f"{center.shape}")
        self.center.assign(center)

    def _unit(self, values):
        norms = ops.sqrt(ops.maximum(ops.sum(ops.square(values), axis=-1, keepdims=True),
                                     self.epsilon ** 2))
        return values / norms

    def call(self, inputs):
        inputs = ops.cast(inputs, "float32")
        return self._unit(self._unit(inputs) - ops.cast(self.center, "float32"))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "epsilon": self.epsilon}
