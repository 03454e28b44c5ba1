"""The exported generator's contract (DESIGN §3): its names, and its rules for input vectors.

Every format carries the ``serving_default`` computation under the same names; the SavedModel
adds ``sample``. The SavedModel enforces the input rules in its graph. TFLite and ONNX files
drop those checks (measured: see ``tflite`` and ``onnx``), so their runners, the serving
client and ``vec2face-invert`` apply the same rules here, in numpy, before a call. No
TensorFlow import: the REST client uses this module.
"""

from __future__ import annotations

import numpy as np

SERVING_SIGNATURE = "serving_default"
SAMPLE_SIGNATURE = "sample"
EMBEDDING_INPUT = "embedding"
NOISE_INPUT = "noise"
IMAGE_OUTPUT = "image"


def check_embeddings(embedding, dim: int | None = None, name: str = "embedding",
                     allow_single: bool = False, nonzero_rows: bool = True) -> np.ndarray:
    """``embedding`` as float32[N, dim], or a ValueError that names the problem.

    Args:
      embedding: array-like of raw engine vectors (any scale: the model normalises them).
      dim: the required number of columns (the engine's D); None accepts any.
      name: what to call the input in messages.
      allow_single: accept one vector [D] as a batch of one.
      nonzero_rows: reject all-zero rows (an embedding of zeros has no direction to invert;
        noise may be zero).

    Raises:
      ValueError: for a ragged or non-numeric array, a wrong rank or D, an empty batch,
        NaN/Inf (also float64 values beyond float32's range), or an all-zero row.
    """
    try:
        values = np.asarray(embedding)
    except ValueError as error:  # ragged nested lists
        raise ValueError(f"{name} must be a rectangular array of numbers: {error}") from None
    if values.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be real numbers (float32), got dtype {values.dtype}")
    if allow_single and values.ndim == 1:
        values = values[np.newaxis]
    if values.ndim != 2:
        expected = f"float32[batch, {dim or 'D'}]" + (" or one vector" if allow_single else "")
        raise ValueError(f"{name} must be {expected}, got shape {values.shape}")
    if dim is not None and values.shape[1] != dim:
        raise ValueError(f"{name} has {values.shape[1]} columns; this model's engine dimension "
                         f"D is {dim}")
    if values.shape[0] == 0:
        raise ValueError(f"{name} batch is empty: send at least one row")
    with np.errstate(over="ignore"):  # a float64 beyond float32's range becomes Inf: caught next
        values = values.astype(np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(values).all(axis=1))
    if bad_rows.size:
        raise ValueError(f"{name} contains NaN or Inf (as float32) in row(s) "
                         f"{bad_rows[:10].tolist()}; pass the engine's raw feature vectors")
    zero_rows = np.flatnonzero(~values.any(axis=1))
    if nonzero_rows and zero_rows.size:
        raise ValueError(f"{name} has all-zero row(s) {zero_rows[:10].tolist()}, which have no "
                         "direction to invert")
    return values
