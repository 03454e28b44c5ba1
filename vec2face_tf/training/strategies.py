"""``tf.distribute`` strategies by name, for the ``--strategy`` flag."""

from __future__ import annotations

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multiworker", "onedevice")


def get_strategy(name: str = "default") -> tf.distribute.Strategy:
    """Returns the strategy called ``name``.

    Args:
      name: ``default`` (no distribution), ``mirrored`` (all local devices),
        ``multiworker`` (``MultiWorkerMirroredStrategy`` configured by ``TF_CONFIG``) or
        ``onedevice`` (the first GPU if any, else the CPU).

    Raises:
      ValueError: for an unknown name.
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "onedevice":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    raise ValueError(f"unknown strategy {name!r}; choose one of {list(STRATEGIES)}")
