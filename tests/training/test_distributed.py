"""Training under tf.distribute gives the same numbers as without it: MirroredStrategy over two
logical CPUs, and MultiWorkerMirroredStrategy over two local worker processes (TF_CONFIG on
127.0.0.1 ports)."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import numpy as np
import pytest

SCRIPT = pathlib.Path(__file__).with_name("distributed_equivalence.py")
MULTIWORKER = pathlib.Path(__file__).with_name("multiworker_equivalence.py")


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



def _free_ports(count):
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


@pytest.mark.slow
def test_two_workers_match_one_replica_after_three_steps(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    single = subprocess.run([sys.executable, str(MULTIWORKER), "single", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])

    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    processes = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        processes.append(subprocess.Popen(
            [sys.executable, str(MULTIWORKER), "worker", str(tmp_path)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=dict(env, TF_CONFIG=json.dumps(tf_config))))
    outputs = []
    try:
        for process in processes:
            stdout, stderr = process.communicate(timeout=420)
            assert process.returncode == 0, stderr[-3000:]
            outputs.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for process in processes:
            process.kill()
    for report in outputs:
        assert report["replicas"] == 2
        for name in ("d_loss", "g_loss", "g_adversarial", "identity", "metric", "pixel"):
            np.testing.assert_allclose(np.ravel(report[name]), reference[name], rtol=2e-4,
                                       atol=2e-5, err_msg=name)
        assert report["generator_weight_max_abs_diff"] < 1e-4
