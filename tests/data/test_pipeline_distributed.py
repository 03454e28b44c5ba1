"""The P x K pipeline under MirroredStrategy with two replicas on two logical CPUs.

Logical devices must be configured before TensorFlow runs any op, which other test modules in
the same pytest process will already have done; so the check runs in a fresh subprocess and
reports back as JSON.
"""

import json
import os
import subprocess
import sys

_SCRIPT = r"""
import json
import numpy as np
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from vec2face_tf.data.pipeline import Faces, distribute_dataset, make_dataset

counts = [5, 4, 3, 2, 6, 3]
labels = np.repeat(np.arange(len(counts)), counts).astype(np.int32)
vectors = np.random.default_rng(0).normal(size=(len(labels), 8)).astype(np.float32)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
crops = np.broadcast_to(np.arange(len(labels), dtype=np.uint8)[:, None, None, None] * 7,
                        (len(labels), 8, 8, 3)).copy()
faces = Faces(crops, vectors, labels, np.array([str(i) for i in range(6)]),
              np.array([str(i) for i in range(len(labels))]))

strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
report = {"replicas": strategy.num_replicas_in_sync, "steps": []}
single = iter(make_dataset(faces, 8, 4, 3, seed=11))
distributed = iter(distribute_dataset(strategy, faces, 8, 4, 3, seed=11))
for _ in range(4):
    whole = [t.numpy() for t in next(single)]
    parts = next(distributed)
    per_replica = [[t.numpy() for t in strategy.experimental_local_results(part)]
                   for part in parts]
    report["steps"].append({
        "replica_shapes": [list(x.shape) for x in per_replica[0]],
        "replica_identities": [x.tolist() for x in per_replica[2]],
        "global_identities": whole[2].tolist(),
        "images_equal": bool(np.array_equal(np.concatenate(per_replica[0]), whole[0])),
        "vectors_equal": bool(np.array_equal(np.concatenate(per_replica[1]), whole[1])),
    })
try:
    distribute_dataset(strategy, faces, 8, 3, 2)
    report["odd_p_error"] = None
except ValueError as error:
    report["odd_p_error"] = str(error)
print("REPORT" + json.dumps(report))
"""


def test_two_replicas_get_whole_identities_of_the_same_global_batch():
    result = subprocess.run([sys.executable, "-c", _SCRIPT], capture_output=True, text=True,
                            timeout=180, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("REPORT"))
    report = json.loads(line[len("REPORT"):])
    assert report["replicas"] == 2
    for step in report["steps"]:
        assert step["replica_shapes"] == [[6, 8, 8, 3], [6, 8, 8, 3]]
        first, second = step["replica_identities"]
        assert first + second == step["global_identities"]
        assert len(set(first)) == 2 and len(set(second)) == 2  # P/R = 2 whole identities.
        assert not set(first) & set(second)
        assert step["images_equal"] and step["vectors_equal"]
    assert report["steps"][0]["global_identities"] != report["steps"][1]["global_identities"]
    assert "cannot be split into 2 replicas" in report["odd_p_error"]
