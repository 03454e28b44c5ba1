"""The ``dlib`` engine: dlib's ResNet face-recognition model (128-D, 150 px aligned chips)."""

from __future__ import annotations

from typing import Any

import numpy as np

from vec2face_tf.engines.base import Engine, EngineError, check_options
from vec2face_tf.engines.dlib_models import FACE_RECOGNITION_RESNET, dlib_model_path


class DlibEngine(Engine):
    """dlib's ``face_recognition_model_v1`` on canonical aligned crops.

    The crops already are dlib ``get_face_chip`` output, so they go straight to the network
    (no detection, no landmarks). dlib's CPU build runs this network on the calling thread.
    """

    name = "dlib"
    dim = 128
    input_size = 150

    def __init__(self, num_jitters: int = 0):
        """Loads the network.

        Args:
          num_jitters: if > 1, dlib embeds that many randomly jittered copies of each crop and
            averages them (slower, slightly more robust, no longer deterministic).

        Raises:
          EngineError: when the model file is missing or ``num_jitters`` is negative.
        """
        if not isinstance(num_jitters, int) or num_jitters < 0:
            raise EngineError(f"num_jitters must be an int >= 0, got {num_jitters!r}")
        import dlib

        self.num_jitters = num_jitters
        self._model = dlib.face_recognition_model_v1(
            str(dlib_model_path(FACE_RECOGNITION_RESNET)))

    def _embed(self, images: np.ndarray) -> np.ndarray:
        # The binding wants a list of C-contiguous HxWx3 arrays for its batch overload.
        chips = [np.ascontiguousarray(image) for image in images]
        descriptors = self._model.compute_face_descriptor(chips, num_jitters=self.num_jitters)
        return np.array([np.asarray(d) for d in descriptors], dtype=np.float32)


def make_engine(argument: str | None = None, **options: Any) -> DlibEngine:
    """Registry factory for ``get_engine("dlib", num_jitters=0)``.

    Args:
      argument: must be None (``"dlib"`` takes no argument after a colon).
      **options: ``num_jitters`` (int, default 0).

    Returns:
      A DlibEngine.

    Raises:
      EngineError: for an argument or an unknown option.
    """
    if argument:
        raise EngineError(f"engine 'dlib' takes no argument, got 'dlib:{argument}'")
    check_options("dlib", options, {"num_jitters"})
    return DlibEngine(**options)
