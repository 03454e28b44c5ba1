"""The bijective network H of DESIGN §1 item 1: a Glow-style normalising flow.

Each step is ActNorm -> invertible 1x1 convolution (LU-decomposed) -> affine coupling. A level
squeezes the image 2x2 into channels, runs ``steps_per_level`` steps, and (except the last
level) splits off half of its channels as that level's latent. Every layer has an exact
``inverse`` and returns the exact log|det J| of its forward map, so the flow is trained by
maximum likelihood (``nll_bits_per_dim``) and no two images ever map to the same latents.

Every flow layer follows one protocol:
  ``forward(x) -> (y, log_det)`` with ``log_det`` of shape [B]; ``inverse(y) -> x``;
  ``call`` is ``forward``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

_PACKAGE = "vec2face"
PRIORS = ("standard_normal", "learned")

# The coupling scale is sigmoid(raw + _SCALE_OFFSET) / sigmoid(_SCALE_OFFSET): bounded in
# (0, 1.135), so no step can blow activations up, and exactly 1 when the last conv is still
# zero, so every step starts as the identity (Glow's sigmoid(raw + 2) without the rescaling
# would shrink every half by 0.88 at init).
_SCALE_OFFSET = 2.0
_LOG_SIGMOID_OFFSET = math.log(1.0 / (1.0 + math.exp(-_SCALE_OFFSET)))
# Keeps ActNorm's data-dependent init finite on a channel that is constant in the first batch.
_ACTNORM_EPSILON = 1e-6


def _check_image_tensor(x: tf.Tensor, what: str) -> None:
    """Raises ValueError unless ``x`` has a static rank-4 NHWC shape."""
    if x.shape.rank != 4:
        raise ValueError(f"{what} must be a rank-4 [B, H, W, C] tensor, got shape {x.shape}")


def _spatial_size(x: tf.Tensor) -> tf.Tensor:
    """Returns h * w of an NHWC tensor as a scalar of x's dtype."""
    shape = tf.shape(x)
    return tf.cast(shape[1] * shape[2], x.dtype)


def squeeze(x: tf.Tensor) -> tf.Tensor:
    """Space-to-depth 2x2: [B, H, W, C] -> [B, H/2, W/2, 4C] (a volume-preserving bijection).

    Args:
      x: a rank-4 NHWC tensor with even H and W.

    Returns:
      The squeezed tensor.

    Raises:
      ValueError: for a wrong rank or an odd H or W.
    """
    _check_image_tensor(x, "squeeze input")
    height, width = x.shape[1], x.shape[2]
    if (height is not None and height % 2) or (width is not None and width % 2):
        raise ValueError(f"squeeze needs even height and width, got {height}x{width}")
    return tf.nn.space_to_depth(x, 2)


def unsqueeze(x: tf.Tensor) -> tf.Tensor:
    """Depth-to-space 2x2, the exact inverse of ``squeeze``: [B, h, w, 4c] -> [B, 2h, 2w, c].

    Args:
      x: a rank-4 NHWC tensor whose channel count is a multiple of 4.

    Returns:
      The unsqueezed tensor.

    Raises:
      ValueError: for a wrong rank or a channel count that is not a multiple of 4.
    """
    _check_image_tensor(x, "unsqueeze input")
    if x.shape[-1] is not None and x.shape[-1] % 4:
        raise ValueError(f"unsqueeze needs a channel count divisible by 4, got {x.shape[-1]}")
    return tf.nn.depth_to_space(x, 2)


def split_channels(x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Splits channels into (first ceil(C/2), last floor(C/2)); concat along -1 inverts it.

    Args:
      x: a rank-4 NHWC tensor with at least 2 channels.

    Returns:
      The two halves.
    """
    channels = x.shape[-1]
    if channels is None or channels < 2:
        raise ValueError(f"cannot split {channels} channels into two halves")
    first = channels - channels // 2
    return x[..., :first], x[..., first:]


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ActNorm(keras.layers.Layer):
    """Per-channel affine normalisation ``y = (x + bias) * exp(log_scale)``.

    On its first forward pass (any batch, any mode) bias and log_scale are set from that batch
    so that the outputs are zero-mean, unit-variance per channel. Whether this has happened
    is the non-trainable variable ``initialized``: it is saved with the weights, so a restored
    layer is never re-initialised. Under a multi-replica ``tf.distribute`` strategy run one
    forward pass eagerly (outside the strategy's ``run``) before training, so that every
    replica starts from the same statistics.
    """

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("ActNorm needs a known channel count")
        self.bias = self.add_weight(name="bias", shape=(channels,), initializer="zeros")
        self.log_scale = self.add_weight(name="log_scale", shape=(channels,),
                                         initializer="zeros")
        self.initialized = self.add_weight(name="initialized", shape=(), initializer="zeros",
                                           trainable=False)

    def _initialize_from(self, x: tf.Tensor) -> tf.Tensor:
        mean, variance = tf.nn.moments(x, axes=[0, 1, 2])
        self.bias.assign(-mean)
        self.log_scale.assign(-tf.math.log(tf.sqrt(variance) + _ACTNORM_EPSILON))
        self.initialized.assign(tf.ones_like(self.initialized))
        return tf.constant(True)

    def forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Normalises ``x`` (initialising from it first if this layer never ran).

        Args:
          x: [B, h, w, C].

        Returns:
          (y, log_det) with log_det = h * w * sum(log_scale), shape [B].
        """
        x = tf.convert_to_tensor(x, self.compute_dtype)
        tf.cond(self.initialized > 0.5, lambda: tf.constant(False),
                lambda: self._initialize_from(x))
        y = (x + self.bias) * tf.exp(self.log_scale)
        log_det = _spatial_size(x) * tf.reduce_sum(self.log_scale)
        return y, tf.fill(tf.shape(x)[:1], log_det)

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """Exact inverse of ``forward``.

        Args:
          y: [B, h, w, C].

        Returns:
          x with forward(x)[0] == y.
        """
        y = tf.convert_to_tensor(y, self.compute_dtype)
        return y * tf.exp(-self.log_scale) - self.bias

    def call(self, x):
        return self.forward(x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class InvertibleConv1x1(keras.layers.Layer):
    """Invertible 1x1 convolution ``y = x W^T`` per pixel, with ``W = P L (U + diag(s))``.

    P is a fixed permutation, L lower-triangular with a unit diagonal, U strictly upper, and
    s = sign * exp(log_abs_diag) with the signs fixed at init. log|det W| is then
    sum(log_abs_diag), so the layer's log-det costs O(C) instead of a C x C determinant.
    W starts as a random rotation (decomposed with ``tf.linalg.lu``).

    Args:
      seed: seeds the initial rotation; None draws it from numpy's global random state.
    """

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.seed = seed

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None:
            raise ValueError("InvertibleConv1x1 needs a known channel count")
        permutation, lower, upper, sign, log_abs_diag = self._initial_decomposition(channels)

        def constant(value):
            return lambda shape, dtype=None: tf.constant(value, dtype=dtype or "float32")

        self.permutation = self.add_weight(name="permutation", shape=(channels, channels),
                                           initializer=constant(permutation), trainable=False)
        self.sign_diag = self.add_weight(name="sign_diag", shape=(channels,),
                                         initializer=constant(sign), trainable=False)
        self.lower = self.add_weight(name="lower", shape=(channels, channels),
                                     initializer=constant(lower))
        self.upper = self.add_weight(name="upper", shape=(channels, channels),
                                     initializer=constant(upper))
        self.log_abs_diag = self.add_weight(name="log_abs_diag", shape=(channels,),
                                            initializer=constant(log_abs_diag))
        self._lower_mask = np.tril(np.ones((channels, channels), np.float32), -1)

    def _initial_decomposition(self, channels: int):
        # Without a seed, draw from numpy's global state, which keras.utils.set_random_seed
        # fixes: a seeded run must start from the same flow in every process.
        seed = self.seed if self.seed is not None else np.random.randint(2**31)  # noqa: NPY002
        rng = np.random.default_rng(seed)
        rotation, _ = np.linalg.qr(rng.standard_normal((channels, channels)))
        # Build can run inside a traced function (e.g. a symbolic call); the decomposition is
        # a one-off numpy value, so compute it eagerly.
        with tf.init_scope():
            packed, rows = tf.linalg.lu(tf.constant(rotation, tf.float64))
            packed, rows = packed.numpy(), rows.numpy()
        # tf.linalg.lu gives rotation[rows] = L U, i.e. rotation = P^T L U.
        permutation = np.eye(channels)[rows].T
        lower = np.tril(packed, -1)
        diagonal = np.diag(packed)
        upper = np.triu(packed, 1)
        return (permutation.astype(np.float32), lower.astype(np.float32),
                upper.astype(np.float32), np.sign(diagonal).astype(np.float32),
                np.log(np.abs(diagonal)).astype(np.float32))

    def _factors(self) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        dtype = self.compute_dtype
        mask = tf.constant(self._lower_mask, dtype)
        channels = self._lower_mask.shape[0]
        lower = tf.cast(self.lower, dtype) * mask + tf.eye(channels, dtype=dtype)
        diagonal = tf.cast(self.sign_diag, dtype) * tf.exp(tf.cast(self.log_abs_diag, dtype))
        upper = tf.cast(self.upper, dtype) * tf.transpose(mask) + tf.linalg.diag(diagonal)
        return tf.cast(self.permutation, dtype), lower, upper

    def weight_matrix(self) -> tf.Tensor:
        """Returns the current C x C matrix W (output channel, input channel)."""
        permutation, lower, upper = self._factors()
        return permutation @ lower @ upper

    def forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Mixes channels per pixel.

        Args:
          x: [B, h, w, C].

        Returns:
          (y, log_det) with log_det = h * w * sum(log_abs_diag), shape [B].
        """
        x = tf.convert_to_tensor(x, self.compute_dtype)
        y = tf.einsum("bhwi,oi->bhwo", x, self.weight_matrix())
        log_det = _spatial_size(x) * tf.reduce_sum(tf.cast(self.log_abs_diag, x.dtype))
        return y, tf.fill(tf.shape(x)[:1], log_det)

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """Exact inverse of ``forward`` by two triangular solves (no general matrix inverse).

        Args:
          y: [B, h, w, C].

        Returns:
          x with forward(x)[0] == y.
        """
        y = tf.convert_to_tensor(y, self.compute_dtype)
        permutation, lower, upper = self._factors()
        identity = tf.eye(self._lower_mask.shape[0], dtype=y.dtype)
        # W^-1 = U^-1 L^-1 P^T.
        lower_inverse = tf.linalg.triangular_solve(lower, identity, lower=True)
        upper_inverse = tf.linalg.triangular_solve(upper, identity, lower=False)
        inverse_matrix = upper_inverse @ lower_inverse @ tf.transpose(permutation)
        return tf.einsum("bhwi,oi->bhwo", y, inverse_matrix)

    def call(self, x):
        return self.forward(x)

    def get_config(self):
        config = super().get_config()
        config.update({"seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class AffineCoupling(keras.layers.Layer):
    """Affine coupling: the first half of the channels passes through unchanged and sets a
    shift and a scale for the second half, ``y_b = (x_b + shift(x_a)) * scale(x_a)``.

    The conditioning net is conv3x3 -> ReLU -> conv1x1 -> ReLU -> conv3x3, its last conv
    zero-initialised so the step starts as the exact identity (see ``_SCALE_OFFSET``).

    Args:
      hidden_channels: width of the conditioning net.
    """

    def __init__(self, hidden_channels: int, **kwargs):
        super().__init__(**kwargs)
        if hidden_channels < 1:
            raise ValueError(f"hidden_channels must be >= 1, got {hidden_channels}")
        self.hidden_channels = hidden_channels

    def build(self, input_shape):
        channels = input_shape[-1]
        if channels is None or channels < 2:
            raise ValueError(f"AffineCoupling needs >= 2 channels, got {channels}")
        self.passive_channels = channels - channels // 2
        self.active_channels = channels // 2
        self.conditioner = [
            keras.layers.Conv2D(self.hidden_channels, 3, padding="same", activation="relu",
                                dtype=self.dtype_policy, name="conv_in"),
            keras.layers.Conv2D(self.hidden_channels, 1, activation="relu",
                                dtype=self.dtype_policy, name="conv_hidden"),
            keras.layers.Conv2D(2 * self.active_channels, 3, padding="same",
                                kernel_initializer="zeros", bias_initializer="zeros",
                                dtype=self.dtype_policy, name="conv_out"),
        ]
        shape = tuple(input_shape[:-1]) + (self.passive_channels,)
        for layer in self.conditioner:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)

    def _shift_and_log_scale(self, passive: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        hidden = passive
        for layer in self.conditioner:
            hidden = layer(hidden)
        shift, raw_scale = hidden[..., 0::2], hidden[..., 1::2]
        log_scale = tf.math.log_sigmoid(raw_scale + _SCALE_OFFSET) - _LOG_SIGMOID_OFFSET
        return shift, log_scale

    def forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Transforms the second half of the channels conditioned on the first.

        Args:
          x: [B, h, w, C].

        Returns:
          (y, log_det) with log_det = sum of log(scale) over h, w and the active channels.
        """
        x = tf.convert_to_tensor(x, self.compute_dtype)
        passive, active = split_channels(x)
        shift, log_scale = self._shift_and_log_scale(passive)
        active = (active + shift) * tf.exp(log_scale)
        return tf.concat([passive, active], axis=-1), tf.reduce_sum(log_scale, axis=[1, 2, 3])

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """Exact inverse of ``forward``.

        Args:
          y: [B, h, w, C].

        Returns:
          x with forward(x)[0] == y.
        """
        y = tf.convert_to_tensor(y, self.compute_dtype)
        passive, active = split_channels(y)
        shift, log_scale = self._shift_and_log_scale(passive)
        active = active * tf.exp(-log_scale) - shift
        return tf.concat([passive, active], axis=-1)

    def call(self, x):
        return self.forward(x)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_channels": self.hidden_channels})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FlowStep(keras.layers.Layer):
    """One Glow step: ActNorm -> InvertibleConv1x1 -> AffineCoupling.

    Args:
      hidden_channels: width of the coupling's conditioning net.
      seed: seeds the 1x1 convolution's initial rotation; None draws it from numpy's global
        random state.
    """

    def __init__(self, hidden_channels: int, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_channels = hidden_channels
        self.seed = seed
        self.actnorm = ActNorm(dtype=self.dtype_policy, name="actnorm")
        self.conv1x1 = InvertibleConv1x1(seed=seed, dtype=self.dtype_policy, name="conv1x1")
        self.coupling = AffineCoupling(hidden_channels, dtype=self.dtype_policy,
                                       name="coupling")

    def build(self, input_shape):
        for layer in (self.actnorm, self.conv1x1, self.coupling):
            if not layer.built:
                layer.build(input_shape)

    def forward(self, x: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """Runs the three layers.

        Args:
          x: [B, h, w, C].

        Returns:
          (y, log_det) with log_det [B] summed over the three layers.
        """
        x, log_det = self.actnorm.forward(x)
        x, conv_log_det = self.conv1x1.forward(x)
        x, coupling_log_det = self.coupling.forward(x)
        return x, log_det + conv_log_det + coupling_log_det

    def inverse(self, y: tf.Tensor) -> tf.Tensor:
        """Exact inverse of ``forward``.

        Args:
          y: [B, h, w, C].

        Returns:
          x with forward(x)[0] == y.
        """
        return self.actnorm.inverse(self.conv1x1.inverse(self.coupling.inverse(y)))

    def call(self, x):
        return self.forward(x)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_channels": self.hidden_channels, "seed": self.seed})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LearnedPrior(keras.layers.Layer):
    """Glow's learned prior, written as a bijection: ``eps = (z - mean) * exp(-log_std)``.

    With ``conditional=True`` (a split level) mean and log_std come from a zero-initialised
    3x3 conv over the channels that stay in the flow; otherwise (the top level) they are
    learned per-position constants. A Gaussian prior N(mean, std) on z is the same as a
    standard normal on eps plus this layer's log-det, so ``nll_bits_per_dim`` stays valid and
    the layer starts as the identity.

    Args:
      conditional: condition on the kept channels (split levels) or not (the top level).
    """

    def __init__(self, conditional: bool, **kwargs):
        super().__init__(**kwargs)
        self.conditional = conditional

    def build(self, latent_shape, condition_shape=None):
        channels = latent_shape[-1]
        if self.conditional:
            if condition_shape is None:
                raise ValueError("a conditional LearnedPrior needs the condition's shape")
            self.conditioner = keras.layers.Conv2D(
                2 * channels, 3, padding="same", kernel_initializer="zeros",
                bias_initializer="zeros", dtype=self.dtype_policy, name="conv_prior")
            self.conditioner.build(condition_shape)
        else:
            self.mean = self.add_weight(name="mean", shape=tuple(latent_shape[1:]),
                                        initializer="zeros")
            self.log_std = self.add_weight(name="log_std", shape=tuple(latent_shape[1:]),
                                           initializer="zeros")

    def _mean_and_log_std(self, condition: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
        if not self.conditional:
            return self.mean, self.log_std
        if condition is None:
            raise ValueError("a conditional LearnedPrior needs its condition tensor")
        hidden = self.conditioner(condition)
        return hidden[..., 0::2], hidden[..., 1::2]

    def forward(self, z: tf.Tensor, condition: tf.Tensor | None = None
                ) -> tuple[tf.Tensor, tf.Tensor]:
        """Whitens ``z`` under its learned prior.

        Args:
          z: [B, h, w, c] latent.
          condition: [B, h, w, c'] kept channels (conditional prior only).

        Returns:
          (eps, log_det) with log_det = -sum(log_std), shape [B].
        """
        z = tf.convert_to_tensor(z, self.compute_dtype)
        mean, log_std = self._mean_and_log_std(condition)
        eps = (z - mean) * tf.exp(-log_std)
        log_det = -tf.reduce_sum(log_std * tf.ones_like(z), axis=[1, 2, 3])
        return eps, log_det

    def inverse(self, eps: tf.Tensor, condition: tf.Tensor | None = None) -> tf.Tensor:
        """Exact inverse of ``forward``: z = eps * exp(log_std) + mean.

        Args:
          eps: [B, h, w, c] whitened latent.
          condition: the same kept channels ``forward`` saw (conditional prior only).

        Returns:
          z with forward(z, condition)[0] == eps.
        """
        eps = tf.convert_to_tensor(eps, self.compute_dtype)
        mean, log_std = self._mean_and_log_std(condition)
        return eps * tf.exp(log_std) + mean

    def call(self, z, condition=None):
        return self.forward(z, condition)

    def get_config(self):
        config = super().get_config()
        config.update({"conditional": self.conditional})
        return config


@keras.saving.register_keras_serializable(package=_PACKAGE)
class BijectiveFlow(keras.Model):
    """The multi-scale Glow flow H: images in [-0.5, 0.5] <-> a list of latents, one a level.

    The flow's own dtype policy is float32 unless ``dtype`` says otherwise, whatever the
    global policy: log-dets and exact inverses do not survive float16.

    Args:
      image_shape: (H, W, C); H and W divisible by 2**levels.
      levels: number of squeeze levels L (>= 1); levels 1..L-1 each split off half their
        channels as a latent, the last level keeps all of them.
      steps_per_level: flow steps K per level (>= 1).
      hidden_channels: width of each coupling's conditioning net.
      num_bits: bits per channel the data is quantised to (``preprocess``, NLL).
      seed: seeds the 1x1 convolutions' initial rotations; None draws them from numpy's global
        random state.
      prior: "standard_normal" (latents are the flow's raw outputs) or "learned" (Glow's
        learned prior: a conditional Gaussian on each split latent given the kept channels,
        a learned Gaussian on the top latent; the returned latents are then whitened by it,
        so they are standard normal under the model either way).
    """

    def __init__(self, image_shape: Sequence[int] = (64, 64, 3), levels: int = 3,
                 steps_per_level: int = 8, hidden_channels: int = 128, num_bits: int = 5,
                 seed: int | None = None, prior: str = "standard_normal", **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        image_shape = tuple(int(size) for size in image_shape)
        if len(image_shape) != 3:
            raise ValueError(f"image_shape must be (H, W, C), got {image_shape}")
        if levels < 1 or steps_per_level < 1:
            raise ValueError(f"levels and steps_per_level must be >= 1, got {levels} and "
                             f"{steps_per_level}")
        factor = 2 ** levels
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(f"image height and width must be divisible by 2**levels = "
                             f"{factor}, got {image_shape[0]}x{image_shape[1]}")
        _check_num_bits(num_bits)
        if prior not in PRIORS:
            raise ValueError(f"unknown flow prior {prior!r}; choose one of {PRIORS}")
        self.prior = prior
        self.image_shape = image_shape
        self.levels = levels
        self.steps_per_level = steps_per_level
        self.hidden_channels = hidden_channels
        self.num_bits = num_bits
        self.seed = seed
        # One flat list (level-major): Keras tracks flat lists of layers reliably.
        self.flow_steps = [
            FlowStep(hidden_channels, seed=None if seed is None else seed + 1000 * level + step,
                     dtype=self.dtype_policy, name=f"level{level}_step{step}")
            for level in range(levels) for step in range(steps_per_level)]
        self.priors = []
        if prior == "learned":
            self.priors = [LearnedPrior(conditional=level < levels - 1, dtype=self.dtype_policy,
                                        name=f"level{level}_prior")
                           for level in range(levels)]
        self.build((None, *image_shape))

    @classmethod
    def from_flow_config(cls, flow_config, resolution: int, channels: int = 3,
                         **kwargs) -> BijectiveFlow:
        """Builds the flow of a ``vec2face_tf.config.FlowConfig``.

        Args:
          flow_config: a ``FlowConfig`` (levels, steps_per_level, hidden_channels, num_bits).
          resolution: image height and width (``DataConfig.resolution``).
          channels: image channels.
          **kwargs: passed to the constructor (seed, prior, name, dtype).

        Returns:
          The built, not yet ActNorm-initialised flow.
        """
        return cls(image_shape=(resolution, resolution, channels), levels=flow_config.levels,
                   steps_per_level=flow_config.steps_per_level,
                   hidden_channels=flow_config.hidden_channels,
                   num_bits=flow_config.num_bits, **kwargs)

    def build(self, input_shape):
        height, width, channels = self.image_shape
        for level in range(self.levels):
            height, width, channels = height // 2, width // 2, channels * 4
            for step in self._steps_of(level):
                if not step.built:
                    step.build((None, height, width, channels))
            latent_channels = channels // 2 if level < self.levels - 1 else channels
            kept_channels = channels - latent_channels
            if self.priors and not self.priors[level].built:
                self.priors[level].build((None, height, width, latent_channels),
                                         (None, height, width, kept_channels))
            channels = kept_channels
        self.built = True

    def _steps_of(self, level: int) -> list[FlowStep]:
        start = level * self.steps_per_level
        return self.flow_steps[start:start + self.steps_per_level]

    @property
    def latent_shapes(self) -> list[tuple[int, int, int]]:
        """The (h, w, c) of each level's latent, level 0 (finest) first."""
        height, width, channels = self.image_shape
        shapes = []
        for level in range(self.levels):
            height, width, channels = height // 2, width // 2, channels * 4
            if level < self.levels - 1:
                shapes.append((height, width, channels // 2))
                channels = channels - channels // 2
            else:
                shapes.append((height, width, channels))
        return shapes

    def forward(self, x: tf.Tensor, training: bool = False
                ) -> tuple[list[tf.Tensor], tf.Tensor]:
        """Maps images to latents.

        The first call ever also initialises every ActNorm from ``x`` (data-dependent init).

        Args:
          x: float[B, H, W, C] in [-0.5, 0.5] (see ``preprocess``).
          training: unused (the flow has no train/test difference); kept for Keras.

        Returns:
          (latents, log_det): ``levels`` tensors of shapes ``latent_shapes`` (finest first)
          and log|det dz/dx| per example, shape [B].

        Raises:
          ValueError: when x's shape does not match ``image_shape``.
        """
        del training
        x = tf.convert_to_tensor(x)
        _check_image_tensor(x, "flow input")
        if tuple(x.shape[1:]) != self.image_shape:
            expected = ", ".join(str(size) for size in self.image_shape)
            raise ValueError(f"flow input must have shape [B, {expected}], got {x.shape}")
        x = tf.cast(x, self.compute_dtype)
        log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
        latents = []
        for level in range(self.levels):
            x = squeeze(x)
            for step in self._steps_of(level):
                x, step_log_det = step.forward(x)
                log_det += step_log_det
            if level < self.levels - 1:
                x, latent = split_channels(x)
                if self.priors:
                    latent, prior_log_det = self.priors[level].forward(latent, x)
                    log_det += prior_log_det
                latents.append(latent)
        if self.priors:
            x, prior_log_det = self.priors[-1].forward(x)
            log_det += prior_log_det
        latents.append(x)
        return latents, log_det

    def inverse(self, latents: Sequence[tf.Tensor]) -> tf.Tensor:
        """Maps latents back to images: the exact inverse of ``forward``.

        Args:
          latents: ``levels`` tensors shaped like ``forward``'s latents.

        Returns:
          float[B, H, W, C] images in the flow's input space.

        Raises:
          ValueError: for a wrong number of latents or a latent of the wrong shape.
        """
        latents = self._check_latents(latents)
        x = latents[-1]
        if self.priors:
            x = self.priors[-1].inverse(x)
        for level in reversed(range(self.levels)):
            if level < self.levels - 1:
                latent = latents[level]
                if self.priors:
                    latent = self.priors[level].inverse(latent, x)
                x = tf.concat([x, latent], axis=-1)
            for step in reversed(self._steps_of(level)):
                x = step.inverse(x)
            x = unsqueeze(x)
        return x

    def call(self, x, training=False):
        return self.forward(x, training=training)

    def _check_latents(self, latents: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        if isinstance(latents, (tf.Tensor, np.ndarray)) or len(latents) != self.levels:
            count = "one tensor" if isinstance(latents, (tf.Tensor, np.ndarray)) else \
                f"{len(latents)} tensors"
            raise ValueError(f"expected a list of {self.levels} latents (one per level), got "
                             f"{count}")
        checked = []
        for level, (latent, expected) in enumerate(zip(latents, self.latent_shapes)):
            latent = tf.cast(tf.convert_to_tensor(latent), self.compute_dtype)
            if latent.shape.rank != 4 or tuple(latent.shape[1:]) != expected:
                raise ValueError(f"latent {level} must have shape [B, {expected[0]}, "
                                 f"{expected[1]}, {expected[2]}], got {latent.shape}")
            checked.append(latent)
        return checked

    @staticmethod
    def preprocess(images: tf.Tensor, num_bits: int, dequantize: bool,
                   seed: int | tf.Tensor | None = None) -> tf.Tensor:
        """Maps generator-range images to the flow's input space.

        Quantises to ``num_bits`` per channel, then either adds uniform dequantisation noise
        within each bin (training) or takes the bin centre (deterministic). The gradient with
        respect to ``images`` is that of ``images / 2`` (straight through the quantiser).

        Args:
          images: float[B, H, W, C] in [-1, 1].
          num_bits: bits kept per channel, 1..8.
          dequantize: add U[0, 1) noise within each bin instead of using its centre.
          seed: an int or a shape-[2] int tensor for stateless, reproducible noise, or an
            int tensor [B, 2] with one seed per image; None uses the global random state.

        Returns:
          float32 x in [-0.5, 0.5].

        Raises:
          ValueError: for a bad num_bits; InvalidArgumentError for values outside [-1, 1]
            or non-finite values.
        """
        _check_num_bits(num_bits)
        images = tf.cast(images, tf.float32)
        tf.debugging.assert_all_finite(images, "flow preprocess: images contain NaN or inf")
        # 1e-3 of slack accepts resizing overshoot; anything further is another value range.
        tf.debugging.assert_greater_equal(
            images, -1.001, message="flow preprocess: images must be in [-1, 1]")
        tf.debugging.assert_less_equal(
            images, 1.001, message="flow preprocess: images must be in [-1, 1]")
        bins = 2.0 ** num_bits
        bin_index = tf.clip_by_value(tf.floor((images + 1.0) * 0.5 * bins), 0.0, bins - 1.0)
        if not dequantize:
            offset = 0.5
        elif seed is None:
            offset = tf.random.uniform(tf.shape(images))
        elif isinstance(seed, tf.Tensor) and seed.shape.rank == 2:
            offset = tf.map_fn(
                lambda image_seed: tf.random.stateless_uniform(tf.shape(images)[1:], image_seed),
                seed, fn_output_signature=tf.float32)
        else:
            if isinstance(seed, int):
                seed = [seed, 0]
            offset = tf.random.stateless_uniform(tf.shape(images), seed=seed)
        quantised = (bin_index + offset) / bins - 0.5
        # Straight through: the value is the quantised one, the gradient the identity's. Floor
        # has no gradient, so without this the GAN's identity and metric losses, which see
        # generated faces through the flow, would send nothing back to the generator.
        continuous = images * 0.5
        return continuous + tf.stop_gradient(quantised - continuous)

    @staticmethod
    def nll_bits_per_dim(latents: Sequence[tf.Tensor], log_det: tf.Tensor,
                         num_bits: int) -> tf.Tensor:
        """Negative log-likelihood of the quantised data in bits per dimension.

        Uses a standard normal prior on every latent (with ``prior="learned"`` the latents are
        already whitened by the learned prior and its log-det is in ``log_det``) and counts
        the -log(2**num_bits) per dimension of the discretisation, so uniform noise over the
        bins scores num_bits.

        Args:
          latents: the per-level latents from ``forward``.
          log_det: the [B] log-det from ``forward``.
          num_bits: bits per channel the data was quantised to.

        Returns:
          float32[B] bits per dimension.
        """
        _check_num_bits(num_bits)
        if not latents:
            raise ValueError("nll_bits_per_dim needs at least one latent")
        log_prior = 0.0
        dims = 0
        for latent in latents:
            latent = tf.cast(latent, tf.float32)
            dims += int(np.prod(latent.shape[1:]))
            log_prior += tf.reduce_sum(-0.5 * (tf.square(latent) + math.log(2 * math.pi)),
                                       axis=[1, 2, 3])
        log_likelihood = log_prior + tf.cast(log_det, tf.float32) - dims * num_bits * math.log(2)
        return -log_likelihood / (dims * math.log(2))

    def get_config(self):
        config = super().get_config()
        config.update({"image_shape": list(self.image_shape), "levels": self.levels,
                       "steps_per_level": self.steps_per_level,
                       "hidden_channels": self.hidden_channels, "num_bits": self.num_bits,
                       "seed": self.seed, "prior": self.prior})
        return config


Glow = BijectiveFlow


def _check_num_bits(num_bits: int) -> None:
    if not isinstance(num_bits, (int, np.integer)) or not 1 <= num_bits <= 8:
        raise ValueError(f"num_bits must be an integer in 1..8, got {num_bits!r}")
