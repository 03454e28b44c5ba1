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


def on_nth_call(owner, name: str, target: int, action) -> None:
    """Wraps ``owner.name`` so that its ``target``-th call runs ``action`` first."""
    original = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == target:
            action()
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


def arm(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind == "none":
        return
    target = int(args[0])

    def die_later():
        threading.Timer(float(args[1]), die).start()

    if kind == "step":
        import keras

        class KillInStep(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                pass

        # Step counts run over both stages (two fit calls), so the count lives on the class.
        on_nth_call(KillInStep, "on_train_batch_begin", target, die_later)
        original_fit = keras.Model.fit

        def fit(self, *a, callbacks=(), **k):
            return original_fit(self, *a, callbacks=[*callbacks, KillInStep()], **k)

        keras.Model.fit = fit
    elif kind == "write":
        on_nth_call(tf.train.Checkpoint, "_write", target, die_later)
    elif kind == "merge":
        on_nth_call(gen_io_ops, "merge_v2_checkpoints", target, die)
    elif kind == "pointer":
        on_nth_call(checkpoint_management, "update_checkpoint_state_internal", target, die)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from vec2face_tf.bin.train import train as train_binary

    sys.argv = ["vec2face-train", *sys.argv[2:]]
    train_binary.run()
