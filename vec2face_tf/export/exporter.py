"""One call that exports a training run to every deployment format.

``export(model_dir, export_base, model_name, formats)`` writes, for one version number::

    <export_base>/models.config                     for tensorflow_model_server
    <export_base>/<model_name>/<version>/           SavedModel (TF Serving loads this)
    <export_base>/<model_name>/student/<version>/   the image student's SavedModel
    <export_base>/<model_name>/tflite/<version>/    generator_<variant>.tflite + vec2face.json
    <export_base>/<model_name>/onnx/<version>/      generator.onnx + vec2face.json

TFLite and ONNX are converted from the SavedModel, so ``formats=("tflite",)`` alone converts
an existing SavedModel version (the latest, or ``version``) instead of exporting a new one.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from collections.abc import Sequence

from absl import logging

from vec2face_tf import config as config_lib
from vec2face_tf.export import savedmodel

FORMATS = ("student", "savedmodel", "tflite", "onnx")


def parse_formats(spec: str | Sequence[str]) -> tuple[str, ...]:
    """``"all"``, one format, or a comma-separated list, in the order FORMATS gives."""
    names = spec.split(",") if isinstance(spec, str) else list(spec)
    names = [name.strip().lower() for name in names if name.strip()]
    if names == ["all"]:
        return FORMATS
    unknown = sorted(set(names) - set(FORMATS))
    if unknown or not names:
        raise savedmodel.ExportError(
            f"unknown export format(s) {unknown or names}; choose from all, "
            f"{', '.join(FORMATS)}")
    return tuple(name for name in FORMATS if name in names)


def export(model_dir: str | os.PathLike | None, export_base: str | os.PathLike, model_name: str,
           formats: str | Sequence[str] = "all", version: int | None = None,
           cache_dir: str | os.PathLike | None = None,
           tflite_variants: Sequence[str] | None = None,
           calibration_count: int = 256, calibration_embeddings=None,
           onnx_opset: int = 17) -> dict:
    """Exports ``model_dir``'s EMA generator; returns what was written, with timings.

    Args:
      model_dir: a training folder (``config.json``, ``checkpoints/``); needed for
        ``savedmodel``, and to find the int8 calibration cache without ``cache_dir``.
      export_base: the TF Serving base folder.
      model_name: the served model's name (a folder name).
      formats: ``"all"``, or any of ``student``, ``savedmodel``, ``tflite``, ``onnx``. With
        ``savedmodel`` (and ``all``) a run's distilled image student is exported too, and
        the generator's ``vec2face.json`` names its version; ``student`` alone exports only
        the student (a run trained with ``--stage=student``).
      version: the version to write (savedmodel), or to convert (tflite/onnx alone); default
        the next one, or the latest existing one.
      cache_dir: the run's embedding cache, whose real vectors calibrate the int8 TFLite
        model (default: the cache the run trained on, from ``run.json``).
      tflite_variants: TFLite variants to write (default: all of them).
      calibration_count: engine vectors in the int8 representative dataset (at least 200).
      calibration_embeddings: float32[N, D] vectors to calibrate int8 with instead of the
        cache's (a benchmark that only times the model may use random unit vectors).
      onnx_opset: ONNX opset (at least 17).

    Raises:
      ExportError: for a bad name, format or version, or a missing checkpoint or SavedModel.
    """
    formats = parse_formats(formats)
    savedmodel.check_model_name(model_name)
    model_path = pathlib.Path(model_dir) if model_dir else None
    written: dict = {"model_name": model_name, "formats": list(formats), "seconds": {}}
    started = time.perf_counter()
    student_entry = None
    if "student" in formats or "savedmodel" in formats:
        from vec2face_tf.export import student as student_lib

        if model_path is None:
            raise savedmodel.ExportError("a SavedModel export needs the training folder "
                                         "(--model_dir)")
        # "all" and "savedmodel" export the student when the run has one; "student" without
        # "savedmodel" asks for it, so its absence is an error that says why.
        required = "student" in formats and "savedmodel" not in formats
        if required or student_lib.has_student(model_path):
            student, student_metadata = student_lib.load_student(model_path)
            exported_student = student_lib.write_student(student, student_metadata,
                                                         export_base, model_name)
            student_entry = {"version": exported_student.version,
                             "path": f"{student_lib.STUDENT_DIR}/{exported_student.version}"}
            written["student"] = str(exported_student.path)
            written["seconds"]["student"] = time.perf_counter() - started
        if formats == ("student",):
            written["version"] = student_entry["version"]
            logging.info("exported %s", json.dumps(written))
            return written
        started = time.perf_counter()
    if "savedmodel" in formats:
        if model_path is None:
            raise savedmodel.ExportError("a SavedModel export needs the training folder "
                                         "(--model_dir)")
        generator, metadata = savedmodel.load_run(model_path)
        metadata["student"] = student_entry
        exported = savedmodel.write_savedmodel(generator, metadata, export_base, model_name,
                                               version=version)
        saved_model_dir, version = exported.path, exported.version
        written["seconds"]["savedmodel"] = time.perf_counter() - started
        written["savedmodel"] = str(saved_model_dir)
        written["models_config"] = str(pathlib.Path(export_base) / savedmodel.MODELS_CONFIG_FILE)
    else:
        model_base = pathlib.Path(export_base) / model_name
        try:
            saved_model_dir = savedmodel.resolve_version_dir(
                model_base / str(version) if version else model_base)
        except savedmodel.ExportError:
            raise savedmodel.ExportError(
                f"no SavedModel {'version ' + str(version) if version else 'version'} under "
                f"{model_base}; export with --format=savedmodel (or all) first") from None
        version = int(saved_model_dir.name)
    written["version"] = version

    if "tflite" in formats:
        from vec2face_tf.export import tflite

        started = time.perf_counter()
        variants = tuple(tflite_variants or tflite.VARIANTS)
        representative = calibration_embeddings
        if "int8" in variants and representative is None:
            representative = _calibration_embeddings(model_path, saved_model_dir, cache_dir,
                                                     calibration_count)
        files = tflite.write_tflite(
            saved_model_dir, savedmodel.format_dir(export_base, model_name, "tflite", version),
            variants=variants, representative_embeddings=representative)
        written["tflite"] = {variant: str(path) for variant, path in files.items()}
        written["seconds"]["tflite"] = time.perf_counter() - started

    if "onnx" in formats:
        from vec2face_tf.export import onnx

        started = time.perf_counter()
        path = onnx.write_onnx(
            saved_model_dir, savedmodel.format_dir(export_base, model_name, "onnx", version),
            opset=onnx_opset)
        written["onnx"] = str(path)
        written["seconds"]["onnx"] = time.perf_counter() - started
    logging.info("exported %s", json.dumps(written))
    return written


def _calibration_embeddings(model_path: pathlib.Path, saved_model_dir: pathlib.Path,
                            cache_dir, count: int):
    from vec2face_tf.export import tflite

    metadata = savedmodel.read_metadata(saved_model_dir)
    if cache_dir is None and model_path is None:
        raise savedmodel.ExportError(
            "the int8 TFLite model is calibrated on real engine vectors: pass --cache_dir, or "
            "--model_dir of the run whose cache to use")
    cache = pathlib.Path(cache_dir) if cache_dir else savedmodel.run_cache_dir(model_path)
    if not cache.is_dir():
        raise savedmodel.ExportError(
            f"the int8 TFLite model is calibrated on real engine vectors, but there is no "
            f"embedding cache at {cache}; pass --cache_dir (the one given to vec2face-train), "
            "or leave int8 out of --tflite_variants")
    crop = config_lib.CropSpec(**metadata["crop"])
    return tflite.calibration_embeddings(cache, metadata["engine"], crop, count=count)
