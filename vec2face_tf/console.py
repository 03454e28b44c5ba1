"""What the console scripts do before anything else: quiet TensorFlow's C++ start-up log.

On every machine without a GPU, ``import tensorflow`` prints a screen of C++ lines before the
first line of ours (absl's "WARNING: All log messages before absl::InitializeLog()", oneDNN and
CUDA notices, and ``E0000 ... failed call to cuInit: UNKNOWN ERROR (303)``). Those written
before absl's logging is initialised ignore ``TF_CPP_MIN_LOG_LEVEL``, so the import runs with
the process's stderr (file descriptor 2) pointed at /dev/null. A user who sets
``TF_CPP_MIN_LOG_LEVEL`` gets TensorFlow's output untouched.
"""

from __future__ import annotations

import contextlib
import os
import sys

LOG_LEVEL_VARIABLE = "TF_CPP_MIN_LOG_LEVEL"
# 3 hides C++ INFO, WARNING and ERROR lines; Python exceptions are unaffected.
QUIET_LEVEL = "3"


@contextlib.contextmanager
def stderr_silenced():
    """Points file descriptor 2 at /dev/null inside the block (C++ writes there directly)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_tensorflow() -> bool:
    """Imports TensorFlow quietly unless the user chose a log level; returns whether it did.

    Must run before anything imports TensorFlow: its start-up lines print only once.
    """
    if LOG_LEVEL_VARIABLE in os.environ or "tensorflow" in sys.modules:
        return False
    os.environ[LOG_LEVEL_VARIABLE] = QUIET_LEVEL
    with stderr_silenced():
        import tensorflow as tf

        # The CUDA probe (cuInit's E0000 line) runs at the first device query, not at import.
        tf.config.list_physical_devices()
    return True
