"""The exported generator: a SavedModel in TF Serving's layout (DESIGN §3).

``<export_base>/<model_name>/<version>/`` holds a SavedModel with the two contract signatures:

- ``serving_default``: ``embedding`` float32[None, D] (raw engine output, L2-normalised inside)
  -> ``image`` uint8[None, H, W, 3] RGB aligned crop, with noise = 0;
- ``sample``: ``embedding`` float32[None, D], ``noise`` float32[None, Z] -> ``image``;

and, for query refinement, ``sample_float``: the inputs of ``sample`` -> ``image`` float32
[None, H, W, 3] in [-1, 1], before the rounding, so that a gradient reaches the inputs;

and the asset ``assets/vec2face.json`` (engine, D, H, W, Z, crop spec, package version, training
config, and the engine's thresholds at FMR 1e-2/1e-3/1e-4 measured on the run's cached faces
when the cache is there). A version is written to a hidden temporary folder and renamed into
place, so a server polling the base path never sees half a model, and an existing version is
never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pathlib
import re
import shutil
import tempfile
from collections.abc import Iterator

import keras
import tensorflow as tf

import vec2face_tf
from vec2face_tf import config as config_lib
from vec2face_tf.export.contract import (
    EMBEDDING_INPUT,
    IMAGE_OUTPUT,
    MAX_EMBEDDING_NORM,
    MIN_EMBEDDING_NORM,
    NOISE_INPUT,
    SAMPLE_FLOAT_SIGNATURE,
    SAMPLE_SIGNATURE,
    SERVING_SIGNATURE,
)
from vec2face_tf.filesystem import error_text, free_space_text, is_out_of_space
from vec2face_tf.models import dibigan

METADATA_FILE = "vec2face.json"
RUN_FILE = "run.json"
MODELS_CONFIG_FILE = "models.config"
_VERSION_DIR = re.compile(r"^[0-9]+$")
_MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
class ExportError(ValueError):
    """An export that cannot work: a missing checkpoint, a bad name, an existing version."""


@dataclasses.dataclass(frozen=True)
class ExportedModel:
    """Where a version went and what it holds."""

    path: pathlib.Path
    version: int
    metadata: dict


def to_uint8_image(images: tf.Tensor) -> tf.Tensor:
    """Generator output in [-1, 1] to uint8 RGB, rounding to the nearest level."""
    scaled = tf.round((tf.cast(images, tf.float32) + 1.0) * 127.5)
    return tf.cast(tf.clip_by_value(scaled, 0.0, 255.0), tf.uint8)


def checked_matrix(values: tf.Tensor, columns: int, name: str) -> tf.Tensor:
    """``values`` unchanged, after an in-graph check that it really is ``[batch, columns]``.

    A loaded signature (and TF Serving) feeds tensors of any shape past the declared
    ``[None, columns]``, and grappler folds ``tf.rank`` to the declared 2, so the check reads
    the runtime shape padded with zeros: a rank-1 or rank-3 input cannot pass it.
    """
    shape = tf.shape(values)
    padded = tf.concat([shape, [0, 0]], 0)
    last = tf.concat([[0], shape], 0)[-1]
    is_matrix = tf.logical_and(
        tf.equal(tf.size(values), padded[0] * columns),
        tf.logical_and(tf.equal(padded[1], columns), tf.equal(last, columns)))
    with tf.control_dependencies([tf.debugging.Assert(is_matrix, [
            f"{name} must be float32[batch, {columns}]; got shape", shape])]):
        return tf.identity(values)


def checked_embedding(embedding: tf.Tensor, dim: int) -> tf.Tensor:
    """``embedding`` unchanged, after in-graph checks that a served request cannot skip.

    A wrong shape, an empty batch, NaN/Inf or an all-zero row would otherwise give a crash
    deep in the generator, or a garbage, grey or NaN image with no error, so each fails here
    with a message that names the problem.
    """
    embedding = checked_matrix(embedding, dim, "embedding (engine dimension D)")
    # The generator's instance norm cannot broadcast a zero-size batch; say so instead.
    embedding = tf.debugging.assert_all_finite(embedding, "embedding contains NaN or Inf; "
                                               "pass the engine's raw feature vectors")
    with tf.control_dependencies([tf.debugging.assert_positive(
            tf.shape(embedding)[0], message="embedding batch is empty: send at least one row")]):
        embedding = tf.identity(embedding)
    norms = tf.norm(embedding, axis=-1)
    with tf.control_dependencies([tf.debugging.assert_positive(
            norms, message="embedding has an all-zero row, which has no direction to invert")]):
        embedding = tf.identity(embedding)
    # Past 1e18 the float32 sum of squares overflows and the face loses its identity, with no
    # error; the runtimes without asserts (TFLite, ONNX) get the same range from contract.py.
    # 1e-3 of slack: the float32 norm of a row on the boundary may round past it, and a row
    # that passes contract.py's float64 check must pass here too.
    in_range = tf.logical_and(norms >= MIN_EMBEDDING_NORM * (1 - 1e-3),
                              norms <= MAX_EMBEDDING_NORM * (1 + 1e-3))
    with tf.control_dependencies([tf.debugging.Assert(tf.reduce_all(in_range), [
            f"embedding has a row whose L2 norm is outside [{MIN_EMBEDDING_NORM:g}, "
            f"{MAX_EMBEDDING_NORM:g}]; rescale it (engine vectors have norms near 1 to 30)"])]):
        return tf.identity(embedding)


def run_info(model_dir: pathlib.Path, config: config_lib.Config) -> dict:
    """A run's engine, D and cache: ``run.json``, or the engine itself for older runs."""
    saved = model_dir / RUN_FILE
    if saved.exists():
        return json.loads(saved.read_text())
    from vec2face_tf.engines import get_engine

    engine = get_engine(config.engine)
    try:
        return {"engine": engine.name, "embedding_dim": engine.dim,
                "cache_dir": str(model_dir / "cache")}
    finally:
        engine.close()


def run_cache_dir(model_dir: pathlib.Path) -> pathlib.Path:
    """The embedding cache a run trained on: ``run.json``'s, else ``<model_dir>/cache``."""
    saved = model_dir / RUN_FILE
    cache = json.loads(saved.read_text()).get("cache_dir") if saved.exists() else None
    return pathlib.Path(cache or model_dir / "cache")


def load_run(model_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """The EMA generator of ``model_dir``'s latest checkpoint and the export metadata."""
    model_path = pathlib.Path(model_dir)
    config_file = model_path / "config.json"
    if not config_file.exists():
        raise ExportError(f"{model_path} is not a training folder: no config.json")
    if tf.train.latest_checkpoint(str(model_path / "checkpoints")) is None:
        raise ExportError(f"no checkpoint in {model_path / 'checkpoints'}; train first")
    config = config_lib.config_from_dict(json.loads(config_file.read_text()))
    info = run_info(model_path, config)
    generator = dibigan.load_ema_generator(model_path, info["embedding_dim"])
    metadata = metadata_for(config, info["engine"], generator)
    split_file = model_path / "split.json"
    if split_file.exists():
        # vec2face-eval keeps these identities out of its probes.
        metadata["train_identities"] = json.loads(split_file.read_text())["train_identities"]
    cache = run_cache_dir(model_path)
    if cache.is_dir():
        from vec2face_tf.evaluation import thresholds

        # Shipped with the model so that `vec2face-invert` can say whether a reconstruction
        # passes, at thresholds measured on real faces rather than hard-coded.
        metadata["thresholds"] = {**thresholds.cache_thresholds(cache, info["engine"],
                                                                config.crop),
                                  "source": "every face of the training run's cache"}
    return generator, metadata


def restore_exported_weights(model: keras.Model, version_dir: str | os.PathLike) -> None:
    """Sets ``model``'s weights to those of the SavedModel in ``version_dir``, by variable path.

    A random-seed state (dropout's) is not exported and keeps its value.

    Raises:
      ExportError: when a weight of ``model`` is missing from the SavedModel or has another
        shape there (a SavedModel of a different architecture).
    """
    try:
        loaded = tf.saved_model.load(str(version_dir))
    except (OSError, ValueError, tf.errors.OpError) as error:
        raise ExportError(f"cannot load the SavedModel {version_dir}: {error}") from None
    def inside_model(path: str) -> str:
        # Keras names a second model of a class "generator_2": match below the model's name.
        return path.split(":")[0].partition("/")[2]

    saved = {inside_model(variable.name): variable
             for variable in tf.train.TrackableView(loaded).descendants()
             if isinstance(variable, tf.Variable)}
    for variable in model.variables:
        if variable.path.startswith("seed_generator"):
            continue
        source = saved.get(inside_model(variable.path))
        if source is None or tuple(source.shape) != tuple(variable.shape):
            found = None if source is None else tuple(source.shape)
            raise ExportError(f"{version_dir} has no weight {variable.path} of shape "
                              f"{tuple(variable.shape)} (found {found}): it was exported from "
                              "another architecture")
        variable.assign(source)


def load_exported_generator(version_dir: str | os.PathLike) -> tuple[keras.Model, dict]:
    """An exported generator rebuilt as a Keras model from its own weights, and its metadata.

    For re-exporting a generator (the bundled demo's, say) with this package's signatures when
    its training folder is gone; the metadata's ``signatures`` are updated to match.
    """
    metadata = read_metadata(version_dir)
    if metadata.get("format") != "vec2face_tf generator":
        raise ExportError(f"{version_dir} is not a vec2face_tf generator export")
    config = config_lib.config_from_dict(metadata["training_config"])
    generator = dibigan.build_generator(config, int(metadata["embedding_dim"]))
    restore_exported_weights(generator, version_dir)
    fresh = metadata_for(config, metadata["engine"], generator)
    return generator, {**metadata, "signatures": fresh["signatures"],
                       "package_version": fresh["package_version"]}


def metadata_for(config: config_lib.Config, engine: str, generator: keras.Model) -> dict:
    """The ``vec2face.json`` asset: what a client needs to use the model correctly."""
    return {
        "format": "vec2face_tf generator",
        "engine": engine,
        "embedding_dim": int(generator.embedding_dim),
        "height": int(generator.resolution),
        "width": int(generator.resolution),
        "noise_dim": int(generator.noise_dim),
        "crop": dataclasses.asdict(config.crop),
        "package_version": vec2face_tf.__version__,
        "signatures": {
            SERVING_SIGNATURE: {"inputs": {"embedding": "float32[None, D]"},
                                "outputs": {"image": "uint8[None, H, W, 3]"}},
            SAMPLE_SIGNATURE: {"inputs": {"embedding": "float32[None, D]",
                                          "noise": "float32[None, Z]"},
                               "outputs": {"image": "uint8[None, H, W, 3]"}},
            SAMPLE_FLOAT_SIGNATURE: {"inputs": {"embedding": "float32[None, D]",
                                                "noise": "float32[None, Z]"},
                                     "outputs": {"image": "float32[None, H, W, 3] in [-1, 1]"}},
        },
        "training_config": json.loads(config.to_json()),
        "thresholds": None,  # filled from the run's cache when it is there
        "train_identities": None,  # filled from the run's split.json
        "student": None,  # {"version", "path"} of the image student exported beside it
    }


def build_archive(generator: keras.Model) -> keras.export.ExportArchive:
    """An ``ExportArchive`` with the contract signatures of ``generator`` and ``sample_float``.

    ``ExportArchive`` (not a bare ``tf.Module``) because it tracks the Keras variables so that
    the TFLite converter freezes them; a ``tf.Module`` export converts to a NaN TFLite model.
    """
    dim, noise_dim = generator.embedding_dim, generator.noise_dim
    archive = keras.export.ExportArchive()
    archive.track(generator)

    def serve(embedding):
        embedding = checked_embedding(embedding, dim)
        noise = tf.zeros([tf.shape(embedding)[0], noise_dim], tf.float32)
        return {IMAGE_OUTPUT: to_uint8_image(generator([embedding, noise], training=False))}

    def sample_faces(embedding, noise):
        embedding = checked_embedding(embedding, dim)
        noise = checked_matrix(noise, noise_dim, "noise (noise dimension Z)")
        same_batch = tf.debugging.assert_equal(
            tf.shape(noise)[0], tf.shape(embedding)[0],
            message="noise and embedding must have the same batch size")
        with tf.control_dependencies([same_batch]):
            noise = tf.debugging.assert_all_finite(noise, "noise contains NaN or Inf")
        return tf.cast(generator([embedding, noise], training=False), tf.float32)

    def sample(embedding, noise):
        return {IMAGE_OUTPUT: to_uint8_image(sample_faces(embedding, noise))}

    def sample_float(embedding, noise):
        return {IMAGE_OUTPUT: sample_faces(embedding, noise)}

    archive.add_endpoint(SERVING_SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, dim], tf.float32, name=EMBEDDING_INPUT)])
    archive.add_endpoint(SAMPLE_SIGNATURE, sample, input_signature=[
        tf.TensorSpec([None, dim], tf.float32, name=EMBEDDING_INPUT),
        tf.TensorSpec([None, noise_dim], tf.float32, name=NOISE_INPUT)])
    archive.add_endpoint(SAMPLE_FLOAT_SIGNATURE, sample_float, input_signature=[
        tf.TensorSpec([None, dim], tf.float32, name=EMBEDDING_INPUT),
        tf.TensorSpec([None, noise_dim], tf.float32, name=NOISE_INPUT)])
    # Keras 3.15 saves every weight twice: once as the Keras variables that track() lists and
    # once as the tf.Variables the endpoints capture (`_all_variables`, what serving and the
    # converters read). Dropping the Keras lists halves the SavedModel (cpu64: 27.8 -> 13.9 MB)
    # and changes no output; test_savedmodel checks both.
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(archive._tf_trackable, name, [])
    return archive


def existing_versions(model_base: pathlib.Path) -> list[int]:
    """The version numbers under ``<export_base>/<model_name>``, ascending."""
    if not model_base.is_dir():
        return []
    return sorted(int(p.name) for p in model_base.iterdir()
                  if p.is_dir() and _VERSION_DIR.match(p.name))


def check_model_name(model_name: str) -> str:
    if not _MODEL_NAME.match(model_name or ""):
        raise ExportError(f"model name {model_name!r} must be letters, digits, '_', '.' or '-' "
                          "(it becomes a folder and a TF Serving model name)")
    return model_name


@contextlib.contextmanager
def publishing(target: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yields an empty hidden folder beside ``target``, renamed to ``target`` when the block
    ends without an error, and removed otherwise.

    A reader polling the parent (TF Serving, a phone app's updater) never sees half a
    version, and an existing version is never overwritten.

    Raises:
      ExportError: when ``target`` exists before the block, or appears during it, and when
        the disk fills up while writing (after removing what was written).
    """
    if target.exists():
        raise ExportError(f"{target} exists; exporting never overwrites a version")
    staging = None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-",
                                                dir=target.parent))
        folder = staging / target.name
        folder.mkdir()
        try:
            yield folder
        except (OSError, tf.errors.OpError) as error:
            if not is_out_of_space(error):
                raise
            # Removed first, so the free space the message reports is what is really left.
            shutil.rmtree(staging, ignore_errors=True)
            raise ExportError(
                f"could not write {target}: no space left on the device that holds "
                f"{target.parent} ({free_space_text(target.parent)} after removing the partial "
                f"files). Nothing was published and nothing that was there before changed. "
                f"Free some space and export again ({error.__class__.__name__}: "
                f"{error_text(error)})") from error
        # rename(2) fails onto a non-empty folder but replaces an empty one; refuse both.
        if target.exists():
            raise ExportError(f"{target} appeared while exporting; not overwritten")
        try:
            os.rename(folder, target)
        except OSError as error:
            raise ExportError(f"{target} appeared while exporting; not overwritten") from error
    except OSError as error:
        if not is_out_of_space(error):
            raise
        raise ExportError(f"could not start writing {target}: no space left on the device "
                          f"({free_space_text(target.parent)}); nothing was published") from error
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)


def write_metadata(folder: pathlib.Path, metadata: dict) -> None:
    """Writes ``metadata`` as ``folder/vec2face.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def write_savedmodel(generator: keras.Model, metadata: dict, export_base: str | os.PathLike,
                     model_name: str, version: int | None = None) -> ExportedModel:
    """Writes the next (or the given) version of ``model_name`` and refreshes ``models.config``.

    Raises:
      ExportError: for a bad model name, or a ``version`` that exists already.
    """
    model_base = pathlib.Path(export_base) / check_model_name(model_name)
    model_base.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = (existing_versions(model_base) or [0])[-1] + 1
    elif isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    target = model_base / str(version)
    with publishing(target) as folder:
        build_archive(generator).write_out(str(folder), verbose=False)
        write_metadata(folder / "assets", metadata)
    try:
        write_models_config(pathlib.Path(export_base))
    except ExportError as error:
        raise ExportError(f"version {version} is complete in {target}, but {error}") from error
    return ExportedModel(target, version, metadata)


def write_models_config(export_base: pathlib.Path, container_base: str = "/models") -> str:
    """Writes ``<export_base>/models.config`` listing every model that has a version.

    The paths are those the models have inside the ``tensorflow/serving`` container when
    ``export_base`` is mounted at ``container_base``.
    """
    entries = []
    for model_base in sorted(p for p in export_base.iterdir() if p.is_dir()):
        if any((model_base / str(v) / "saved_model.pb").exists()
               for v in existing_versions(model_base)):
            entries.append(
                "  config {\n"
                f'    name: "{model_base.name}"\n'
                f'    base_path: "{container_base}/{model_base.name}"\n'
                '    model_platform: "tensorflow"\n'
                "  }\n")
    text = "model_config_list {\n" + "".join(entries) + "}\n"
    path = export_base / MODELS_CONFIG_FILE
    if path.exists() and path.read_text() == text:
        return text  # A new version of a listed model: nothing to write, nothing to fail.
    staging = export_base / f".{MODELS_CONFIG_FILE}.tmp"
    try:
        staging.write_text(text)
        os.replace(staging, path)
    except OSError as error:
        staging.unlink(missing_ok=True)
        if not is_out_of_space(error):
            raise
        raise ExportError(f"{path} could not be updated: no space left on the device "
                          f"({free_space_text(export_base)}); it is unchanged") from error
    return text


def format_dir(export_base: str | os.PathLike, model_name: str, fmt: str,
               version: int) -> pathlib.Path:
    """Where the ``fmt`` files (``tflite``, ``onnx``) of a version go.

    ``<export_base>/<model_name>/<fmt>/<version>/``: beside the SavedModel versions, and
    ignored by TF Serving, which loads only numeric folders.
    """
    return pathlib.Path(export_base) / check_model_name(model_name) / fmt / str(version)


def read_metadata(saved_model_dir: str | os.PathLike) -> dict:
    """The ``vec2face.json`` asset of an exported version."""
    path = pathlib.Path(saved_model_dir) / "assets" / METADATA_FILE
    if not path.exists():
        raise ExportError(f"{saved_model_dir} is not a vec2face_tf export: no assets/"
                          f"{METADATA_FILE}")
    return json.loads(path.read_text())


def resolve_version_dir(path: str | os.PathLike) -> pathlib.Path:
    """A SavedModel folder from either a version folder or a model base (latest version)."""
    path = pathlib.Path(path)
    if (path / "saved_model.pb").exists():
        return path
    versions = existing_versions(path)
    if versions and (path / str(versions[-1]) / "saved_model.pb").exists():
        return path / str(versions[-1])
    raise ExportError(f"{path} holds no SavedModel (neither saved_model.pb nor a version "
                      "folder)")
