"""Installed home of the train/ and export/ binaries (see setup.py).

Every console script imports this package first, so TensorFlow's C++ start-up log is quieted
here, before a binary's own imports load TensorFlow (see ``vec2face_tf.console``).
"""

from vec2face_tf import console

console.quiet_tensorflow()
