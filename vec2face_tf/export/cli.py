"""Flags and the main function shared by the export binaries (``export/*.py``).

In the manner of ``official/utils/flags``: the binaries only choose which format they write,
so the flag definitions live here once instead of four times.
"""

from __future__ import annotations

import sys

from absl import app, flags

from vec2face_tf.export import exporter, savedmodel


def define_flags(fixed_format: str | None = None) -> dict:
    """Defines the export flags; ``fixed_format`` leaves out ``--format`` for one-format tools."""
    holders = {
        "model_dir": flags.DEFINE_string("model_dir", None, "Training folder (vec2face-train's "
                                         "--model_dir); its EMA generator is exported."),
        "export_base": flags.DEFINE_string("export_base", None, "TF Serving base folder: "
                                           "writes <export_base>/<model_name>/<version>/."),
        "model_name": flags.DEFINE_string("model_name", None, "Served model name."),
        "version": flags.DEFINE_integer("version", None, "Version to write (default: next) or, "
                                        "for tflite/onnx alone, to convert (default: latest).",
                                        lower_bound=1),
        "cache_dir": flags.DEFINE_string("cache_dir", None, "Embedding cache for the int8 "
                                         "calibration (default: the run's, from run.json)."),
        "tflite_variants": flags.DEFINE_list("tflite_variants",
                                             "float32,float16,dynamic_range,int8",
                                             "TFLite variants to write."),
        "calibration_count": flags.DEFINE_integer("calibration_count", 256, "Real engine "
                                                  "vectors that calibrate int8.", lower_bound=200),
        "onnx_opset": flags.DEFINE_integer("onnx_opset", 17, "ONNX opset (17 or 18).",
                                           lower_bound=17, upper_bound=18),
    }
    if fixed_format is None:
        holders["format"] = flags.DEFINE_string(
            "format", "all", "all, or a comma-separated list of student, savedmodel, tflite, "
            "onnx (savedmodel also exports a run's image student).")
    flags.mark_flags_as_required(["export_base", "model_name"])
    return holders


def main(argv, holders: dict, fixed_format: str | None = None) -> None:
    """Runs one export from the parsed flags; expected errors exit with one line."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    formats = fixed_format or holders["format"].value
    try:
        written = exporter.export(
            holders["model_dir"].value, holders["export_base"].value,
            holders["model_name"].value, formats=formats, version=holders["version"].value,
            cache_dir=holders["cache_dir"].value,
            tflite_variants=holders["tflite_variants"].value,
            calibration_count=holders["calibration_count"].value,
            onnx_opset=holders["onnx_opset"].value)
    except (savedmodel.ExportError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    print(f"exported {written['model_name']} version {written['version']}:")
    for name in ("student", "savedmodel", "models_config", "onnx"):
        if name in written:
            print(f"  {name:<14} {written[name]}")
    for variant, path in written.get("tflite", {}).items():
        print(f"  tflite {variant:<7} {path}")
    for name, seconds in written["seconds"].items():
        print(f"  {name} took {seconds:.1f} s")
