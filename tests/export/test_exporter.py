import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from vec2face_tf.export import exporter, savedmodel

BIN = pathlib.Path(sys.executable).parent


@pytest.mark.parametrize("spec, expected", [
    ("all", ("student", "savedmodel", "tflite", "onnx")),
    ("onnx,savedmodel", ("savedmodel", "onnx")),
    ("savedmodel,student", ("student", "savedmodel")),
    (" TFLite ", ("tflite",)),
    (["onnx"], ("onnx",)),
])
def test_parse_formats(spec, expected):
    assert exporter.parse_formats(spec) == expected


@pytest.mark.parametrize("spec", ["", "pb", "all,onnx", "tflite,coreml"])
def test_unknown_formats_are_named(spec):
    with pytest.raises(savedmodel.ExportError, match="unknown export format"):
        exporter.parse_formats(spec)


def test_savedmodel_exports_take_the_next_version(smoke_run, tmp_path):
    first = exporter.export(smoke_run, tmp_path, "faces", formats="savedmodel")
    second = exporter.export(smoke_run, tmp_path, "faces", formats="savedmodel")
    assert (first["version"], second["version"]) == (1, 2)
    assert second["savedmodel"] == str(tmp_path / "faces" / "2")
    assert '"faces"' in (tmp_path / "models.config").read_text()


def test_converting_needs_an_existing_savedmodel(smoke_run, tmp_path):
    with pytest.raises(savedmodel.ExportError, match="--format=savedmodel"):
        exporter.export(smoke_run, tmp_path, "faces", formats="onnx")
    exporter.export(smoke_run, tmp_path, "faces", formats="savedmodel")
    with pytest.raises(savedmodel.ExportError, match="no SavedModel version 5"):
        exporter.export(smoke_run, tmp_path, "faces", formats="onnx", version=5)


def test_int8_without_a_cache_says_how_to_fix_it(smoke_run, tmp_path):
    exporter.export(smoke_run, tmp_path, "faces", formats="savedmodel")
    with pytest.raises(savedmodel.ExportError, match="no embedding cache.*--cache_dir"):
        exporter.export(smoke_run, tmp_path, "faces", formats="tflite",
                        tflite_variants=["int8"])


def _run(*args):
    return subprocess.run([str(BIN / "vec2face-export"), *args], capture_output=True,
                          text=True, timeout=600)


def test_binary_rejects_a_missing_model_dir(tmp_path):
    result = _run(f"--export_base={tmp_path}", "--model_name=faces", "--format=savedmodel")
    assert result.returncode == 1
    assert "error: a SavedModel export needs the training folder (--model_dir)" in result.stderr


@pytest.mark.slow
def test_one_command_exports_all_three_formats(smoke_run, real_faces_cache, tmp_path):
    """The issue's command, as a user runs it; every file it writes loads and agrees."""
    model_dir = tmp_path / "run"
    shutil.copytree(smoke_run, model_dir)
    result = _run(f"--model_dir={model_dir}", f"--export_base={tmp_path / 'exports'}",
                  "--model_name=faces", "--format=all", f"--cache_dir={real_faces_cache}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "exported faces version 1" in result.stdout
    base = tmp_path / "exports" / "faces"
    tflite_dir, onnx_dir = base / "tflite" / "1", base / "onnx" / "1"
    assert sorted(p.name for p in tflite_dir.glob("*.tflite")) == [
        "generator_dynamic_range.tflite", "generator_float16.tflite",
        "generator_float32.tflite", "generator_int8.tflite"]
    assert (onnx_dir / "generator.onnx").exists()

    from vec2face_tf.export import onnx, tflite

    embedding = np.random.default_rng(3).standard_normal((4, 128)).astype(np.float32)
    served = tf.saved_model.load(str(base / "1")).signatures["serving_default"](
        embedding=tf.constant(embedding))["image"].numpy().astype(int)
    from_tflite = tflite.TFLiteGenerator(tflite_dir / "generator_float32.tflite")(embedding)
    from_onnx = onnx.OnnxGenerator(onnx_dir / "generator.onnx")(embedding)
    assert np.abs(from_tflite.astype(int) - served).max() <= 1
    assert np.abs(from_onnx.astype(int) - served).max() <= 1
    for folder in (tflite_dir, onnx_dir):
        metadata = json.loads((folder / "vec2face.json").read_text())
        assert metadata["engine"] == "dlib" and metadata["embedding_dim"] == 128

    again = _run("--format=onnx", f"--export_base={tmp_path / 'exports'}",
                 "--model_name=faces")
    assert again.returncode == 1 and "exists" in again.stderr
