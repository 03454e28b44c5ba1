"""Training under tf.distribute gives the same numbers as without it: MirroredStrategy over two
logical CPUs, and MultiWorkerMirroredStrategy over two local worker processes (TF_CONFIG on
127.0.0.1 ports)."""

import json
import os
import pathlib
import socket
import subprocess
import sys
import time

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
        s.bind(("0.0.0.0", 0))  # where TF's server binds, all interfaces
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


# MultiWorkerMirroredStrategy starts its own gRPC server on the port its cluster spec names,
# and each worker needs every address before that, so no server can bind port 0 and tell the
# other: the ports are probed free and released, and should another process take one
# meanwhile, the launch is retried once.
PORT_TAKEN = "Could not start gRPC server"


def _run_workers(env, folder: pathlib.Path, attempt: int) -> list[tuple[int | None, str, str]]:
    """Runs both workers on fresh ports: (exit code, stdout, stderr) of each."""
    workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
    outputs = [(folder / f"worker{i}-{attempt}.out", folder / f"worker{i}-{attempt}.err")
               for i in range(2)]
    processes = []
    for index, (out, err) in enumerate(outputs):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        # Files, not pipes: nothing reads them while the workers run.
        with open(out, "w") as stdout, open(err, "w") as stderr:
            processes.append(subprocess.Popen(
                [sys.executable, str(MULTIWORKER), "worker", str(folder)], stdout=stdout,
                stderr=stderr, env=dict(env, TF_CONFIG=json.dumps(tf_config))))
    try:
        deadline = time.monotonic() + 420
        # Until both end, or one fails (its peer would then wait for it forever).
        while None in (codes := [p.poll() for p in processes]) and not any(codes):
            assert time.monotonic() < deadline, "the workers ran for more than 420 s"
            time.sleep(0.5)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    return [(code, out.read_text(), err.read_text())
            for code, (out, err) in zip(codes, outputs, strict=True)]


@pytest.mark.slow
def test_two_workers_match_one_replica_after_three_steps(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("TF_CONFIG", None)
    single = subprocess.run([sys.executable, str(MULTIWORKER), "single", str(tmp_path)],
                            capture_output=True, text=True, timeout=300, env=env)
    assert single.returncode == 0, single.stderr[-3000:]
    reference = json.loads(single.stdout.strip().splitlines()[-1])

    results = _run_workers(env, tmp_path, attempt=0)
    if any(code and PORT_TAKEN in stderr for code, _, stderr in results):
        results = _run_workers(env, tmp_path, attempt=1)
    # A code of None: stopped because the other worker failed.
    assert all(code == 0 for code, _, _ in results), "\n".join(
        f"worker {index} exit code {code}: {stderr[-3000:]}"
        for index, (code, _, stderr) in enumerate(results) if code != 0)
    outputs = [json.loads(stdout.strip().splitlines()[-1]) for _, stdout, _ in results]
    for report in outputs:
        assert report["replicas"] == 2
        for name in ("d_loss", "g_loss", "g_adversarial", "identity", "metric", "pixel"):
            np.testing.assert_allclose(np.ravel(report[name]), reference[name], rtol=2e-4,
                                       atol=2e-5, err_msg=name)
        assert report["generator_weight_max_abs_diff"] < 1e-4
