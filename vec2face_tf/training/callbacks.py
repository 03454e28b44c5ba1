"""Training callbacks: the student refresh from engine queries, the student's agreement with
the engine on held-out faces, and image grids."""

from __future__ import annotations

import json
import pathlib
import time

import keras
import numpy as np
import tensorflow as tf

from vec2face_tf import losses as losses_lib
from vec2face_tf.engines.base import Engine
from vec2face_tf.evaluation import student as student_evaluation
from vec2face_tf.evaluation.reconstruction import comparison_grid, from_uint8, to_uint8


class ReplayBuffer(tf.Module):
    """A bounded FIFO of (generated image, teacher vector) pairs labelled by the engine.

    The pairs live in numpy for sampling and are mirrored in tf.Variables, so that a training
    checkpoint holds them: a run killed and resumed distils from the same pairs as one that
    was never stopped, without querying the engine again. Images are kept as the uint8 the
    engine was shown (a quarter of float32's size in every checkpoint).

    Args:
      capacity: the most pairs kept; the oldest leave first.
      image_shape: (H, W, 3) of the generated images.
      dim: the engine's vector size.
    """

    def __init__(self, capacity: int, image_shape: tuple[int, ...], dim: int):
        super().__init__(name="replay_buffer")
        if capacity < 1:
            raise ValueError(f"replay buffer capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self.images = np.zeros([0, *image_shape], np.uint8)
        self.vectors = np.zeros([0, dim], np.float32)
        self.saved_images = tf.Variable(tf.zeros([capacity, *image_shape], tf.uint8),
                                        trainable=False, name="images")
        self.saved_vectors = tf.Variable(tf.zeros([capacity, dim]), trainable=False,
                                         name="vectors")
        self.saved_size = tf.Variable(0, dtype=tf.int64, trainable=False, name="size")

    def __len__(self) -> int:
        return len(self.images)

    def add(self, images: np.ndarray, vectors: np.ndarray) -> None:
        """Appends uint8 images [N, H, W, 3] and their float vectors [N, D]."""
        if len(images) != len(vectors):
            raise ValueError(f"{len(images)} images but {len(vectors)} vectors")
        if np.asarray(images).dtype != np.uint8:
            raise ValueError(f"replay images must be uint8, got {np.asarray(images).dtype}")
        self.images = np.concatenate([self.images, images])[-self.capacity:]
        self.vectors = np.concatenate([self.vectors, vectors])[-self.capacity:].astype(
            np.float32)
        size = len(self.images)
        padding = self.capacity - size
        self.saved_images.assign(
            np.pad(self.images, [(0, padding)] + [(0, 0)] * (self.images.ndim - 1)))
        self.saved_vectors.assign(np.pad(self.vectors, [(0, padding), (0, 0)]))
        self.saved_size.assign(size)

    def reload(self) -> None:
        """Takes the pairs from the variables, after a checkpoint restored them."""
        size = int(self.saved_size.numpy())
        self.images = self.saved_images.numpy()[:size]
        self.vectors = self.saved_vectors.numpy()[:size]

    def sample(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Draws ``count`` pairs; the images come back as float32 in [-1, 1]."""
        if not len(self):
            raise ValueError("the replay buffer is empty")
        index = rng.choice(len(self), size=count, replace=len(self) < count)
        return from_uint8(self.images[index]), self.vectors[index]


class StudentRefresh(keras.callbacks.Callback):
    """Keeps the student faithful to the engine on generated images.

    Every ``every`` steps it generates faces for real engine vectors, queries the engine
    (``Engine.embed`` only: numpy in, numpy out, so no gradient can reach the engine), adds the
    labelled pairs to a bounded replay buffer, and trains the student (the image student, or
    the head ``C`` of ``S = C∘H`` with the flow frozen) on real ∪ buffer for
    ``distill_steps`` steps. Engine queries are counted and capped by ``max_queries``.

    Args:
      engine: the blackbox engine.
      real_images: float32[N, R, R, 3] in [-1, 1], real aligned faces.
      real_embeddings: float32[N, D], their engine vectors.
      every: refresh period in generator steps.
      buffer_size: capacity of the replay buffer.
      max_queries: the most images ever sent to the engine.
      queries_per_refresh: generated images labelled per refresh.
      distill_steps: student updates per refresh.
      batch_size: images per student update (half real, half replayed).
      learning_rate: the student optimizer's learning rate.
      center: mean engine vector for the centred distillation loss, or None.
      seed: seed of the sampling.
    """

    def __init__(self, engine: Engine, real_images: np.ndarray, real_embeddings: np.ndarray,
                 every: int, buffer_size: int, max_queries: int, queries_per_refresh: int = 32,
                 distill_steps: int = 4, batch_size: int = 32, learning_rate: float = 1e-4,
                 center: np.ndarray | None = None, seed: int = 0):
        super().__init__()
        if every < 1:
            raise ValueError(f"refresh period must be >= 1 step, got {every}")
        self.engine = engine
        self.real_images = np.asarray(real_images, np.float32)
        self.real_embeddings = np.asarray(real_embeddings, np.float32)
        self.every = every
        self.max_queries = max_queries
        self.queries_per_refresh = queries_per_refresh
        self.distill_steps = distill_steps
        self.batch_size = batch_size
        self.center = center
        self.seed = seed
        # Everything a resumed run needs to refresh exactly as an uninterrupted one would:
        # the counters, the labelled pairs and the student optimizer's moments. The random
        # draws are seeded from (seed, refresh count), so they need no state of their own.
        self.state = tf.Module(name="student_refresh")
        self.state.buffer = ReplayBuffer(buffer_size, self.real_images.shape[1:],
                                         self.real_embeddings.shape[1])
        self.state.queries = tf.Variable(0, dtype=tf.int64, trainable=False, name="queries")
        self.state.refreshes = tf.Variable(0, dtype=tf.int64, trainable=False,
                                           name="refreshes")
        self.state.optimizer = keras.optimizers.Adam(learning_rate)
        self.last_gap: tuple[float, float] | None = None
        self._distill_step = None

    @property
    def buffer(self) -> ReplayBuffer:
        return self.state.buffer

    @property
    def optimizer(self) -> keras.optimizers.Optimizer:
        return self.state.optimizer

    @property
    def queries(self) -> int:
        """Images sent to the engine over the whole run, resumed runs included."""
        return int(self.state.queries.numpy())

    @property
    def refreshes(self) -> int:
        return int(self.state.refreshes.numpy())

    def build(self, student: keras.Model) -> None:
        """Creates the student optimizer's variables, so that a checkpoint can restore them.

        Call it inside ``strategy.scope()`` before restoring, like the other optimizers.
        """
        self.optimizer.build(student.trainable_variables)

    def on_train_begin(self, logs=None):
        self.buffer.reload()  # a restored checkpoint filled the variables, not the arrays

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.g_optimizer.iterations.numpy())
        if step % self.every == 0:
            self.refresh()
        if logs is not None:
            logs["engine_queries"] = float(self.queries)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["engine_queries"] = float(self.queries)
            if self.last_gap is not None:
                logs["refresh_gap_before"], logs["refresh_gap_after"] = self.last_gap

    def _student_vectors(self, images):
        return self.model.student_embed(images)

    def student_gap(self, images: np.ndarray, vectors: np.ndarray) -> float:
        """Mean (centred) distillation loss of the student against the given teacher vectors."""
        student_vectors = self._student_vectors(tf.constant(images))
        return float(losses_lib.distillation_loss(student_vectors, tf.constant(vectors),
                                                  center=self.center))

    def refresh(self) -> None:
        """Labels new generated faces with the engine and distils them into the student."""
        budget = min(self.queries_per_refresh, self.max_queries - self.queries)
        if budget <= 0:
            return
        rng = np.random.default_rng([self.seed, self.refreshes])
        index = rng.choice(len(self.real_embeddings), size=budget,
                                replace=len(self.real_embeddings) < budget)
        embeddings = self.real_embeddings[index]
        noise = rng.standard_normal(
            (budget, self.model.config.generator.noise_dim)).astype(np.float32)
        generated = to_uint8(np.asarray(self.model.generator([embeddings, noise],
                                                             training=False)))
        teacher = self.engine.embed(generated)
        self.state.queries.assign_add(budget)
        self.buffer.add(generated, teacher)
        # The student sees what the engine saw: the uint8 image.
        shown = from_uint8(generated)
        before = self.student_gap(shown, teacher)
        self._train_student(rng)
        after = self.student_gap(shown, teacher)
        self.last_gap = (before, after)
        self.state.refreshes.assign_add(1)

    def _train_student(self, rng: np.random.Generator) -> None:
        if not self.optimizer.built:
            self.build(self.model.student)
        if self._distill_step is None:
            self._distill_step = tf.function(self._distill_once)
        half = max(1, self.batch_size // 2)
        for _ in range(self.distill_steps):
            real_index = rng.choice(len(self.real_images), size=half,
                                    replace=len(self.real_images) < half)
            replay_images, replay_vectors = self.buffer.sample(half, rng)
            images = np.concatenate([self.real_images[real_index], replay_images])
            vectors = np.concatenate([self.real_embeddings[real_index], replay_vectors])
            self._distill_step(tf.constant(images), tf.constant(vectors))

    def _distill_once(self, images, vectors):
        variables = self.model.student.trainable_variables
        with tf.GradientTape() as tape:
            student_vectors = self._student_vectors(images)
            loss = losses_lib.distillation_loss(student_vectors, vectors, center=self.center)
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss


class ImageGridLogger(keras.callbacks.Callback):
    """Logs [real | reconstruction] grids with engine cosines to TensorBoard and a PNG.

    Args:
      engine: the blackbox engine (its queries are counted in ``queries``).
      images: uint8[N, R, R, 3] fixed real faces to reconstruct.
      embeddings: float32[N, D] their engine vectors.
      log_dir: TensorBoard directory; the latest grid is also written as ``grid.png`` there.
      every: period in steps.
    """

    def __init__(self, engine: Engine, images: np.ndarray, embeddings: np.ndarray,
                 log_dir: str, every: int):
        super().__init__()
        self.engine = engine
        self.images = images
        self.embeddings = np.asarray(embeddings, np.float32)
        self.log_dir = log_dir
        self.every = max(1, every)
        self.queries = 0
        self.writer = tf.summary.create_file_writer(log_dir)

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.g_optimizer.iterations.numpy())
        if step % self.every == 0:
            self.log(step)

    def on_train_end(self, logs=None):
        self.log(int(self.model.g_optimizer.iterations.numpy()))

    def log(self, step: int) -> np.ndarray:
        noise = np.zeros((len(self.embeddings), self.model.config.generator.noise_dim),
                         np.float32)
        generated = to_uint8(self.model.generator([self.embeddings, noise], training=False))
        vectors = self.engine.embed(generated)
        self.queries += len(generated)
        cosines = np.sum(vectors * self.embeddings, axis=1)
        grid = comparison_grid(np.stack([self.images, generated], axis=1),
                               np.stack([np.ones_like(cosines), cosines], axis=1),
                               ["real", "reconstruction"], threshold=None)
        with self.writer.as_default():
            tf.summary.image("real_vs_reconstruction", grid[None], step=step)
            tf.summary.scalar("engine_cosine", float(cosines.mean()), step=step)
        tf.io.write_file(f"{self.log_dir}/grid.png", tf.io.encode_png(grid))
        return grid


class MinutesLogger(keras.callbacks.Callback):
    """A measurement every ``every`` steps (and at the start and end), one JSON line each.

    Each line of ``<log_dir>/<file_name>`` holds the step, the minutes of training so far and
    what ``values(step)`` measured. A resumed run keeps the lines up to its restored step and
    adds its minutes to theirs, so the file is one curve against training time across runs.
    Subclasses give ``file_name``, ``_step()`` and ``values(step)``.

    Args:
      log_dir: folder of the TensorBoard events and the JSON lines.
      every: period in steps.
    """

    file_name = "measurements.jsonl"

    def __init__(self, log_dir: str, every: int):
        super().__init__()
        self.log_dir = pathlib.Path(log_dir)
        self.every = max(1, every)
        self.writer = tf.summary.create_file_writer(str(self.log_dir))
        self.history: list[dict] = []
        self._minutes_before = 0.0
        self._started = 0.0
        self._last_step = -1

    @property
    def path(self) -> pathlib.Path:
        return self.log_dir / self.file_name

    def _step(self) -> int:
        raise NotImplementedError

    def values(self, step: int) -> dict:
        """The measurement at ``step`` (numbers only); may write TensorBoard summaries."""
        raise NotImplementedError

    def on_train_begin(self, logs=None):
        step = self._step()
        kept = []
        if self.path.exists():
            kept = [json.loads(line) for line in self.path.read_text().splitlines() if line]
            kept = [entry for entry in kept if entry["step"] <= step]
        self.history = kept
        self._minutes_before = kept[-1]["minutes"] if kept else 0.0
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(entry) + "\n" for entry in kept))
        self._started = time.perf_counter()
        if not kept:
            self.measure(step)

    def on_train_batch_end(self, batch, logs=None):
        step = self._step()
        if step % self.every == 0:
            self.measure(step)

    def on_train_end(self, logs=None):
        self.measure(self._step())

    def measure(self, step: int) -> dict:
        """Measures and logs at ``step`` (once per step)."""
        if step == self._last_step or (self.history and self.history[-1]["step"] == step):
            return self.history[-1]
        self._last_step = step
        # The measurement's own time is not training time.
        minutes = self._minutes_before + (time.perf_counter() - self._started) / 60.0
        measuring = time.perf_counter()
        with self.writer.as_default():
            entry = {"step": step, "minutes": round(minutes, 3), **self.values(step)}
        self.writer.flush()
        self._started += time.perf_counter() - measuring
        self.history.append(entry)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(entry) + "\n")
        return entry


class TimeBudget(keras.callbacks.Callback):
    """Stops ``fit`` at the end of an epoch (a checkpoint) once ``minutes`` of it are spent.

    The minutes count across ``fit`` calls and resumes: the total is written to
    ``state_file`` at every epoch end, and a new ``fit`` (or a resumed run) adds to it. A
    kill between two epoch ends loses at most that epoch's minutes, as it loses its steps.
    The state also keeps minutes and steps per ``phase`` (set it before each ``fit``), so an
    equal-time comparison can quote each phase's seconds per step.

    Args:
      minutes: the budget (> 0).
      state_file: where the minutes spent are kept (JSON).
    """

    def __init__(self, minutes: float, state_file: str | pathlib.Path):
        super().__init__()
        if not minutes > 0:
            raise ValueError(f"a time budget must be > 0 minutes, got {minutes}")
        self.minutes = float(minutes)
        self.state_file = pathlib.Path(state_file)
        self.phase = "train"
        self._on_train_begin()

    def _state(self) -> dict:
        if not self.state_file.exists():
            return {"minutes": 0.0, "phases": {}}
        state = json.loads(self.state_file.read_text())
        state.setdefault("phases", {})
        return state

    def spent(self) -> float:
        """Minutes spent so far, as last written."""
        return float(self._state()["minutes"])

    @property
    def exhausted(self) -> bool:
        return self.spent() >= self.minutes

    def _on_train_begin(self):
        self._written = self._state()
        self._epoch_started = time.perf_counter()
        self._epoch_steps = 0

    def on_train_begin(self, logs=None):
        self._on_train_begin()

    def on_train_batch_end(self, batch, logs=None):
        self._epoch_steps += 1

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        state = self._written
        state["minutes"] = round(float(state["minutes"]) + (now - self._epoch_started) / 60.0, 4)
        state["budget"] = self.minutes
        phase = state["phases"].setdefault(self.phase, {"minutes": 0.0, "steps": 0})
        phase["minutes"] = round(phase["minutes"] + (now - self._epoch_started) / 60.0, 4)
        phase["steps"] += self._epoch_steps
        self._epoch_started, self._epoch_steps = now, 0
        self.state_file.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.state_file.with_suffix(".partial")
        temporary.write_text(json.dumps(state) + "\n")
        temporary.replace(self.state_file)
        if state["minutes"] >= self.minutes:
            self.model.stop_training = True


class StudentAgreementLogger(MinutesLogger):
    """Measures how well the student agrees with the engine, on held-out and training faces.

    Every ``every`` steps (and at the end) it embeds fixed held-out faces (identities the
    student never trains on) and a fixed sample of training faces, and logs the mean raw and
    centred cosine with the engine's cached vectors: to TensorBoard, to the fit logs, and as
    one JSON line per measurement in ``<log_dir>/agreement.jsonl`` (``MinutesLogger``).

    Args:
      held_out: (uint8[N, R, R, 3] faces, float32[N, D] engine vectors).
      train: the same for training faces.
      center: the mean engine vector of the training photos.
      log_dir: folder of the TensorBoard events and agreement.jsonl.
      every: period in steps.
      batch_size: faces per student call.
    """

    file_name = "agreement.jsonl"

    def __init__(self, held_out: tuple[np.ndarray, np.ndarray],
                 train: tuple[np.ndarray, np.ndarray], center: np.ndarray, log_dir: str,
                 every: int, batch_size: int = 256):
        super().__init__(log_dir, every)
        self.sets = {"held_out": held_out, "train": train}
        self.center = np.asarray(center, np.float32)
        self.batch_size = batch_size

    def _step(self) -> int:
        return int(self.model.optimizer.iterations.numpy())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None and self.history:
            logs["held_out_centred_cosine"] = self.history[-1]["held_out_centred"]

    def agreement(self, images: np.ndarray, vectors: np.ndarray) -> tuple[float, float]:
        """(mean raw cosine, mean centred cosine) of the student with ``vectors``."""
        predicted = np.concatenate([
            self.model.student(from_uint8(images[start:start + self.batch_size]),
                               training=False).numpy()
            for start in range(0, len(images), self.batch_size)])
        measured = student_evaluation.agreement(predicted, vectors, self.center)
        return measured["raw_cosine"], measured["centred_cosine"]

    def values(self, step: int) -> dict:
        entry = {}
        for name, (images, vectors) in self.sets.items():
            raw, centred = self.agreement(images, vectors)
            entry[f"{name}_raw"], entry[f"{name}_centred"] = raw, centred
            tf.summary.scalar(f"agreement/{name}_centred_cosine", centred, step=step)
            tf.summary.scalar(f"agreement/{name}_raw_cosine", raw, step=step)
        return entry


class HeldOutMonitor(MinutesLogger):
    """The exported generator's (the EMA's) held-out success and realism during training.

    Every ``every`` GAN steps it draws the EMA generator's face (noise 0) for the template of
    each fixed held-out photo, has the engine embed it, and logs SAR type I at each FMR
    threshold, the mean cosine, and the sharpness and contrast ratios against the real crops
    (``evaluation.realism``), to TensorBoard and to ``<log_dir>/held_out.jsonl``
    (``MinutesLogger``): the curve of what the run would export against minutes of training.
    Its engine queries only measure; they never reach a loss.

    Args:
      engine: the blackbox engine.
      images: uint8[N, R, R, 3] held-out crops at the training resolution.
      embeddings: float32[N, D] their engine vectors.
      thresholds: {fmr: cosine threshold}.
      log_dir: folder of the TensorBoard events and held_out.jsonl.
      every: period in steps.
    """

    file_name = "held_out.jsonl"

    def __init__(self, engine: Engine, images: np.ndarray, embeddings: np.ndarray,
                 thresholds: dict, log_dir: str, every: int):
        super().__init__(log_dir, every)
        self.engine = engine
        self.images = images
        self.embeddings = np.asarray(embeddings, np.float32)
        self.thresholds = dict(thresholds)
        self.queries = 0

    def _step(self) -> int:
        return int(self.model.g_optimizer.iterations.numpy())

    def values(self, step: int) -> dict:
        from vec2face_tf.evaluation import realism

        generator = self.model.ema_generator()
        noise = np.zeros((len(self.embeddings), generator.noise_dim), np.float32)
        generated = to_uint8(generator([self.embeddings, noise], training=False))
        vectors = self.engine.embed(generated)
        self.queries += len(generated)
        cosines = np.sum(vectors * self.embeddings, axis=1)
        entry = {"mean_cosine": float(cosines.mean()),
                 "sharpness_ratio": realism.sharpness_ratio(generated, self.images),
                 "contrast_ratio": realism.contrast_ratio(generated, self.images)}
        for fmr, threshold in self.thresholds.items():
            entry[f"sar_type1@{fmr}"] = float(np.mean(cosines > threshold))
        for name, value in entry.items():
            tf.summary.scalar(f"held_out/{name}", value, step=step)
        return entry
