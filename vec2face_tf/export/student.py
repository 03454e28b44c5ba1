"""The exported student: the engine's differentiable twin, as a SavedModel.

``<export_base>/<model_name>/student/<version>/`` (a non-numeric folder, which TF Serving
ignores) holds a SavedModel with one signature:

- ``serving_default``: ``image`` uint8[None, H, W, 3] (the aligned crop at the training
  resolution) -> ``embedding`` float32[None, D], unit rows;
- ``embed_float``: ``image`` float32[None, H, W, 3] in [-1, 1] -> ``embedding``, the
  differentiable entry that query refinement chains to the generator's ``sample_float``;

and the asset ``assets/vec2face.json`` (engine, D, H, W, crop, the mean engine vector of the
training photos that "centred cosine" subtracts, the training identities, package version and
training config). The generator's ``vec2face.json`` names the student version exported with it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib

import keras
import tensorflow as tf

import vec2face_tf
from vec2face_tf import config as config_lib
from vec2face_tf.export import savedmodel
from vec2face_tf.export.contract import (
    SERVING_SIGNATURE,
    STUDENT_DIR,
    STUDENT_EMBEDDING_OUTPUT,
    STUDENT_FLOAT_SIGNATURE,
    STUDENT_IMAGE_INPUT,
)
from vec2face_tf.models import dibigan

STUDENT_SIGNATURES = {
    SERVING_SIGNATURE: {
        "inputs": {STUDENT_IMAGE_INPUT: "uint8[None, H, W, 3]"},
        "outputs": {STUDENT_EMBEDDING_OUTPUT: "float32[None, D], unit rows"}},
    STUDENT_FLOAT_SIGNATURE: {
        "inputs": {STUDENT_IMAGE_INPUT: "float32[None, H, W, 3] in [-1, 1]"},
        "outputs": {STUDENT_EMBEDDING_OUTPUT: "float32[None, D], unit rows"}},
}


def checked_images(images: tf.Tensor, height: int, width: int,
                   dtype_text: str = "uint8") -> tf.Tensor:
    """``images`` unchanged, after an in-graph check that they are [batch>0, H, W, 3].

    A loaded signature feeds tensors of any shape past the declared ``[None, H, W, 3]``, so
    the check reads the runtime shape (padded, so that a lower rank cannot pass).
    """
    expected = tf.constant([height, width, 3])
    shape = tf.shape(images)
    padded = tf.concat([shape, [0, 0, 0, 0]], 0)
    is_faces = tf.logical_and(tf.equal(tf.size(shape), 4),
                              tf.reduce_all(tf.equal(padded[1:4], expected)))
    with tf.control_dependencies([tf.debugging.Assert(is_faces, [
            f"image must be {dtype_text}[batch, {height}, {width}, 3] aligned RGB crops at the "
            "student's resolution; got shape", shape])]):
        images = tf.identity(images)
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.shape(images)[0], message="image batch is empty: send at least one face")]):
        return tf.identity(images)


def has_student(model_dir: str | os.PathLike) -> bool:
    """Whether a training folder holds a distilled image student."""
    model_path = pathlib.Path(model_dir)
    config_file = model_path / "config.json"
    if not config_file.exists() or not (model_path / config_lib.STUDENT_DONE_FILE).exists():
        return False
    config = config_lib.config_from_dict(json.loads(config_file.read_text()))
    return config.student.kind == "image"


def load_student(model_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """The distilled image student of a run's latest checkpoint, and its export metadata.

    Raises:
      ExportError: for a folder without config or checkpoint, a run whose student is the
        flow head (it reads flow latents, not images) or not yet distilled.
    """
    model_path = pathlib.Path(model_dir)
    config_file = model_path / "config.json"
    if not config_file.exists():
        raise savedmodel.ExportError(f"{model_path} is not a training folder: no config.json")
    config = config_lib.config_from_dict(json.loads(config_file.read_text()))
    if config.student.kind != "image":
        raise savedmodel.ExportError(
            f"{model_path} trained a student.kind={config.student.kind!r} student, which reads "
            "the flow's latents; only an image student is exported")
    if not (model_path / config_lib.STUDENT_DONE_FILE).exists():
        raise savedmodel.ExportError(f"{model_path} has not finished its student stage; run "
                                     "vec2face-train --stage=student first")
    latest = tf.train.latest_checkpoint(str(model_path / "checkpoints"))
    if latest is None:
        raise savedmodel.ExportError(f"no checkpoint in {model_path / 'checkpoints'}")
    info = savedmodel.run_info(model_path, config)
    student = dibigan.build_student(config, info["embedding_dim"])
    restored = tf.train.Checkpoint(student=[v.value for v in student.variables])
    restored.restore(latest).expect_partial().assert_existing_objects_matched()
    metadata = {
        "format": "vec2face_tf student",
        "engine": info["engine"],
        "embedding_dim": int(student.embedding_dim),
        "height": int(student.resolution),
        "width": int(student.resolution),
        "crop": dataclasses.asdict(config.crop),
        "package_version": vec2face_tf.__version__,
        "signatures": STUDENT_SIGNATURES,
        "center": _training_center(model_path),
        "training_config": json.loads(config.to_json()),
        "train_identities": None,
    }
    split_file = model_path / "split.json"
    if split_file.exists():
        metadata["train_identities"] = json.loads(split_file.read_text())["train_identities"]
    return student, metadata


def load_exported_student(version_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """An exported student rebuilt as a Keras model from its own weights, and its metadata.

    For re-exporting a student (the bundled demo's, say) with this package's signatures when
    its training folder is gone; the metadata's ``signatures`` are updated to match.
    """
    metadata = savedmodel.read_metadata(version_dir)
    if metadata.get("format") != "vec2face_tf student":
        raise savedmodel.ExportError(f"{version_dir} is not a vec2face_tf student export")
    config = config_lib.config_from_dict(metadata["training_config"])
    student = dibigan.build_student(config, int(metadata["embedding_dim"]))
    savedmodel.restore_exported_weights(student, version_dir)
    return student, {**metadata, "signatures": STUDENT_SIGNATURES,
                     "package_version": vec2face_tf.__version__}


def _training_center(model_path: pathlib.Path) -> list[float] | None:
    """The mean engine vector of the run's training photos (what centred cosines subtract)."""
    center_file = model_path / "center.json"
    if center_file.exists():
        return json.loads(center_file.read_text())
    return None


def build_student_archive(student: keras.Model) -> keras.export.ExportArchive:
    """An ``ExportArchive`` with the student's ``serving_default`` signature."""
    height = width = student.resolution
    archive = keras.export.ExportArchive()
    archive.track(student)

    def serve(image):
        image = checked_images(image, height, width)
        faces = tf.cast(image, tf.float32) / 127.5 - 1.0
        return {STUDENT_EMBEDDING_OUTPUT: student(faces, training=False)}

    def embed_float(image):
        faces = checked_images(image, height, width, "float32")
        faces = tf.debugging.assert_all_finite(faces, "image contains NaN or Inf")
        return {STUDENT_EMBEDDING_OUTPUT: student(faces, training=False)}

    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.uint8, name=STUDENT_IMAGE_INPUT)])
    archive.add_endpoint(STUDENT_FLOAT_SIGNATURE, embed_float, input_signature=[
        tf.TensorSpec([None, height, width, 3], tf.float32, name=STUDENT_IMAGE_INPUT)])
    # As for the generator: keep each weight once (savedmodel.build_archive says why).
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(archive._tf_trackable, name, [])
    return archive


def write_student(student: keras.Model, metadata: dict, export_base: str | os.PathLike,
                  model_name: str, version: int | None = None) -> savedmodel.ExportedModel:
    """Writes the next (or the given) student version under ``<model_name>/student/``.

    Raises:
      ExportError: for a bad model name, or a ``version`` that exists already.
    """
    student_base = (pathlib.Path(export_base) / savedmodel.check_model_name(model_name)
                    / STUDENT_DIR)
    if version is None:
        version = (savedmodel.existing_versions(student_base) or [0])[-1] + 1
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise savedmodel.ExportError(f"version must be a positive integer, got {version!r}")
    target = student_base / str(version)
    with savedmodel.publishing(target) as folder:
        build_student_archive(student).write_out(str(folder), verbose=False)
        savedmodel.write_metadata(folder / "assets", metadata)
    return savedmodel.ExportedModel(target, version, metadata)
