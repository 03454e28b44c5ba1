"""3 DiBiGAN steps under MultiWorkerMirroredStrategy, one process per worker.

  multiworker_equivalence.py single <dir>   # one replica; writes the start weights and losses
  multiworker_equivalence.py worker <dir>   # one worker of TF_CONFIG's cluster; starts from
                                            # the single run's weights, prints its losses

MultiWorkerMirroredStrategy must be created before TensorFlow runs any op, so the reference
and the workers are separate processes.
"""

import json
import pathlib
import sys

import numpy as np
import tensorflow as tf
from equivalence_lib import run, synthetic_faces

from vec2face_tf import config as config_lib


def main(mode: str, folder: str) -> None:
    folder = pathlib.Path(folder)
    if mode == "worker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        with np.load(folder / "start.npz") as start:
            start_from = [start[f"v{i}"] for i in range(len(start.files))]
    else:
        strategy, start_from = tf.distribute.get_strategy(), None
    config = config_lib.get_config("smoke")
    history, initial, weights = run(strategy, config, synthetic_faces(config), start_from)
    if mode == "single":
        np.savez(folder / "start.npz", **{f"v{i}": v for i, v in enumerate(initial)})
        np.savez(folder / "single_weights.npz", *weights)
    else:
        with np.load(folder / "single_weights.npz") as single:
            gap = max(float(np.max(np.abs(single[f"arr_{i}"] - w)))
                      for i, w in enumerate(weights))
        history["generator_weight_max_abs_diff"] = gap
        history["replicas"] = strategy.num_replicas_in_sync
    print(json.dumps(history))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
