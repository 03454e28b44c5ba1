"""The console scripts quiet TensorFlow's C++ start-up log, unless the user chose a level."""

import os
import re
import subprocess
import sys

import pytest

# Each test starts a Python that imports TensorFlow (several seconds).
pytestmark = pytest.mark.slow

# Imports the package the way every console script does (vec2face_tf.bin first), then makes
# TensorFlow probe its devices, which is what prints the cuInit line on a machine without GPU.
_SCRIPT = ("import vec2face_tf.bin, tensorflow as tf; tf.config.list_physical_devices(); "
           "print(tf.constant(2).numpy() * 21)")


def _run(environment):
    return subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                          timeout=120, env=environment)


def test_tensorflow_start_up_lines_are_gone():
    environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    done = _run(environment)
    assert done.returncode == 0 and done.stdout.strip() == "42"
    for noise in ("I0000", "E0000", "cuInit", "absl::InitializeLog", "oneDNN"):
        assert noise not in done.stderr, done.stderr


def test_a_level_the_user_set_is_left_alone():
    done = _run({**os.environ, "TF_CPP_MIN_LOG_LEVEL": "0"})
    assert done.returncode == 0 and done.stdout.strip() == "42"
    # TensorFlow's C++ INFO lines ("I1207 ..." / "I0000 ..."), which level 0 lets through on
    # any machine (which ones varies: the oneDNN notice only shows on some CPUs).
    assert re.search(r"^I\d{4} ", done.stderr, re.MULTILINE), done.stderr


def test_errors_after_the_import_still_reach_stderr():
    script = "import vec2face_tf.bin, sys; sys.stderr.write('still here\\n')"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={k: v for k, v in os.environ.items()
                                            if k != "TF_CPP_MIN_LOG_LEVEL"})
    assert done.returncode == 0 and done.stderr == "still here\n"
