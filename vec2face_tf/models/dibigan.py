"""DiBiGAN's training models (DESIGN §1 items 3, 6-8).

* ``StudentDistiller`` (the student stage, ``student.kind=image``) distils the image student
  from the engine's cached vectors of photos and their augmented views.
* ``FlowStudentTrainer`` (stage 1) trains the bijective flow ``H`` (NLL in bits/dim) and, for
  ``student.kind=flow``, the student head ``C`` with it (plus the angular distillation loss
  against the engine's cached vectors).
* ``DiBiGAN`` (stage 2) trains the generator and the discriminator with ``H`` frozen. Its
  ``train_step`` does the D step and then the G step (adversarial + batch-hard triplet in the
  flow's latent space + identity through the student), weighted by the exponential schedules
  of the current step. The generator's optimizer keeps the EMA copy that gets exported.

Every loss is scaled by the global batch size, so one replica and N replicas give the same
numbers for the same global batch. The blackbox engine never appears here: identity reaches
the generator only through the student.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib

import keras
import numpy as np
import tensorflow as tf

from vec2face_tf import losses as losses_lib
from vec2face_tf import schedules as schedules_lib
from vec2face_tf.config import Config, config_from_dict
from vec2face_tf.models import flow as flow_lib
from vec2face_tf.models.discriminator import Discriminator
from vec2face_tf.models.generator import FiLMGenerator, Generator, recalibrate_batch_norm
from vec2face_tf.models.student import ImageStudent, StudentHead


@dataclasses.dataclass
class DiBiGANParts:
    """The four networks of DiBiGAN, built from one config."""

    flow: keras.Model
    student: keras.Model
    generator: keras.Model
    discriminator: keras.Model


PRECISIONS = ("float32", "mixed_bfloat16")
# In a training folder: training templates that re-estimate the EMA generator's batch norm.
CALIBRATION_FILE = "calibration.npy"
CALIBRATION_TEMPLATES = 1024
GENERATOR_KINDS = ("film", "adain")
STUDENT_KINDS = ("image", "flow")


def build_parts(config: Config, embedding_dim: int, precision: str | None = None
                ) -> DiBiGANParts:
    """Builds H, C, G and D for ``config`` at ``config.data.resolution``.

    Args:
      config: the run's config.
      embedding_dim: the engine's D.
      precision: the Keras dtype policy of C, G and D (default ``config.train.precision``);
        the flow computes in float32 under any policy, and variables stay float32.
    """
    precision = precision or config.train.precision
    if precision not in PRECISIONS:
        raise ValueError(f"train.precision={precision!r}; choose one of {PRECISIONS}")
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(precision)
    try:
        return _build_parts(config, embedding_dim)
    finally:
        keras.mixed_precision.set_global_policy(previous)


def _build_parts(config: Config, embedding_dim: int) -> DiBiGANParts:
    resolution = config.data.resolution
    # ActNorm initialises from the first batch it sees, so the flow must not be called on
    # placeholder data here; the trainer calls it on real faces first.
    flow = flow_lib.BijectiveFlow.from_flow_config(config.flow, resolution,
                                                   prior=config.flow.prior)
    student = build_student(config, embedding_dim, flow.latent_shapes)
    generator = build_generator(config, embedding_dim)
    discriminator = Discriminator(
        resolution=resolution, embedding_dim=embedding_dim,
        base_channels=config.discriminator.base_channels,
        max_channels=config.discriminator.max_channels)
    discriminator([tf.zeros([1, resolution, resolution, 3]), tf.zeros([1, embedding_dim])])
    return DiBiGANParts(flow, student, generator, discriminator)


def build_generator(config: Config, embedding_dim: int) -> keras.Model:
    """The generator G of ``config``, built (under the current dtype policy).

    Raises:
      ValueError: for an unknown ``generator.kind``.
    """
    settings = config.generator
    if settings.kind == "film":
        generator = FiLMGenerator(
            resolution=config.data.resolution, embedding_dim=embedding_dim,
            noise_dim=settings.noise_dim, base_channels=settings.base_channels,
            min_channels=settings.min_channels, start_resolution=settings.start_resolution,
            style_dim=settings.style_dim)
    elif settings.kind == "adain":
        generator = Generator(
            resolution=config.data.resolution, embedding_dim=embedding_dim,
            noise_dim=settings.noise_dim, base_channels=settings.base_channels,
            min_channels=settings.min_channels, start_resolution=settings.start_resolution,
            rgb_scales=settings.rgb_scales, style_dim=settings.style_dim)
    else:
        raise ValueError(f"generator.kind={settings.kind!r}; choose one of {GENERATOR_KINDS}")
    generator([tf.zeros([1, embedding_dim]), tf.zeros([1, config.generator.noise_dim])])
    return generator


def build_student(config: Config, embedding_dim: int, latent_shapes=None) -> keras.Model:
    """The student of ``config.student.kind``, built (under the current dtype policy).

    Args:
      config: the run's config.
      embedding_dim: the engine's D.
      latent_shapes: the flow's latent shapes (needed for ``kind=flow`` only).

    Raises:
      ValueError: for an unknown kind.
    """
    kind = config.student.kind
    if kind == "image":
        resolution = config.data.resolution
        student = ImageStudent(resolution=resolution, embedding_dim=embedding_dim,
                               width=config.student.width, blocks=config.student.blocks,
                               dropout=config.student.dropout)
        student(tf.zeros([1, resolution, resolution, 3]))
        return student
    if kind == "flow":
        student = StudentHead(
            latent_shapes=[tuple(shape) for shape in latent_shapes],
            embedding_dim=embedding_dim, hidden_units=config.student.hidden_units,
            dropout=config.student.dropout)
        student([tf.zeros([1, *shape]) for shape in latent_shapes])
        return student
    raise ValueError(f"student.kind={kind!r}; choose one of {STUDENT_KINDS}")


def _center_list(center) -> list[float] | None:
    return None if center is None else [float(v) for v in center.numpy()]


def checkpoint_for(parts: DiBiGANParts, **optimizers) -> tf.train.Checkpoint:
    """A ``tf.train.Checkpoint`` of the four networks' variables and the given optimizers.

    ``tf.train.Checkpoint(flow=keras_model)`` does not reach a Keras 3 model's variables (a
    checkpoint made so holds only optimizer slots), so the underlying tf.Variables are
    tracked explicitly, in each network's (stable) variable order.
    """
    networks = {name: [v.value for v in getattr(parts, name).variables]
                for name in ("flow", "student", "generator", "discriminator")}
    return tf.train.Checkpoint(**networks, **optimizers)


def per_example_seeds(embeddings: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Stateless-random seeds int64[B, 2] that are a pure function of (embedding, step).

    Drawing from a stateful generator would give each replica its own stream, so two replicas
    would not reproduce one replica's losses for the same global batch, and a resumed run
    would not reproduce an uninterrupted one (the generator's state is not in the
    checkpoint). Seeding each example from its own embedding and the step makes the draws
    independent of how the batch is split and of where the run was restarted.
    """
    quantised = tf.cast(tf.round(embeddings * 65536.0), tf.int64)
    weights = tf.range(1, tf.shape(embeddings)[-1] + 1, dtype=tf.int64) * 2654435761
    fingerprints = tf.math.floormod(tf.reduce_sum(quantised * weights, axis=-1), 2**31 - 1)
    return tf.stack([fingerprints, tf.fill(tf.shape(fingerprints), tf.cast(step, tf.int64))],
                    axis=-1)


def per_example_noise(embeddings: tf.Tensor, step: tf.Tensor, noise_dim: int) -> tf.Tensor:
    """Standard-normal noise float32[B, noise_dim], a pure function of (embedding, step)."""
    return tf.map_fn(
        lambda seed: tf.random.stateless_normal([noise_dim], seed=seed),
        per_example_seeds(embeddings, step), fn_output_signature=tf.float32)


def global_loss(value: tf.Tensor) -> tf.Tensor:
    """The whole global batch's loss, from a replica's share of it.

    Each replica's loss is its examples' sum divided by the global batch size, so the global
    loss is the sum over replicas; metric trackers log that rather than a replica's share.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    return context.all_reduce(tf.distribute.ReduceOp.SUM, value)


def gather_replicas(value: tf.Tensor) -> tf.Tensor:
    """Concatenates ``value`` over all replicas along the batch axis (itself with one).

    Built from an all-reduce (each replica contributes its slot of a zero tensor) because
    ``ReplicaContext.all_gather`` fails inside ``tf.function`` under
    MultiWorkerMirroredStrategy in TF 2.21. Every replica must hold the same batch size.
    """
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync == 1:
        return value
    replicas = context.num_replicas_in_sync
    slot = tf.one_hot(context.replica_id_in_sync_group, replicas, dtype=tf.float32)
    slot = tf.reshape(slot, [replicas] + [1] * (value.shape.rank or 0))
    stacked = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                 slot * tf.cast(value, tf.float32)[None])
    gathered = tf.reshape(stacked, tf.concat([[-1], tf.shape(value)[1:]], axis=0))
    if value.dtype.is_integer:
        gathered = tf.round(gathered)
    return tf.cast(gathered, value.dtype)


class _PrebuiltModel(keras.Model):
    """A keras.Model whose layers are all built at construction, trainable under any strategy.

    Two Keras 3.15 steps break under MultiWorkerMirroredStrategy, and both are avoided here:
    ``fit`` first "symbolically builds" the model by reducing a data batch across replicas
    (nothing here needs building, so that step only checks it), and it reduces the logs with
    ``strategy.reduce("MEAN", value, axis=0)``, which fails on scalars (so the logs are
    returned with shape [1] there).
    """

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        unbuilt = [layer.name for layer in self._flatten_layers() if not layer.built]
        if unbuilt:
            raise RuntimeError(f"layers {unbuilt} must be built before fit()")

    def _logs(self) -> dict:
        logs = {m.name: m.result() for m in self.metrics}
        strategy = tf.distribute.get_strategy()
        if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
                and strategy.extended._in_multi_worker_mode()):
            logs = {name: tf.reshape(value, [1]) for name, value in logs.items()}
        return logs


@keras.saving.register_keras_serializable(package="vec2face")
class FlowStudentTrainer(_PrebuiltModel):
    """Stage 1: trains the flow ``H`` (NLL, bits/dim) and the student head ``C`` (distillation).

    Args:
      flow: the bijective flow.
      student: the student head over the flow's latents, or None to train the flow alone
        (``student.kind=image`` distils its student in a stage of its own).
      num_bits: bits per channel kept before dequantisation.
      distillation_weight: weight of the distillation loss against the NLL.
      center: mean engine vector subtracted before the cosine (dlib vectors share a large
        common component), or None.
      global_batch_size: the global batch size the losses are averaged over.
    """

    def __init__(self, flow, student, num_bits: int, distillation_weight: float = 1.0,
                 center=None, global_batch_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.flow = flow
        self.student = student
        self.num_bits = num_bits
        self.distillation_weight = distillation_weight
        self.center = None if center is None else tf.constant(center, tf.float32)
        self.global_batch_size = global_batch_size
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.nll_tracker = keras.metrics.Mean(name="bits_per_dim")
        self.distillation_tracker = keras.metrics.Mean(name="distillation")
        self.cosine_tracker = keras.metrics.Mean(name="student_cosine")
        self.built = True

    @property
    def metrics(self):
        return [self.loss_tracker, self.nll_tracker, self.distillation_tracker,
                self.cosine_tracker]

    def get_config(self):
        return {"flow": keras.saving.serialize_keras_object(self.flow),
                "student": (None if self.student is None
                            else keras.saving.serialize_keras_object(self.student)),
                "num_bits": self.num_bits, "distillation_weight": self.distillation_weight,
                "center": _center_list(self.center), "global_batch_size": self.global_batch_size,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["flow"] = keras.saving.deserialize_keras_object(config["flow"])
        if config["student"] is not None:
            config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)

    @property
    def trainable_networks_variables(self) -> list:
        """The variables stage 1 updates: the flow's, and the head's when it has one."""
        return self.flow.trainable_variables + (
            [] if self.student is None else self.student.trainable_variables)

    def call(self, images, training=False):
        x = flow_lib.BijectiveFlow.preprocess(images, self.num_bits, dequantize=False)
        latents, _ = self.flow.forward(x, training=training)
        return latents if self.student is None else self.student(latents, training=training)

    def train_step(self, data):
        images, embeddings, _ = data
        with tf.GradientTape() as tape:
            x = flow_lib.BijectiveFlow.preprocess(
                images, self.num_bits, dequantize=True,
                seed=per_example_seeds(embeddings, self.optimizer.iterations))
            latents, log_det = self.flow.forward(x, training=True)
            bits_per_dim = flow_lib.BijectiveFlow.nll_bits_per_dim(latents, log_det, self.num_bits)
            nll = losses_lib.reduce_per_example(
                bits_per_dim, global_batch_size=self.global_batch_size)
            if self.student is None:
                distillation = tf.constant(0.0)
            else:
                student_vectors = self.student(latents, training=True)
                distillation = losses_lib.distillation_loss(
                    student_vectors, embeddings, center=self.center,
                    global_batch_size=self.global_batch_size)
            loss = nll + self.distillation_weight * distillation
        variables = self.trainable_networks_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        self.loss_tracker.update_state(global_loss(loss))
        self.nll_tracker.update_state(global_loss(nll))
        self.distillation_tracker.update_state(global_loss(distillation))
        if self.student is not None:
            self.cosine_tracker.update_state(
                -keras.losses.cosine_similarity(embeddings, student_vectors))
        return self._logs()


@keras.saving.register_keras_serializable(package="vec2face")
class StudentDistiller(_PrebuiltModel):
    """The student stage: distils the image student from the engine's cached vectors.

    The loss is the centred angular distillation loss plus ``relational_weight`` times the
    relational (pairwise-cosine) loss; compile it with the optimizer (its learning-rate
    schedule is a function of the step, so a resumed run follows the same curve).

    Args:
      student: the ImageStudent.
      center: the mean engine vector of the training photos (float[D]).
      relational_weight: weight of ``losses.relational_cosine_loss``.
      global_batch_size: the global batch size the losses are averaged over.
    """

    def __init__(self, student, center, relational_weight: float = 0.0,
                 global_batch_size: int | None = None, **kwargs):
        super().__init__(**kwargs)
        self.student = student
        self.center = tf.constant(center, tf.float32)
        self.relational_weight = float(relational_weight)
        self.global_batch_size = global_batch_size
        names = ("loss", "distillation", "relational", "student_cosine", "centred_cosine")
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self):
        return {"student": keras.saving.serialize_keras_object(self.student),
                "center": _center_list(self.center),
                "relational_weight": self.relational_weight,
                "global_batch_size": self.global_batch_size, "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(config["student"])
        return cls(**config)

    def call(self, images, training=False):
        return self.student(images, training=training)

    def train_step(self, data):
        images, embeddings = data
        context = tf.distribute.get_replica_context()
        replicas = 1 if context is None else context.num_replicas_in_sync
        with tf.GradientTape() as tape:
            vectors = self.student(images, training=True)
            distillation = losses_lib.distillation_loss(
                vectors, embeddings, center=self.center,
                global_batch_size=self.global_batch_size)
            # A replica's mean over its own pairs; gradients sum over replicas.
            relational = losses_lib.relational_cosine_loss(
                vectors, embeddings, center=self.center) / replicas
            loss = distillation + self.relational_weight * relational
        variables = self.student.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        values = {"loss": global_loss(loss), "distillation": global_loss(distillation),
                  "relational": global_loss(relational),
                  "student_cosine": -keras.losses.cosine_similarity(embeddings, vectors),
                  "centred_cosine": losses_lib.centred_cosine(vectors, embeddings,
                                                              self.center)}
        for name, value in values.items():
            self.trackers[name].update_state(value)
        return self._logs()


@keras.saving.register_keras_serializable(package="vec2face")
class DiBiGAN(_PrebuiltModel):
    """Stage 2: the feature-conditional GAN with the bijective metric and identity losses.

    ``compile(d_optimizer=..., g_optimizer=...)`` takes the two optimizers; give the generator's
    ``use_ema=True`` so that ``ema_generator()`` returns the averaged copy to export.

    Args:
      parts: the four networks. Only G and D are updated here: the G step differentiates the
        generator's variables alone, so H and C stay as stage 1 (and the refresh) left them.
      config: the training config (losses, schedules, flow bits).
      center: mean engine vector used by the identity loss (see FlowStudentTrainer).
      global_batch_size: the global batch size the losses are averaged over.
    """

    def __init__(self, parts: DiBiGANParts, config: Config, center=None,
                 global_batch_size: int | None = None, calibration_embeddings=None, **kwargs):
        super().__init__(**kwargs)
        # Training templates that re-estimate the EMA copy's batch-norm statistics
        # (generator.kind=film); not part of the config.
        self.calibration_embeddings = (None if calibration_embeddings is None
                                       else np.asarray(calibration_embeddings, np.float32))
        self.flow = parts.flow
        self.student = parts.student
        self.generator = parts.generator
        self.discriminator = parts.discriminator
        self.config = config
        self.center = None if center is None else tf.constant(center, tf.float32)
        self.global_batch_size = global_batch_size
        self.weight_schedules = schedules_lib.build_loss_weight_schedules(
            config.schedule, pixel_weight=config.losses.l1_weight,
            num_scales=config.generator.rgb_scales,
            perceptual_weight=config.losses.perceptual_weight,
            adversarial_weight=config.losses.adversarial_weight)
        self.augmentations = losses_lib.parse_diff_augment(config.losses.diff_augment)
        if config.losses.perceptual_weight > 0 and not isinstance(self.student, ImageStudent):
            raise ValueError("losses.perceptual_weight > 0 needs the image student "
                             "(student.kind=image): its feature maps are what it compares")
        level_weights = config.flow.level_weights or None
        self.level_weights = None if level_weights is None else list(level_weights)
        names = ["d_loss", "g_loss", "g_adversarial", "identity", "metric", "pixel",
                 "perceptual", "student_cosine", "d_real", "d_fake"]
        self.trackers = {name: keras.metrics.Mean(name=name) for name in names}
        self.weight_trackers = {name: keras.metrics.Mean(name=f"w_{name}")
                                for name in ("identity", "metric", "pixel", "perceptual",
                                             "adversarial")}
        self.built = True

    @property
    def metrics(self):
        return list(self.trackers.values()) + list(self.weight_trackers.values())

    def get_config(self):
        return {"config": self.config.to_dict(),
                "embedding_dim": int(self.generator.embedding_dim),
                "center": _center_list(self.center), "global_batch_size": self.global_batch_size,
                "name": self.name}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        run_config = config_from_dict(config.pop("config"))
        parts = build_parts(run_config, config.pop("embedding_dim"))
        return cls(parts, run_config, **config)

    def compile(self, d_optimizer, g_optimizer, **kwargs):
        # Keras's own optimizer slot holds the discriminator's. Left empty, compile() would put
        # an unbuilt RMSprop there and fit() under a strategy would try to build the model by
        # calling it on a data batch. Not the generator's: at the end of fit() Keras copies an
        # EMA optimizer's averages into the model's variables, which must stay the raw ones.
        super().compile(optimizer=d_optimizer, **kwargs)
        self.d_optimizer = d_optimizer
        self.g_optimizer = g_optimizer

    def build_optimizers(self):
        """Creates the optimizer variables; call inside ``strategy.scope()`` before ``fit``.

        Built lazily inside a replica context, Adam's variables fail under MirroredStrategy
        with more than one replica (shared/notes/deps.md §1).
        """
        self.d_optimizer.build(self.discriminator.trainable_variables)
        self.g_optimizer.build(self.generator.trainable_variables)

    def call(self, inputs, training=False):
        embeddings, noise = inputs
        return self.generator([embeddings, noise], training=training)

    def student_embed(self, images, latents=None):
        """The student's unit vectors of images in [-1, 1] (inference mode).

        Args:
          images: float[B, R, R, 3].
          latents: the flow's latents of ``images``, when the caller already has them (only a
            ``kind=flow`` student reads them).
        """
        if isinstance(self.student, ImageStudent):
            return self.student(images, training=False)
        if latents is None:
            latents = self.latents(images)
        return self.student(latents, training=False)

    def latents(self, images):
        """The frozen flow's latents of images in [-1, 1] (no dequantisation noise)."""
        x = flow_lib.BijectiveFlow.preprocess(images, self.config.flow.num_bits, dequantize=False)
        latents, _ = self.flow.forward(x, training=False)
        return latents

    def train_step(self, data):
        if len(data) == 2:
            return self.regression_step(data)
        images, embeddings, labels = data
        step = self.g_optimizer.iterations
        noise = per_example_noise(embeddings, step, self.config.generator.noise_dim)
        weights = {name: tf.cast(schedule(step), tf.float32)
                   for name, schedule in self.weight_schedules.items()}
        with tf.GradientTape() as g_tape:
            # One generator forward serves both steps: the D step does not change G, and G has
            # no random layers, so a second forward would give the same images (1.04-1.09x
            # per step, benchmarks/NOTES.md).
            fake_images, fake_scales = self.generator(
                [embeddings, noise], training=True, return_all_scales=True)
            with g_tape.stop_recording():
                d_loss, real_logits = self._discriminator_step(
                    images, embeddings, tf.stop_gradient(fake_images))
            # G's objective sees D after its update, as in alternating GAN training.
            g_terms, student_vectors, fake_logits = self.generator_objective(
                images, embeddings, labels, fake_images, fake_scales, weights)
        g_variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(
            zip(g_tape.gradient(g_terms["g_loss"], g_variables), g_variables))
        return self._track({"d_loss": d_loss, **g_terms}, embeddings, student_vectors,
                           real_logits, fake_logits, weights)

    def regression_step(self, data):
        """One critic-free G step on ``(images, embeddings)``: pixels, perceptual, identity.

        The first phase of schedule kind ``two_phase``: no discriminator and no flow run, so
        a step costs about the generator and two student passes.
        """
        images, embeddings = data
        step = self.g_optimizer.iterations
        noise = per_example_noise(embeddings, step, self.config.generator.noise_dim)
        weights = {name: tf.cast(schedule(step), tf.float32)
                   for name, schedule in self.weight_schedules.items()}
        batch = self.global_batch_size
        with tf.GradientTape() as g_tape:
            fake_images, fake_scales = self.generator(
                [embeddings, noise], training=True, return_all_scales=True)
            student_vectors, perceptual = self._student_terms(fake_images, images, weights)
            identity = losses_lib.identity_loss(
                student_vectors, embeddings, center=self.center, global_batch_size=batch)
            pixel = self._multiscale_l1(fake_scales, images, weights["scales"])
            g_loss = (weights["identity"] * identity + weights["pixel"] * pixel
                      + weights["perceptual"] * perceptual)
        g_variables = self.generator.trainable_variables
        self.g_optimizer.apply_gradients(
            zip(g_tape.gradient(g_loss, g_variables), g_variables))
        terms = {"g_loss": g_loss, "identity": identity, "pixel": pixel,
                 "perceptual": perceptual}
        values = {name: global_loss(value) for name, value in terms.items()}
        values["student_cosine"] = -keras.losses.cosine_similarity(embeddings,
                                                                   student_vectors)
        for name, value in values.items():
            self.trackers[name].update_state(value)
        for name, tracker in self.weight_trackers.items():
            tracker.update_state(weights[name])
        return self._logs()

    def _student_terms(self, fake_images, images, weights) -> tuple[tf.Tensor, tf.Tensor]:
        """(the student's vectors of the fakes, the perceptual loss; 0 without the term)."""
        if self.config.losses.perceptual_weight <= 0:
            return self.student_embed(fake_images), tf.constant(0.0)
        student_vectors, fake_maps = self.student.embed_with_features(fake_images,
                                                                      training=False)
        _, real_maps = self.student.embed_with_features(images, training=False)
        perceptual = losses_lib.perceptual_loss(
            fake_maps, [tf.stop_gradient(m) for m in real_maps],
            global_batch_size=self.global_batch_size)
        return student_vectors, perceptual

    def _augment(self, images, salt: int):
        """DiffAugment of a critic input, seeded by (step, salt); unchanged without any."""
        if not self.augmentations:
            return images
        seed = tf.stack([tf.cast(self.g_optimizer.iterations, tf.int64),
                         tf.constant(salt, tf.int64)])
        # Each replica holds consecutive rows of the global batch: it takes its rows of the
        # global batch's draws, so any number of replicas augments as one would.
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        local_batch = tf.shape(images)[0]
        return losses_lib.diff_augment(images, self.augmentations, seed,
                                       first_row=tf.cast(replica, tf.int32) * local_batch,
                                       total_rows=self.global_batch_size)

    def _discriminator_step(self, images, embeddings, fake_images) -> tuple[tf.Tensor, tf.Tensor]:
        """Updates D on real and generated images; returns (D loss, D's logits of the reals)."""
        kind, batch = self.config.losses.adversarial, self.global_batch_size
        images, fake_images = self._augment(images, 1), self._augment(fake_images, 2)
        with tf.GradientTape() as d_tape:
            if self.config.losses.r1_gamma > 0:
                with tf.GradientTape() as r1_tape:
                    r1_tape.watch(images)
                    real_logits = self.discriminator([images, embeddings], training=True)
                real_gradients = r1_tape.gradient(tf.reduce_sum(real_logits), images)
                r1 = losses_lib.r1_penalty(real_gradients, gamma=self.config.losses.r1_gamma,
                                           global_batch_size=batch)
            else:
                real_logits = self.discriminator([images, embeddings], training=True)
                r1 = 0.0
            fake_logits = self.discriminator([fake_images, embeddings], training=True)
            d_loss = losses_lib.discriminator_adversarial_loss(
                real_logits, fake_logits, kind=kind, global_batch_size=batch)
            d_loss += r1
        d_variables = self.discriminator.trainable_variables
        self.d_optimizer.apply_gradients(
            zip(d_tape.gradient(d_loss, d_variables), d_variables))
        return d_loss, real_logits

    def generator_objective(self, images, embeddings, labels, fake_images, fake_scales,
                            weights) -> tuple[dict, tf.Tensor, tf.Tensor]:
        """The G step's loss terms for generated ``fake_images`` (call under the G tape).

        Returns:
          ({"g_loss", "g_adversarial", "identity", "metric", "pixel"}, the student's vectors
          of the fakes, D's logits of the fakes).
        """
        batch = self.global_batch_size
        fake_logits = self.discriminator([self._augment(fake_images, 3), embeddings],
                                         training=True)
        g_adversarial = losses_lib.generator_adversarial_loss(
            fake_logits, kind=self.config.losses.adversarial, global_batch_size=batch)
        needs_flow = (self.config.schedule.metric_max > 0
                      or not isinstance(self.student, ImageStudent))
        # The flow is the costliest network of the step; with no metric term and an image
        # student nothing reads its latents.
        fake_latents = self.latents(fake_images) if needs_flow else None
        if self.config.schedule.metric_max > 0:
            # Mine positives and negatives among the real images of the whole global batch,
            # so that N replicas see the same triplets as one. Real latents need no gradient.
            real_latents = [gather_replicas(tf.stop_gradient(z))
                            for z in self.latents(images)]
            metric = losses_lib.batch_hard_triplet_loss(
                fake_latents, real_latents, labels, margin=self.config.losses.triplet_margin,
                real_labels=gather_replicas(labels), level_weights=self.level_weights,
                global_batch_size=batch)
        else:
            metric = tf.constant(0.0)
        if isinstance(self.student, ImageStudent):
            student_vectors, perceptual = self._student_terms(fake_images, images, weights)
        else:
            student_vectors = self.student_embed(fake_images, fake_latents)
            perceptual = tf.constant(0.0)
        identity = losses_lib.identity_loss(
            student_vectors, embeddings, center=self.center, global_batch_size=batch)
        pixel = self._multiscale_l1(fake_scales, images, weights["scales"])
        g_loss = (weights["adversarial"] * g_adversarial + weights["identity"] * identity
                  + weights["metric"] * metric + weights["pixel"] * pixel
                  + weights["perceptual"] * perceptual)
        return ({"g_loss": g_loss, "g_adversarial": g_adversarial, "identity": identity,
                 "metric": metric, "pixel": pixel, "perceptual": perceptual},
                student_vectors, fake_logits)

    def _track(self, losses: dict, embeddings, student_vectors, real_logits, fake_logits,
               weights) -> dict:
        """Updates the metric trackers with one step's values and returns the logs."""
        values = {name: global_loss(value) for name, value in losses.items()}
        values.update(student_cosine=-keras.losses.cosine_similarity(embeddings,
                                                                     student_vectors),
                      d_real=real_logits, d_fake=fake_logits)
        for name, value in values.items():
            self.trackers[name].update_state(value)
        for name, tracker in self.weight_trackers.items():
            tracker.update_state(weights[name])
        return self._logs()

    def _multiscale_l1(self, fake_scales, images, scale_weights):
        """L1 at every generator output scale (coarse to fine), weighted by ``scale_weights``."""
        total = 0.0
        for index, fake in enumerate(fake_scales):
            size = fake.shape[1]
            real = images if size == images.shape[1] else tf.image.resize(
                images, [size, size], method="area")
            total += scale_weights[index] * losses_lib.l1_reconstruction_loss(
                fake, real, global_batch_size=self.global_batch_size)
        return total

    def reset_ema(self) -> None:
        """Sets the EMA copy to the generator's current weights (after a warm start).

        Keras creates the averages at zero and only fills them at the first update, so an
        export of a warm-started run before its first step would otherwise draw from zeros.
        """
        optimizer = self.g_optimizer
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        if not averages:
            return
        for variable in self.generator.trainable_variables:
            averages[optimizer._get_variable_index(variable)].assign(variable)

    def ema_generator(self) -> keras.Model:
        """A copy of the generator holding the optimizer's exponential moving average.

        A generator with batch normalisation gets statistics re-estimated for the averaged
        weights on ``calibration_embeddings`` (``recalibrate_batch_norm``); without them
        (a run folder older than ``calibration.npy``) it keeps the live statistics and logs a
        warning.
        """
        ema = type(self.generator).from_config(self.generator.get_config())
        ema([tf.zeros([1, self.generator.embedding_dim]),
             tf.zeros([1, self.generator.noise_dim])])
        optimizer = self.g_optimizer
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        for source, target in zip(self.generator.variables, ema.variables, strict=True):
            value = source
            if averages and source.trainable:
                value = averages[optimizer._get_variable_index(source)]
            target.assign(value)
        has_batch_norm = any(isinstance(layer, keras.layers.BatchNormalization)
                             for layer in ema._flatten_layers())
        if has_batch_norm:
            if self.calibration_embeddings is None:
                # A folder written before calibration.npy existed: the live statistics are
                # kept, which the log says (measured worse: see recalibrate_batch_norm).
                tf.get_logger().warning(
                    "no calibration templates: the EMA generator keeps the live generator's "
                    "batch-norm statistics")
            else:
                recalibrate_batch_norm(ema, self.calibration_embeddings)
        return ema


def load_ema_generator(model_dir: str | pathlib.Path, embedding_dim: int) -> keras.Model:
    """The EMA generator of ``model_dir``'s latest checkpoint."""
    model_path = pathlib.Path(model_dir)
    config = config_from_dict(json.loads((model_path / "config.json").read_text()))
    # Exports and evaluation compute in float32 whatever the run trained in (the weights
    # are float32 either way); TFLite and ONNX converters expect it.
    parts = build_parts(config, embedding_dim, precision="float32")
    g_optimizer = keras.optimizers.Adam(use_ema=True, ema_momentum=config.train.ema_momentum)
    g_optimizer.build(parts.generator.trainable_variables)
    latest = tf.train.latest_checkpoint(str(model_path / "checkpoints"))
    if latest is None:
        raise FileNotFoundError(f"no checkpoint in {model_path / 'checkpoints'}")
    status = checkpoint_for(parts, g_optimizer=g_optimizer).restore(latest)
    status.expect_partial().assert_existing_objects_matched()
    calibration_file = model_path / CALIBRATION_FILE
    calibration = (np.load(calibration_file, allow_pickle=False)
                   if calibration_file.exists() else None)
    gan = DiBiGAN(parts, config, calibration_embeddings=calibration)
    gan.compile(d_optimizer=keras.optimizers.Adam(), g_optimizer=g_optimizer)
    return gan.ema_generator()
