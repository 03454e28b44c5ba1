"""The DiBiGAN training run: data, the student stage (distillation of the image student),
stage 1 (flow, and the flow student), stage 2 (GAN), checkpoints.

``train`` is what ``vec2face-train`` calls; every check that can fail on the flags runs before
any expensive work.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import typing

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from vec2face_tf import config as config_lib
from vec2face_tf.data import pipeline, prepare, sources
from vec2face_tf.data.cache import CacheError
from vec2face_tf.engines import EngineError, get_engine
from vec2face_tf.evaluation.reconstruction import from_uint8
from vec2face_tf.filesystem import (
    error_text,
    exclusive_lock,
    free_space_text,
    is_out_of_space,
)
from vec2face_tf.models import dibigan
from vec2face_tf.training import callbacks as callbacks_lib
from vec2face_tf.training.strategies import get_strategy

STAGE1_DONE = "stage1.done"
LOCK_FILE = "train.lock"
STAGES = ("all", "student")


class TrainingError(ValueError):
    """A training flag or a model_dir that cannot work, found before any training."""


# Errors that mean "these flags cannot work": the binary prints them without a traceback.
EXPECTED_ERRORS = (TrainingError, config_lib.ConfigError, sources.SourceError, CacheError,
                   EngineError)


@dataclasses.dataclass
class TrainResult:
    model_dir: pathlib.Path
    stage1_history: dict
    stage2_history: dict
    engine_queries: int
    student_history: dict = dataclasses.field(default_factory=dict)


def validate_config(config: config_lib.Config) -> None:
    """Checks the shapes a config implies, so that a bad one fails before any work."""
    resolution = config.data.resolution
    if resolution % 2 ** config.flow.levels:
        raise TrainingError(f"data.resolution={resolution} must be divisible by "
                            f"2**flow.levels = {2 ** config.flow.levels}")
    ratio = resolution // config.generator.start_resolution
    if resolution % config.generator.start_resolution or ratio & (ratio - 1):
        raise TrainingError(f"data.resolution={resolution} must be generator.start_resolution="
                            f"{config.generator.start_resolution} times a power of two")
    if config.data.identities_per_batch < 2 or config.data.images_per_identity < 2:
        raise TrainingError("the batch-hard triplet loss needs data.identities_per_batch >= 2 "
                            "and data.images_per_identity >= 2")
    if config.student.kind not in dibigan.STUDENT_KINDS:
        raise TrainingError(f"student.kind={config.student.kind!r}; choose one of "
                            f"{dibigan.STUDENT_KINDS}")
    if config.student.kind != "image" and config.losses.perceptual_weight > 0:
        raise TrainingError("losses.perceptual_weight > 0 compares the image student's "
                            f"feature maps; with student.kind={config.student.kind!r} set "
                            "losses.perceptual_weight=0")
    if config.student.kind == "image":
        stages = len(config.student.blocks)
        if resolution % 2 ** stages:
            raise TrainingError(f"data.resolution={resolution} must be divisible by "
                                f"2**len(student.blocks) = {2 ** stages}")
        if config.student.batch_size < 2:
            raise TrainingError("student.batch_size must be >= 2")
    every = config.train.checkpoint_every
    for name in ("student_steps", "stage1_steps", "stage2_steps"):
        if every < 1 or getattr(config.train, name) % every:
            raise TrainingError(f"train.{name}={getattr(config.train, name)} must be a multiple "
                                f"of train.checkpoint_every={every} (one epoch per checkpoint)")
    if config.generator.kind not in dibigan.GENERATOR_KINDS:
        raise TrainingError(f"generator.kind={config.generator.kind!r}; choose one of "
                            f"{dibigan.GENERATOR_KINDS}")
    if config.schedule.kind == "two_phase" and (
            config.schedule.regression_steps < 0 or config.schedule.regression_steps % every):
        raise TrainingError(f"schedule.regression_steps={config.schedule.regression_steps} "
                            f"must be a non-negative multiple of train.checkpoint_every={every}")
    if not config.train.time_budget_minutes >= 0:  # NaN fails too
        raise TrainingError(f"train.time_budget_minutes={config.train.time_budget_minutes} "
                            "must be >= 0 (0: no budget)")
    if config.train.precision not in dibigan.PRECISIONS:
        raise TrainingError(f"train.precision={config.train.precision!r}; choose one of "
                            f"{dibigan.PRECISIONS}")
    if config.data.min_images_per_identity < 2:
        raise TrainingError("data.min_images_per_identity must be >= 2: a positive pair needs "
                            "two photos of one person")


def check_model_dir(model_dir: pathlib.Path, config: config_lib.Config) -> None:
    """Refuses to resume a model_dir trained with an incompatible config."""
    saved = model_dir / "config.json"
    if not saved.exists():
        return
    previous = config_lib.config_from_dict(json.loads(saved.read_text()))
    for name in ("engine", "data.resolution", "flow", "generator", "discriminator", "student"):
        head, _, tail = name.partition(".")
        old, new = getattr(previous, head), getattr(config, head)
        if tail:
            old, new = getattr(old, tail), getattr(new, tail)
        if old != new:
            raise TrainingError(
                f"{model_dir} holds a run with {name}={old!r}, but this run asks for "
                f"{name}={new!r}; use another --model_dir or the same settings")


def train(config: config_lib.Config, data: str, model_dir: str, cache_dir: str | None = None,
          strategy_name: str = "default", workers: int = 2,
          max_images: int = 0, verbose: int | str = "auto",
          extra_data: typing.Sequence[str] = (), extra_cache_dir: str | None = None,
          stage: str = "all", init_from: str | None = None,
          student_from: str | None = None,
          student_init_from: str | None = None) -> TrainResult:
    """Trains DiBiGAN end to end and leaves checkpoints and logs in ``model_dir``.

    Args:
      config: the resolved config (preset plus overrides).
      data: an identity-folder path or ``tfds:<name>``.
      model_dir: output folder; a run resumes from what it finds there.
      cache_dir: the aligned-face/embedding cache (default ``<model_dir>/cache``).
      strategy_name: see ``strategies.get_strategy``.
      workers: processes used to align and embed.
      max_images: use at most this many images (0: all).
      verbose: Keras ``fit`` verbosity ("auto" shows a progress bar).
      extra_data: more photo sources, with or without identity pairs (faces-extra), that
        only the image student distils from (never the GAN: it needs identity pairs).
      extra_cache_dir: their cache (default ``<model_dir>/cache-extra``).
      stage: ``"all"``, or ``"student"`` to run the student stage alone and stop.
      init_from: an exported generator (a SavedModel version folder, e.g. the bundled
        demo's) whose weights G and its EMA start from; it must have this run's
        architecture. Ignored when the run resumes from a checkpoint of its own.
      student_from: an exported image student whose weights the student starts from; the
        student stage is then skipped. Its training identities must not include any of
        this run's held-out identities, and it must have been distilled from this run's
        engine.
      student_init_from: an exported image student whose weights the student stage starts
        from and distils on towards this run's engine (a warm start: it may come from
        another engine of the same embedding size). The same held-out rule applies.

    Raises:
      TrainingError: for flags that cannot work (before any expensive work).
    """
    model_path = pathlib.Path(model_dir)
    validate_config(config)
    if stage not in STAGES:
        raise TrainingError(f"stage={stage!r}; choose one of {STAGES}")
    if student_from and config.student.kind != "image":
        raise TrainingError("--student_from loads an image student; this run has "
                            f"student.kind={config.student.kind!r}")
    if student_from and student_init_from:
        raise TrainingError("--student_from loads a finished student and skips its stage; "
                            "--student_init_from starts that stage from one: give one of them")
    if student_init_from and config.student.kind != "image":
        raise TrainingError("--student_init_from loads an image student; this run has "
                            f"student.kind={config.student.kind!r}")
    if student_from and stage == "student":
        raise TrainingError("--student_from skips the student stage, so --stage=student "
                            "would do nothing")
    if stage == "student" and config.student.kind != "image":
        raise TrainingError("--stage=student distils the image student; this run has "
                            f"student.kind={config.student.kind!r}, whose head trains with "
                            "the flow in stage 1")
    for flag, folder in (("--init_from", init_from), ("--student_from", student_from),
                         ("--student_init_from", student_init_from)):
        if folder and not pathlib.Path(folder).is_dir():
            raise TrainingError(f"{flag}={folder} is not a folder (give an export's version "
                                "folder, e.g. vec2face_tf/demo/model)")
    source = sources.open_source(data)  # raises for a missing or empty folder
    extra_sources = [sources.open_source(spec) for spec in extra_data]
    with exclusive_lock(model_path / LOCK_FILE, lambda holder: TrainingError(
            f"{model_path} is in use by another training run ({holder}); wait for it to "
            "finish or use another --model_dir")):
        return _train_locked(config, source, model_path, cache_dir, strategy_name, workers,
                             max_images, verbose, extra_sources, extra_cache_dir, stage,
                             init_from, student_from, student_init_from)


def _train_locked(config: config_lib.Config, source: sources.FaceSource,
                  model_path: pathlib.Path, cache_dir: str | None, strategy_name: str,
                  workers: int, max_images: int, verbose: int | str,
                  extra_sources: list, extra_cache_dir: str | None, stage: str,
                  init_from: str | None = None, student_from: str | None = None,
                  student_init_from: str | None = None) -> TrainResult:
    check_model_dir(model_path, config)
    engine = get_engine(config.engine)
    strategy = get_strategy(strategy_name)
    model_path.mkdir(parents=True, exist_ok=True)
    (model_path / "config.json").write_text(config.to_json())

    cache_path = pathlib.Path(cache_dir) if cache_dir else model_path / "cache"
    # Exports read the engine and the cache (int8 calibration) from here.
    (model_path / "run.json").write_text(json.dumps({
        "engine": engine.name, "embedding_dim": engine.dim,
        "cache_dir": str(cache_path.resolve())}, indent=1))
    image_student = config.student.kind == "image"
    # A loaded student needs no views: they only serve its distillation.
    views = config.student.views if image_student and not student_from else 0
    stats = prepare.prepare(source, config.engine, cache_path, crop=config.crop,
                            workers=workers, max_images=max_images, views=views)
    logging.info("prepared faces: %s", stats)
    extra_path = (pathlib.Path(extra_cache_dir) if extra_cache_dir
                  else model_path / "cache-extra")
    for extra in extra_sources:
        logging.info("prepared extra faces: %s", prepare.prepare(
            extra, config.engine, extra_path, crop=config.crop, workers=workers,
            views=views))
    faces = pipeline.load_faces(cache_path, engine.name, config.crop,
                                resolution=config.data.resolution,
                                min_images_per_identity=config.data.min_images_per_identity)
    train_faces, held_out = pipeline.split_by_identity(
        faces, config.data.holdout_identities, config.data.seed)
    (model_path / "split.json").write_text(json.dumps({
        "train_identities": train_faces.identity_names.tolist(),
        "held_out_identities": held_out.identity_names.tolist(),
    }, indent=1))

    resolution = config.data.resolution
    global_batch = config.data.identities_per_batch * config.data.images_per_identity
    center = train_faces.embeddings.mean(axis=0)
    # The exported student carries it: "centred cosine" with the engine subtracts it.
    (model_path / "center.json").write_text(json.dumps([float(v) for v in center]))
    dataset_args = dict(resolution=resolution,
                        identities_per_batch=config.data.identities_per_batch,
                        images_per_identity=config.data.images_per_identity,
                        seed=config.data.seed)
    preview_count = min(8, len(held_out))
    real_sample = np.random.default_rng(config.data.seed).choice(
        len(train_faces), size=min(512, len(train_faces)), replace=False)
    refresh = callbacks_lib.StudentRefresh(
        engine, real_images=from_uint8(train_faces.crops[real_sample]),
        real_embeddings=train_faces.embeddings[real_sample],
        every=config.train.refresh_every, buffer_size=config.train.replay_buffer_size,
        max_queries=config.train.max_engine_queries, center=center, seed=config.train.seed)

    # Initial weights from the seed: a run killed before its first checkpoint restarts from
    # the same weights, so its result equals an uninterrupted run's.
    keras.utils.set_random_seed(config.train.seed)
    with strategy.scope():
        parts = dibigan.build_parts(config, embedding_dim=engine.dim)
        for network in (parts.generator, parts.discriminator):
            network.embedding_normalization.set_center(center)
        stage1 = dibigan.FlowStudentTrainer(
            parts.flow, None if image_student else parts.student,
            num_bits=config.flow.num_bits, center=center, global_batch_size=global_batch)
        stage1.compile(optimizer=keras.optimizers.Adam(config.train.flow_lr))
        stage1.optimizer.build(stage1.trainable_networks_variables)
        distiller = dibigan.StudentDistiller(
            parts.student, center=center, relational_weight=config.student.relational_weight,
            global_batch_size=config.student.batch_size)
        distiller.compile(optimizer=student_optimizer(config))
        distiller.optimizer.build(parts.student.trainable_variables)
        calibration = train_faces.embeddings[np.random.default_rng(config.data.seed).choice(
            len(train_faces), size=min(dibigan.CALIBRATION_TEMPLATES, len(train_faces)),
            replace=False)].astype(np.float32)
        np.save(model_path / dibigan.CALIBRATION_FILE, calibration)
        gan = dibigan.DiBiGAN(parts, config, center=center, global_batch_size=global_batch,
                              calibration_embeddings=calibration)
        gan.compile(
            d_optimizer=keras.optimizers.Adam(config.train.discriminator_lr,
                                              beta_1=config.train.beta_1,
                                              beta_2=config.train.beta_2),
            g_optimizer=keras.optimizers.Adam(config.train.generator_lr,
                                              beta_1=config.train.beta_1,
                                              beta_2=config.train.beta_2, use_ema=True,
                                              ema_momentum=config.train.ema_momentum))
        gan.build_optimizers()
        refresh.build(parts.student)
        if student_from:
            load_student_weights(parts.student, student_from, held_out,
                                 engine_name=engine.name)
        # A resumed student stage restores its checkpoint over these weights below.
        if student_init_from:
            load_student_weights(parts.student, student_init_from, held_out,
                                 flag="--student_init_from")
        if init_from:
            load_generator_weights(parts.generator, init_from)
            # The export's centre is its own run's engine mean; this run's templates are
            # centred on this run's (another engine's, for a cross-engine warm start).
            parts.generator.embedding_normalization.set_center(center)
            gan.reset_ema()

    optimizers = dict(stage1_optimizer=stage1.optimizer, d_optimizer=gan.d_optimizer,
                      g_optimizer=gan.g_optimizer)
    if image_student:
        optimizers["student_optimizer"] = distiller.optimizer
    checkpoint = dibigan.checkpoint_for(parts, **optimizers, refresh=refresh.state)
    removed = remove_incomplete_checkpoints(model_path / "checkpoints")
    if removed:
        logging.warning("removed the files of checkpoints that were never completed: %s",
                        removed)
    manager = tf.train.CheckpointManager(checkpoint, str(model_path / "checkpoints"),
                                         max_to_keep=3)
    if manager.latest_checkpoint:
        restore_checkpoint(manager.latest_checkpoint, checkpoint,
                           dibigan.checkpoint_for(parts, **optimizers))
    else:
        # ActNorm's data-dependent initialisation, once, eagerly and on real faces, so that
        # every replica starts from the same statistics.
        first_images, _, _ = next(iter(pipeline.make_dataset(train_faces, **dataset_args)))
        parts.flow(dibigan.flow_lib.BijectiveFlow.preprocess(
            first_images, config.flow.num_bits, dequantize=False))

    every = config.train.checkpoint_every
    def dataset_from(step: tf.Variable):
        # Batches are a pure function of (seed, step): a resumed stage reads on from its step.
        return pipeline.distribute_dataset(strategy, train_faces, **dataset_args,
                                           start_step=int(step.numpy()))

    # Checkpoints are numbered by training steps over the stages, in order.
    stage1_offset = config.train.student_steps if image_student else 0
    stage2_offset = stage1_offset + config.train.stage1_steps + 1
    student_history: dict = {}
    if student_from and not (model_path / config_lib.STUDENT_DONE_FILE).exists():
        (model_path / config_lib.STUDENT_DONE_FILE).write_text(
            f"student loaded from {student_from}\n")
    if image_student and not (model_path / config_lib.STUDENT_DONE_FILE).exists():
        student_history = run_student_stage(
            config, distiller, strategy, manager, model_path, cache_path,
            extra_path if extra_sources else None, engine.name, train_faces, held_out, center,
            verbose)
        (model_path / config_lib.STUDENT_DONE_FILE).write_text("student stage finished\n")
    if stage == "student":
        engine.close()
        return TrainResult(model_path, {}, {}, engine_queries=0,
                           student_history=student_history)

    # One budget for the flow stage and the GAN: a recipe that needs a trained flow pays for
    # it out of the same minutes (the student stage, often loaded, is outside it).
    budget = None
    if config.train.time_budget_minutes > 0:
        budget = callbacks_lib.TimeBudget(config.train.time_budget_minutes,
                                          model_path / "logs" / "time_budget.json")
    stage1_history: dict = {}
    if not (model_path / STAGE1_DONE).exists():
        if budget:
            budget.phase = "stage1"
        stage1_history = fit_stage(
            stage1, dataset_from(stage1.optimizer.iterations), stage1.optimizer.iterations,
            config.train.stage1_steps, every, verbose, callbacks=[
                CheckpointEvery(manager, stage1.optimizer.iterations, every,
                                offset=stage1_offset),
                keras.callbacks.TensorBoard(str(model_path / "logs" / "stage1")),
                *([budget] if budget else [])])
        save_checkpoint(manager, stage1_offset + config.train.stage1_steps)
        (model_path / STAGE1_DONE).write_text("stage 1 finished\n")

    grids = callbacks_lib.ImageGridLogger(
        engine, held_out.crops[:preview_count], held_out.embeddings[:preview_count],
        log_dir=str(model_path / "logs" / "stage2"), every=config.train.log_every)
    checkpointer = CheckpointEvery(manager, gan.g_optimizer.iterations,
                                   config.train.checkpoint_every, offset=stage2_offset)

    stage2_callbacks = [refresh, grids, checkpointer,
                        keras.callbacks.TensorBoard(str(model_path / "logs" / "stage2"))]
    if config.train.monitor_every > 0:
        stage2_callbacks.append(held_out_monitor(config, engine, cache_path, held_out,
                                                 model_path / "logs" / "stage2"))
    if budget:
        stage2_callbacks.append(budget)
    regression_steps = regression_phase_steps(config)
    stage2_history: dict = {}
    if budget and budget.exhausted:
        logging.info("the time budget (%.1f min) is spent: no stage-2 steps",
                     budget.minutes)
    elif int(gan.g_optimizer.iterations.numpy()) < regression_steps:
        crops, vectors, counts = distillation_faces(
            held_out, cache_path, extra_path if extra_sources else None, config, engine.name)
        logging.info("regression phase: %d faces (%s)", len(crops), counts)
        start = int(gan.g_optimizer.iterations.numpy())
        if budget:
            budget.phase = "regression"
        regression_data = strategy.distribute_datasets_from_function(
            lambda context: pipeline.make_distillation_dataset(
                crops, vectors, global_batch, seed=config.data.seed, start_step=start,
                input_context=context))
        stage2_history = fit_stage(gan, regression_data, gan.g_optimizer.iterations,
                                   regression_steps, every, verbose, callbacks=stage2_callbacks)
        # The critic's step reads P x K batches of another structure: trace it anew.
        gan.train_function = None
    if budget:
        budget.phase = "critic"
    critic_history = {} if budget and budget.exhausted else fit_stage(
        gan, dataset_from(gan.g_optimizer.iterations), gan.g_optimizer.iterations,
        config.train.stage2_steps, every, verbose, callbacks=stage2_callbacks)
    if budget and budget.exhausted:
        logging.info("stage 2 stopped by its time budget at step %d (%.1f of %.1f min)",
                     int(gan.g_optimizer.iterations.numpy()), budget.spent(), budget.minutes)
    for name, values in critic_history.items():
        stage2_history[name] = stage2_history.get(name, []) + values
    save_checkpoint(manager, stage2_offset + int(gan.g_optimizer.iterations.numpy()))
    engine.close()
    return TrainResult(model_path, stage1_history, stage2_history,
                       engine_queries=refresh.queries + grids.queries,
                       student_history=student_history)


def held_out_monitor(config: config_lib.Config, engine, cache_path: pathlib.Path,
                     held_out: pipeline.Faces, log_dir: pathlib.Path
                     ) -> callbacks_lib.HeldOutMonitor:
    """The held-out curve of the run: one photo of each of ``train.monitor_faces`` held-out
    identities, scored at the thresholds of every real face of the run's cache."""
    from vec2face_tf.evaluation import thresholds

    first_photos = np.flatnonzero(np.r_[True, held_out.labels[1:] != held_out.labels[:-1]])
    rows = first_photos[:config.train.monitor_faces]
    measured = thresholds.cache_thresholds(cache_path, engine.name, config.crop)["fmr"]
    return callbacks_lib.HeldOutMonitor(
        engine, held_out.crops[rows], held_out.embeddings[rows],
        {fmr: entry["cosine"] for fmr, entry in measured.items()}, log_dir=str(log_dir),
        every=config.train.monitor_every)


def regression_phase_steps(config: config_lib.Config) -> int:
    """GAN steps of critic-free regression before the critic (schedule kind two_phase)."""
    if config.schedule.kind != "two_phase":
        return 0
    return min(config.schedule.regression_steps, config.train.stage2_steps)


def restore_export(model: keras.Model, folder: str, flag: str, export_format: str,
                   hint: str = "") -> dict:
    """Sets ``model``'s weights to those of an export of ``export_format``; returns its metadata.

    Raises:
      TrainingError: naming ``flag`` for a folder that is not such an export, or one of
        another architecture (``hint`` is added to that message).
    """
    from vec2face_tf.export import savedmodel

    try:
        metadata = savedmodel.read_metadata(folder)
        if metadata.get("format") != export_format:
            raise TrainingError(f"{flag}={folder} is not a {export_format} export")
        savedmodel.restore_exported_weights(model, folder)
    except (savedmodel.ExportError, OSError) as error:
        raise TrainingError(f"{flag}={folder}: {error}{hint}") from None
    logging.info("%s weights from %s", export_format, folder)
    return metadata


def load_student_weights(student: keras.Model, student_from: str,
                         held_out: pipeline.Faces, engine_name: str | None = None,
                         flag: str = "--student_from") -> None:
    """Sets the student's weights to an exported student's, refusing one that saw a probe.

    Args:
      student: this run's student network.
      student_from: the student export's folder.
      held_out: this run's held-out faces.
      engine_name: when given, the engine the export must have been distilled from (a
        frozen student of another engine would pull G towards the wrong engine).
      flag: the flag named in errors.

    Raises:
      TrainingError: for a folder that is not a student export of this architecture, a
        student of another engine than ``engine_name``, or a student whose training
        identities include this run's held-out identities (its perceptual and identity
        terms would have seen the people the run is measured on).
    """
    metadata = restore_export(student, student_from, flag, "vec2face_tf student")
    seen = set(metadata.get("train_identities") or [])
    overlap = sorted(seen & set(held_out.identity_names.tolist()))
    if overlap:
        raise TrainingError(
            f"{flag}={student_from} was trained on {len(overlap)} of this run's "
            f"held-out identities (e.g. {overlap[:3]}); use the same data.seed and "
            "data.holdout_identities as its run, or distil a new student")
    if engine_name and metadata.get("engine") != engine_name:
        raise TrainingError(
            f"{flag}={student_from} was distilled from engine {metadata.get('engine')!r}, "
            f"this run's engine is {engine_name!r}; distil a student for it (or start one "
            "from this export with --student_init_from)")


def load_generator_weights(generator: keras.Model, init_from: str) -> None:
    """Sets G's weights to those of an exported generator of the same architecture.

    Raises:
      TrainingError: for a folder that is not a generator export, or another architecture.
    """
    restore_export(generator, init_from, "--init_from", "vec2face_tf generator",
                   hint="; its generator section must match this run's config")


def student_optimizer(config: config_lib.Config) -> keras.optimizers.Optimizer:
    """AdamW with a linear warm-up then a cosine decay over the student stage's steps."""
    student = config.student
    warmup = min(student.warmup_steps, config.train.student_steps)
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup else student.learning_rate,
        decay_steps=max(1, config.train.student_steps - warmup),
        warmup_target=student.learning_rate if warmup else None, warmup_steps=warmup)
    optimizer = keras.optimizers.AdamW(schedule, weight_decay=student.weight_decay)
    # Decay the convolution and dense kernels, not batch norm's scales and shifts.
    optimizer.exclude_from_weight_decay(var_names=["gamma", "beta", "bias"])
    return optimizer


def distillation_faces(held_out: pipeline.Faces, cache_path: pathlib.Path,
                       extra_path: pathlib.Path | None, config: config_lib.Config, engine_name: str
                       ) -> tuple[np.ndarray, np.ndarray, dict]:
    """The student's training set: every cached photo and view but the held-out identities'.

    Args:
      held_out: the held-out faces (their identities never reach the student).
      cache_path: the run's cache (its ``views`` table holds the views).
      extra_path: the extra photos' cache, or None.
      config: the run's config.
      engine_name: the engine's name (the cache key).

    Returns:
      (uint8[N, R, R, 3] faces, float32[N, D] engine vectors, counts by source).
    """
    resolution = config.data.resolution
    excluded = set(held_out.identity_names.tolist())
    # Photos of identities with a single photo are never probed, so the student may use them.
    photos = pipeline.load_faces(cache_path, engine_name, config.crop, resolution=resolution)
    parts = {"photos": photos,
             "views": pipeline.load_views(cache_path, engine_name, config.crop, resolution,
                                          max_view=config.student.views)}
    if extra_path is not None:
        parts["extra_photos"] = pipeline.load_faces(extra_path, engine_name, config.crop,
                                                    resolution=resolution)
        parts["extra_views"] = pipeline.load_views(extra_path, engine_name, config.crop,
                                                   resolution, max_view=config.student.views)
    crops, vectors, counts = [], [], {}
    for name, part in parts.items():
        if not len(part):
            counts[name] = 0
            continue
        keep = ~np.isin(part.identity_names[part.labels], list(excluded))
        crops.append(part.crops[keep])
        vectors.append(part.embeddings[keep])
        counts[name] = int(np.sum(keep))
    return np.concatenate(crops), np.concatenate(vectors).astype(np.float32), counts


def run_student_stage(config: config_lib.Config, distiller: keras.Model, strategy,
                      manager: tf.train.CheckpointManager, model_path: pathlib.Path,
                      cache_path: pathlib.Path, extra_path: pathlib.Path | None,
                      engine_name: str, train_faces: pipeline.Faces, held_out: pipeline.Faces,
                      center: np.ndarray, verbose) -> dict:
    """Distils the image student (resumable), logging its agreement with the engine.

    Returns:
      The stage's fit history ({} when it was already complete).
    """
    crops, vectors, counts = distillation_faces(held_out, cache_path, extra_path, config,
                                                engine_name)
    logging.info("student stage: %d faces to distil from (%s)", len(crops), counts)
    (model_path / "student_data.json").write_text(json.dumps(
        {"faces": len(crops), "by_source": counts}, indent=1))
    rng = np.random.default_rng(config.data.seed)
    sample = config.student.eval_faces
    held_rows = rng.choice(len(held_out), size=min(sample, len(held_out)), replace=False)
    train_rows = rng.choice(len(train_faces), size=min(sample, len(train_faces)), replace=False)
    monitor = callbacks_lib.StudentAgreementLogger(
        held_out=(held_out.crops[held_rows], held_out.embeddings[held_rows]),
        train=(train_faces.crops[train_rows], train_faces.embeddings[train_rows]),
        center=center, log_dir=str(model_path / "logs" / "student"),
        every=config.student.eval_every)
    step = distiller.optimizer.iterations
    dataset = strategy.distribute_datasets_from_function(
        lambda context: pipeline.make_distillation_dataset(
            crops, vectors, config.student.batch_size, seed=config.data.seed,
            start_step=int(step.numpy()), input_context=context))
    every = config.train.checkpoint_every
    history = fit_stage(distiller, dataset, step, config.train.student_steps, every, verbose,
                        callbacks=[monitor, CheckpointEvery(manager, step, every),
                                   keras.callbacks.TensorBoard(
                                       str(model_path / "logs" / "student"))])
    save_checkpoint(manager, config.train.student_steps)
    return history


def restore_checkpoint(path: str, checkpoint: tf.train.Checkpoint,
                       without_refresh: tf.train.Checkpoint) -> None:
    """Restores a run's latest checkpoint, including one written before the refresh state was.

    Checkpoints from vec2face_tf 0.1 hold no student-refresh state; those resume with an
    empty replay buffer and a query count of zero, which the log says.
    """
    saved = {name.split("/")[0] for name, _ in tf.train.list_variables(path)}
    if "refresh" in saved:
        checkpoint.restore(path).assert_existing_objects_matched()
    else:
        without_refresh.restore(path).assert_existing_objects_matched()
        logging.warning("%s holds no student-refresh state (an older run): the refresh "
                        "restarts with an empty replay buffer and a zero query count", path)
    logging.info("restored %s", path)


def fit_stage(model: keras.Model, dataset, step: tf.Variable, total_steps: int, every: int,
              verbose, callbacks: list) -> dict:
    """Fits one stage up to ``total_steps`` in epochs of ``every`` steps, resuming.

    The step counter restored from the checkpoint gives the first epoch, and ``dataset`` must
    start at that step. Checkpoints are the only resume state: Keras' BackupAndRestore would
    be a second copy, written without an atomic rename (a kill mid-write corrupts it) and
    restored over the newer checkpoint.

    Returns:
      The stage's fit history ({} when it was already complete).
    """
    done = int(step.numpy())
    if done >= total_steps:
        return {}
    history = model.fit(
        dataset, initial_epoch=done // every, epochs=total_steps // every,
        steps_per_epoch=every, verbose=verbose, callbacks=callbacks)
    return history.history


class CheckpointEvery(keras.callbacks.Callback):
    """Saves the CheckpointManager every ``every`` optimizer steps.

    TF writes a checkpoint's files first and its index (``checkpoint``) last, with an atomic
    rename, so a run killed mid-write restarts from the previous complete checkpoint. A write
    that fails (a full disk) stops the run with a TrainingError naming the checkpoint that
    the next run resumes from.

    Args:
      manager: the run's CheckpointManager.
      step: the variable counting the steps (an optimizer's ``iterations``).
      every: the period in steps.
      offset: added to the step to number the checkpoints (stage 2 follows stage 1).
    """

    def __init__(self, manager: tf.train.CheckpointManager, step: tf.Variable, every: int,
                 offset: int = 0):
        super().__init__()
        self.manager = manager
        self.step = step
        self.every = max(1, every)
        self.offset = offset

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.step.numpy())
        if step % self.every == 0:
            save_checkpoint(self.manager, self.offset + step)


def save_checkpoint(manager: tf.train.CheckpointManager, number: int) -> str:
    """``manager.save`` that turns a failed write into a TrainingError with the way out.

    The partial files of the failed checkpoint are removed first (TF leaves them), so the
    message's free space is what is really left.
    """
    try:
        return manager.save(checkpoint_number=number)
    except (OSError, tf.errors.OpError) as error:
        directory = pathlib.Path(manager.directory)
        remove_incomplete_checkpoints(directory)
        # From disk, not manager.latest_checkpoint: a failed pointer write has already
        # changed the manager's idea of the latest one, not the file a rerun reads.
        previous = tf.train.latest_checkpoint(str(directory))
        reason = (f"no space left on the device ({free_space_text(directory)})"
                  if is_out_of_space(error) else error_text(error))
        resume = (f"the last complete checkpoint is {previous} and a rerun resumes from it"
                  if previous else "no checkpoint is complete yet, so a rerun starts over")
        raise TrainingError(
            f"could not write checkpoint {number} in {directory}: {reason}. Its partial "
            f"files were removed; {resume}. Free disk space and rerun the same command"
        ) from error


def remove_incomplete_checkpoints(directory: pathlib.Path) -> list[str]:
    """Deletes the checkpoint files that the ``checkpoint`` pointer file does not list.

    A write cut short (a kill, a full disk) leaves a ``ckpt-N_temp/`` folder, or data next to
    a missing or empty index. No restore ever reads them, since restores follow the pointer,
    but they hold up to twice a checkpoint's size. Call it only while holding the run's lock.

    Returns:
      The names removed.
    """
    state = tf.train.get_checkpoint_state(str(directory))
    listed = {pathlib.Path(path).name
              for path in (state.all_model_checkpoint_paths if state else [])}
    removed = []
    for path in sorted(directory.glob("ckpt-*")):
        match = re.fullmatch(r"(ckpt-\d+)(_temp.*|\.index|\.data-\d+-of-\d+)", path.name)
        if match is None or match.group(1) in listed and not match.group(2).startswith("_temp"):
            continue
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path.name)
    return removed
