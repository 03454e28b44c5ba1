"""Runs 3 DiBiGAN steps under the default strategy and under MirroredStrategy with two logical
CPUs, from the same weights and global batches, and prints both loss histories as JSON.

A separate script because logical devices must be configured before TensorFlow runs any op.
"""

import json

import tensorflow as tf

_CPU = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(_CPU, [tf.config.LogicalDeviceConfiguration()] * 2)

import numpy as np  # noqa: E402
from equivalence_lib import run, synthetic_faces  # noqa: E402

from vec2face_tf import config as config_lib  # noqa: E402


def main():
    config = config_lib.get_config("smoke")
    faces = synthetic_faces(config)
    one, one_initial, one_weights = run(tf.distribute.get_strategy(), config, faces)
    two_strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    two, two_initial, two_weights = run(two_strategy, config, faces, start_from=one_initial)
    initial_gap = max(float(np.max(np.abs(a - b))) for a, b in zip(one_initial, two_initial))
    weight_gap = max(float(np.max(np.abs(a - b))) for a, b in zip(one_weights, two_weights))
    print(json.dumps({"one_replica": one, "two_replicas": two,
                      "replicas": two_strategy.num_replicas_in_sync,
                      "initial_weight_max_abs_diff": initial_gap,
                      "generator_weight_max_abs_diff": weight_gap}))


if __name__ == "__main__":
    main()
