"""Training under tf.distribute gives the same numbers as without it."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).with_name("distributed_equivalence.py")


@pytest.mark.slow
def test_two_replicas_match_one_replica_after_three_steps():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                            timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert report["initial_weight_max_abs_diff"] == 0.0  # both runs start from one point
    one, two = report["one_replica"], report["two_replicas"]
    for name in ("d_loss", "g_loss", "g_adversarial", "identity", "metric", "pixel"):
        assert len(one[name]) == 3
        np.testing.assert_allclose(two[name], one[name], rtol=2e-4, atol=2e-5, err_msg=name)
    assert report["generator_weight_max_abs_diff"] < 1e-4

