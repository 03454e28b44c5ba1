"""TensorFlow's own ``saved_model_cli`` reads the export as the serving contract says."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

SAVED_MODEL_CLI = pathlib.Path(sys.executable).parent / "saved_model_cli"


def _cli(*args):
    result = subprocess.run(
        [str(SAVED_MODEL_CLI), *map(str, args)], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _signature_blocks(show_output):
    """``{signature name: its block of text}`` from ``saved_model_cli show --all``."""
    blocks = {}
    for block in show_output.split("signature_def['")[1:]:
        name, _, body = block.partition("']")
        # Whitespace collapsed, so that one tensor's lines read as one string.
        blocks[name] = " ".join(body.split("\nThe MetaGraph with tag set")[0].split())
    return blocks


@pytest.mark.slow
def test_show_lists_the_serving_contract(smoke_export):
    blocks = _signature_blocks(_cli("show", "--dir", smoke_export.path, "--all"))
    assert {"serving_default", "sample"} <= set(blocks)
    image = "outputs['image'] tensor_info: dtype: DT_UINT8 shape: (-1, 32, 32, 3)"
    embedding = "inputs['embedding'] tensor_info: dtype: DT_FLOAT shape: (-1, 128)"
    noise = "inputs['noise'] tensor_info: dtype: DT_FLOAT shape: (-1, 8)"
    for name in ("serving_default", "sample"):
        assert embedding in blocks[name] and image in blocks[name]
        assert "Method name is: tensorflow/serving/predict" in blocks[name]
    assert noise in blocks["sample"] and "inputs['noise']" not in blocks["serving_default"]
    assert blocks["serving_default"].count("tensor_info") == 2  # one input, one output


@pytest.mark.slow
def test_run_gives_the_signature_output(smoke_export, tmp_path):
    # --input_exprs with numpy calls fails in TF 2.21 (it only takes Python literals), so the
    # input goes in as a .npy file.
    embedding = np.random.default_rng(0).standard_normal((2, 128)).astype(np.float32)
    np.save(tmp_path / "embedding.npy", embedding)
    _cli("run", "--dir", smoke_export.path, "--tag_set", "serve",
         "--signature_def", "serving_default",
         "--inputs", f"embedding={tmp_path / 'embedding.npy'}", "--outdir", tmp_path / "out")
    written = np.load(tmp_path / "out" / "image.npy")
    signature = tf.saved_model.load(str(smoke_export.path)).signatures["serving_default"]
    expected = signature(embedding=tf.constant(embedding))["image"].numpy()
    assert written.dtype == np.uint8 and written.shape == (2, 32, 32, 3)
    # One grey level of slack, as for every reloaded copy of the graph.
    assert np.abs(written.astype(int) - expected.astype(int)).max() <= 1
    assert len(np.unique(written)) > 20
