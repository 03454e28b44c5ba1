"""The students: networks distilled from the blackbox engine (DESIGN §1 item 3).

* ``ImageStudent`` (``student.kind=image``, the default): a residual CNN that reads the
  aligned face and predicts the engine's unit feature. It is the engine's differentiable twin:
  the identity loss of the GAN differentiates it, and it is exported beside the generator.
* ``StudentHead`` (``student.kind=flow``): the paper's ``C`` of ``S = C∘H``, kept for the
  ablation. It never learnt identity here (centred cosine 0.05-0.12 with dlib, DESIGN §1).

``C`` reads the flow's multi-scale latents ``H(I)`` (a list of [B, h_l, w_l, c_l] tensors) and
predicts the engine's unit feature. Each level gets its own small conv tower: a 3x3 conv, then
stride-2 3x3 convs until the map is at most 4 pixels on a side, then global average pooling.
Downsampling before pooling lets a level's features see face-sized context instead of pooling
away all spatial arrangement after one local conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

_LEAK = 0.2
_POOL_SIDE = 4  # Levels are downsampled to at most this side before global pooling.


@keras.saving.register_keras_serializable(package="vec2face")
class LatentLevelEncoder(keras.layers.Layer):
    """Conv tower over one latent level, pooled to a vector.

    Args:
      filters: channels of every conv.
      downsamples: number of stride-2 convs after the first 3x3 conv.
    """

    def __init__(self, filters: int, downsamples: int = 0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        if isinstance(downsamples, bool) or not isinstance(downsamples, int) or downsamples < 0:
            raise ValueError(f"downsamples must be a non-negative integer, got {downsamples!r}")
        self.filters = filters
        self.downsamples = downsamples
        policy = self.dtype_policy
        self.convs = [keras.layers.Conv2D(filters, 3, strides=1 if index == 0 else 2,
                                          padding="same", dtype=policy, name=f"conv_{index}")
                      for index in range(downsamples + 1)]
        self.pool = keras.layers.GlobalAveragePooling2D(dtype=policy, name="pool")

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)

    def call(self, inputs):
        features = inputs
        for conv in self.convs:
            features = ops.leaky_relu(conv(features), _LEAK)
        return self.pool(features)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "downsamples": self.downsamples}


def _downsamples_for(height: int, width: int) -> int:
    count = 0
    side = max(height, width)
    while side > _POOL_SIDE:
        side = (side + 1) // 2
        count += 1
    return count


@keras.saving.register_keras_serializable(package="vec2face")
class StudentHead(keras.Model):
    """``C``: the flow's latents in, a unit D-dimensional feature out.

    Args:
      latent_shapes: (h, w, c) of each latent level, in the order the flow returns them.
      embedding_dim: D, the engine's feature dimension.
      hidden_units: width of the dense layer after the concatenated level vectors.
      dropout: dropout rate before the output layer (training only).
      level_channels: conv channels of each level's tower; default ``max(hidden_units // 4,
        8)``.
    """

    def __init__(self, latent_shapes: Sequence[Sequence[int]], embedding_dim: int = 128,
                 hidden_units: int = 256, dropout: float = 0.1,
                 level_channels: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not latent_shapes:
            raise ValueError("latent_shapes must list at least one (h, w, c) level")
        shapes = []
        for index, shape in enumerate(latent_shapes):
            shape = tuple(shape)
            if len(shape) != 3 or not all(isinstance(size, int) and size > 0 for size in shape):
                raise ValueError(f"latent_shapes[{index}] must be three positive ints (h, w, c), "
                                 f"got {shape!r}")
            shapes.append(shape)
        for name, value in (("embedding_dim", embedding_dim), ("hidden_units", hidden_units)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if level_channels is None:
            level_channels = max(hidden_units // 4, 8)
        if isinstance(level_channels, bool) or not isinstance(level_channels, int) or (
                level_channels < 1):
            raise ValueError(f"level_channels must be a positive integer, got {level_channels!r}")
        self.latent_shapes = shapes
        self.embedding_dim = embedding_dim
        self.hidden_units = hidden_units
        self.dropout = float(dropout)
        self.level_channels = level_channels
        policy = self.dtype_policy
        self.level_encoders = [
            LatentLevelEncoder(level_channels, _downsamples_for(height, width), dtype=policy,
                               name=f"level_{index}")
            for index, (height, width, _) in enumerate(shapes)]
        self.hidden = keras.layers.Dense(hidden_units, dtype=policy, name="hidden")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy, name="dropout")
        # float32 output and normalisation: the cosine losses need full precision.
        self.output_projection = keras.layers.Dense(embedding_dim, dtype="float32",
                                                    name="output_projection")
        self.output_normalization = keras.layers.UnitNormalization(
            dtype="float32", name="output_normalization")

    def _check_latent_shapes(self, shapes) -> None:
        if len(shapes) != len(self.latent_shapes):
            raise ValueError(f"StudentHead expects {len(self.latent_shapes)} latent levels, got "
                             f"{len(shapes)}")
        for index, (shape, expected) in enumerate(zip(shapes, self.latent_shapes)):
            shape = tuple(shape)
            if len(shape) != 4 or any(size is not None and size != want
                                      for size, want in zip(shape[1:], expected)):
                raise ValueError(f"latent level {index} must have shape [batch, "
                                 f"{', '.join(map(str, expected))}], got {shape}")

    def build(self, input_shape):
        if not isinstance(input_shape, (list, tuple)) or not input_shape or not isinstance(
                input_shape[0], (list, tuple)):
            raise ValueError("StudentHead expects a list of latent tensors, one per level")
        self._check_latent_shapes(input_shape)
        batch = input_shape[0][0]
        for encoder, shape in zip(self.level_encoders, input_shape):
            encoder.build(tuple(shape))
        self.hidden.build((batch, len(self.level_encoders) * self.level_channels))
        self.output_projection.build((batch, self.hidden_units))
        self.output_normalization.build((batch, self.embedding_dim))
        self.built = True

    def call(self, inputs, training=False):
        """Predicts the engine feature from the flow's latents.

        Args:
          inputs: list of float[B, h_l, w_l, c_l], one per level of ``latent_shapes``.
          training: enables dropout.

        Returns:
          float32[B, embedding_dim], each row of unit L2 norm.
        """
        if not isinstance(inputs, (list, tuple)):
            raise ValueError("StudentHead expects a list of latent tensors, one per level")
        self._check_latent_shapes([tuple(latent.shape) for latent in inputs])
        pooled = [encoder(ops.cast(latent, self.compute_dtype))
                  for encoder, latent in zip(self.level_encoders, inputs)]
        hidden = ops.leaky_relu(self.hidden(ops.concatenate(pooled, axis=-1)), _LEAK)
        hidden = self.dropout_layer(hidden, training=training)
        return self.output_normalization(self.output_projection(hidden))

    def get_config(self):
        return {
            **super().get_config(),
            "latent_shapes": [list(shape) for shape in self.latent_shapes],
            "embedding_dim": self.embedding_dim,
            "hidden_units": self.hidden_units,
            "dropout": self.dropout,
            "level_channels": self.level_channels,
        }


@keras.saving.register_keras_serializable(package="vec2face")
class ResidualBlock(keras.layers.Layer):
    """Two 3x3 convolutions with batch norm and a shortcut (ResNet's basic block).

    Args:
      filters: output channels.
      strides: stride of the first convolution (2 halves the map); the shortcut is then a
        strided 1x1 convolution, as it is whenever the channel count changes.
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        if isinstance(filters, bool) or not isinstance(filters, int) or filters < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}")
        if strides not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}")
        self.filters = filters
        self.strides = strides
        policy = self.dtype_policy
        self.conv_a = keras.layers.Conv2D(filters, 3, strides=strides, padding="same",
                                          use_bias=False, dtype=policy, name="conv_a")
        self.norm_a = keras.layers.BatchNormalization(dtype=policy, name="norm_a")
        self.conv_b = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False,
                                          dtype=policy, name="conv_b")
        # Zero-initialised last scale: each block starts as the identity, which trains a
        # deep stack from the first step (Goyal et al., 2017).
        self.norm_b = keras.layers.BatchNormalization(gamma_initializer="zeros", dtype=policy,
                                                      name="norm_b")
        self.shortcut = None
        self.shortcut_norm = None

    def build(self, input_shape):
        shape = tuple(input_shape)
        if shape[-1] != self.filters or self.strides != 1:
            self.shortcut = keras.layers.Conv2D(self.filters, 1, strides=self.strides,
                                                use_bias=False, dtype=self.dtype_policy,
                                                name="shortcut")
            self.shortcut_norm = keras.layers.BatchNormalization(dtype=self.dtype_policy,
                                                                 name="shortcut_norm")
            self.shortcut.build(shape)
            self.shortcut_norm.build(self.shortcut.compute_output_shape(shape))
        self.conv_a.build(shape)
        inner = self.conv_a.compute_output_shape(shape)
        self.norm_a.build(inner)
        self.conv_b.build(inner)
        self.norm_b.build(inner)

    def call(self, inputs, training=False):
        features = ops.relu(self.norm_a(self.conv_a(inputs), training=training))
        features = self.norm_b(self.conv_b(features), training=training)
        shortcut = inputs
        if self.shortcut is not None:
            shortcut = self.shortcut_norm(self.shortcut(inputs), training=training)
        return ops.relu(features + shortcut)

    def compute_output_shape(self, input_shape):
        return self.conv_a.compute_output_shape(tuple(input_shape))[:-1] + (self.filters,)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package="vec2face")
class ImageStudent(keras.Model):
    """A residual CNN from an aligned face to a unit D-vector (``student.kind=image``).

    A 3x3 stem at full resolution, then ``len(blocks)`` stages that each halve the map and
    double the width (``width``, ``2 width``, ...), with ``blocks[i]`` basic blocks each, then a
    global depthwise convolution over the last map (the GDC head of MobileFaceNet, which keeps
    where on the face a feature was, unlike average pooling) and a linear layer to D.

    Args:
      resolution: side of the input face (the training resolution).
      embedding_dim: D, the engine's feature size.
      width: channels of the first stage.
      blocks: basic blocks per stage.
      dropout: dropout rate before the output layer (training only).
    """

    def __init__(self, resolution: int = 64, embedding_dim: int = 128, width: int = 32,
                 blocks: Sequence[int] = (2, 2, 2, 2), dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        blocks = tuple(blocks)
        for name, value in (("resolution", resolution), ("embedding_dim", embedding_dim),
                            ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not blocks or not all(isinstance(b, int) and b >= 1 for b in blocks):
            raise ValueError(f"blocks must list at least one positive int per stage, got "
                             f"{blocks!r}")
        if resolution % 2 ** len(blocks):
            raise ValueError(f"resolution {resolution} must be divisible by 2**{len(blocks)} "
                             f"(one halving per stage)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.resolution = resolution
        self.embedding_dim = embedding_dim
        self.width = width
        self.blocks = blocks
        self.dropout = float(dropout)
        policy = self.dtype_policy
        self.stem = keras.layers.Conv2D(width, 3, padding="same", use_bias=False,
                                        dtype=policy, name="stem")
        self.stem_norm = keras.layers.BatchNormalization(dtype=policy, name="stem_norm")
        self.stages = []
        for stage, count in enumerate(blocks):
            filters = width * 2 ** stage
            self.stages.extend(
                ResidualBlock(filters, strides=2 if index == 0 else 1, dtype=policy,
                              name=f"stage{stage}_block{index}")
                for index in range(count))
        side = resolution // 2 ** len(blocks)
        self.global_depthwise = keras.layers.DepthwiseConv2D(
            side, padding="valid", use_bias=False, dtype=policy, name="global_depthwise")
        self.head_norm = keras.layers.BatchNormalization(dtype=policy, name="head_norm")
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy, name="dropout")
        # float32 output and normalisation: the cosine losses need full precision.
        self.output_projection = keras.layers.Dense(embedding_dim, dtype="float32",
                                                    name="output_projection")
        self.output_normalization = keras.layers.UnitNormalization(
            dtype="float32", name="output_normalization")

    def build(self, input_shape):
        shape = tuple(input_shape)
        if len(shape) != 4 or shape[1:] != (self.resolution, self.resolution, 3):
            raise ValueError(f"ImageStudent expects faces [batch, {self.resolution}, "
                             f"{self.resolution}, 3], got {shape}")
        self.stem.build(shape)
        shape = self.stem.compute_output_shape(shape)
        self.stem_norm.build(shape)
        for block in self.stages:
            block.build(shape)
            shape = block.compute_output_shape(shape)
        self.global_depthwise.build(shape)
        shape = self.global_depthwise.compute_output_shape(shape)
        self.head_norm.build(shape)
        self.output_projection.build((shape[0], shape[-1]))
        self.output_normalization.build((shape[0], self.embedding_dim))
        self.built = True

    def call(self, images, training=False):
        """Predicts the engine feature of faces.

        Args:
          images: float[B, R, R, 3] aligned faces in [-1, 1].
          training: updates batch-norm statistics and enables dropout.

        Returns:
          float32[B, embedding_dim], each row of unit L2 norm.
        """
        return self.embed_with_features(images, training=training)[0]

    def embed_with_features(self, images, training=False):
        """The vectors of faces and the feature maps a perceptual loss compares.

        Args:
          images: float[B, R, R, 3] aligned faces in [-1, 1].
          training: as in ``call``.

        Returns:
          (float32[B, embedding_dim] unit rows, [the stem's output, then the output of every
          second residual block]): maps from fine to coarse.
        """
        shape = tuple(images.shape)
        if len(shape) != 4 or shape[1:] != (self.resolution, self.resolution, 3):
            raise ValueError(f"ImageStudent expects faces [batch, {self.resolution}, "
                             f"{self.resolution}, 3], got {shape}")
        features = ops.cast(images, self.compute_dtype)
        features = ops.relu(self.stem_norm(self.stem(features), training=training))
        maps = [features]
        for index, block in enumerate(self.stages):
            features = block(features, training=training)
            if index % 2 == 1:
                maps.append(features)
        features = self.head_norm(self.global_depthwise(features), training=training)
        features = ops.reshape(features, (-1, features.shape[-1]))
        features = self.dropout_layer(features, training=training)
        return self.output_normalization(self.output_projection(features)), maps

    def get_config(self):
        return {**super().get_config(), "resolution": self.resolution,
                "embedding_dim": self.embedding_dim, "width": self.width,
                "blocks": list(self.blocks), "dropout": self.dropout}
