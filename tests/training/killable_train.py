"""``vec2face-train`` with one fault armed, for the kill -9 tests (test-only, not shipped).

Usage: python killable_train.py <fault> <vec2face-train flags...>

Faults (the process SIGKILLs itself, so no Python cleanup, finally block or atexit runs):
  none                      run normally.
  step:<n>:<seconds>        <seconds> after this process's n-th training step began: the
                            kill lands inside the step's computation.
  write:<n>:<seconds>       <seconds> after this process's n-th checkpoint write began (a
                            smoke checkpoint is written in milliseconds: the kill may land
                            inside the write or just after it).
  merge:<n>                 when the n-th checkpoint's tensors are in ``ckpt-N_temp/`` but
                            not yet merged into ``ckpt-N.index`` and its data file: a write
                            cut in its middle, every time.
  pointer:<n>               after the n-th checkpoint's files are complete but before the
                            ``checkpoint`` pointer names it.
"""

import os
import signal
import sys
import threading

import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import gen_io_ops


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind == "none":
        return
    target = int(args[0])
    writes = 0
    if kind == "step":
        import keras

        class KillInStep(keras.callbacks.Callback):
            steps = 0

            def on_train_batch_begin(self, batch, logs=None):
                KillInStep.steps += 1
                if KillInStep.steps == target:
                    threading.Timer(float(args[1]), die).start()

        original_fit = keras.Model.fit

        def fit(self, *a, callbacks=(), **k):
            return original_fit(self, *a, callbacks=[*callbacks, KillInStep()], **k)

        keras.Model.fit = fit
    elif kind == "write":
        original_write = tf.train.Checkpoint._write

        def write(self, *a, **k):
            nonlocal writes
            writes += 1
            if writes == target:
                threading.Timer(float(args[1]), die).start()
            return original_write(self, *a, **k)

        tf.train.Checkpoint._write = write
    elif kind == "merge":
        original_merge = gen_io_ops.merge_v2_checkpoints

        def merge(*a, **k):
            nonlocal writes
            writes += 1
            if writes == target:
                die()
            return original_merge(*a, **k)

        gen_io_ops.merge_v2_checkpoints = merge
    elif kind == "pointer":
        original_update = checkpoint_management.update_checkpoint_state_internal

        def update(*a, **k):
            nonlocal writes
            writes += 1
            if writes == target:
                die()
            return original_update(*a, **k)

        checkpoint_management.update_checkpoint_state_internal = update
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from vec2face_tf.bin.train import train as train_binary

    sys.argv = ["vec2face-train", *sys.argv[2:]]
    train_binary.run()
