"""``vec2face-train`` with one fault armed, for the kill -9 tests (test-only, not shipped).

Usage: python killable_train.py <fault> <vec2face-train flags...>

Faults (the process SIGKILLs itself, so no Python cleanup, finally block or atexit runs).
Each fires at an event of the run, never after a delay, so where it lands does not depend on
the machine's speed:
  none                      run normally.
  step:<n>                  at the end of this process's n-th training step, before any other
                            callback sees it: the step's updates are only in memory, and the
                            checkpoint due after it, if any, is never written.
  write:<n>                 when this process's n-th checkpoint save has returned: its files
                            are complete and the ``checkpoint`` pointer names it.
  merge:<n>                 when the n-th checkpoint's tensors are in ``ckpt-N_temp/`` but
                            not yet merged into ``ckpt-N.index`` and its data file: a write
                            cut in its middle, every time.
  pointer:<n>               after the n-th checkpoint's files are complete but before the
                            ``checkpoint`` pointer names it.
"""

import os
import signal
import sys

import tensorflow as tf
from tensorflow.python.checkpoint import checkpoint_management
from tensorflow.python.ops import gen_io_ops


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def on_nth_call(owner, name: str, target: int, action, after: bool = False) -> None:
    """Wraps ``owner.name`` so that its ``target``-th call runs ``action`` first (or after)."""
    original = getattr(owner, name)
    calls = 0

    def wrapper(*args, **kwargs):
        nonlocal calls
        calls += 1
        if calls == target and not after:
            action()
        result = original(*args, **kwargs)
        if calls == target and after:
            action()
        return result

    setattr(owner, name, wrapper)


def arm(fault: str) -> None:
    kind, *args = fault.split(":")
    if kind == "none":
        return
    target = int(args[0])
    if kind == "step":
        import keras

        class KillInStep(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                pass

        # Step counts run over the stages (one fit call each), so the count lives on the class.
        on_nth_call(KillInStep, "on_train_batch_end", target, die)
        original_fit = keras.Model.fit

        def fit(self, *a, callbacks=(), **k):
            # First, so that it runs before the callback that writes the step's checkpoint.
            return original_fit(self, *a, callbacks=[KillInStep(), *callbacks], **k)

        keras.Model.fit = fit
    elif kind == "write":
        on_nth_call(tf.train.CheckpointManager, "save", target, die, after=True)
    elif kind == "merge":
        on_nth_call(gen_io_ops, "merge_v2_checkpoints", target, die)
    elif kind == "pointer":
        # A save writes the pointer twice: naming the new checkpoint, then again after
        # deleting the ones beyond max_to_keep.
        on_nth_call(checkpoint_management, "update_checkpoint_state_internal", 2 * target - 1,
                    die)
    else:
        raise SystemExit(f"unknown fault {fault!r}")


if __name__ == "__main__":
    arm(sys.argv[1])
    from vec2face_tf.bin.train import train as train_binary

    sys.argv = ["vec2face-train", *sys.argv[2:]]
    train_binary.run()
