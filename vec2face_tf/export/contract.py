"""The exported generator's contract (DESIGN §3): its names, and its rules for input vectors.

Every format carries the ``serving_default`` computation under the same names; the SavedModel
adds ``sample``. The SavedModel enforces the input rules in its graph. TFLite and ONNX files
drop those checks (measured: see ``tflite`` and ``onnx``), so their runners, the serving
client and ``vec2face-invert`` apply the same rules here, in numpy, before a call. No
TensorFlow import: the REST client uses this module.

Input dtypes: the SavedModel signatures are typed float32 and TensorFlow refuses anything else
("expected to be a float tensor but is a double tensor"). The Python entry points that use
``check_embeddings`` accept any real dtype (float16/32/64, signed or unsigned integers) and cast
it to float32, so a float64 value beyond float32's range is refused as Inf; bool, complex,
strings and Python objects are refused.

Scale: the model normalises each row, so any scale gives the same face, but only where the
float32 normalisation is exact. Measured on the smoke generator with a non-zero centre: the
TFLite file's fused ``L2_NORMALIZATION`` floors the squared norm at 1e-12, so rows of norm below
1e-6 lose their direction (a garbage image, no error), and every runtime squares the row in
float32, which overflows above a norm of about 1.8e19 (a garbage image, no error). Rows whose
norm is outside [``MIN_EMBEDDING_NORM``, ``MAX_EMBEDDING_NORM``] are therefore refused, with a
margin of ten on each side.
"""

from __future__ import annotations

import numpy as np

SERVING_SIGNATURE = "serving_default"
SAMPLE_SIGNATURE = "sample"
# Beside the contract, for query refinement: the same computation as ``sample`` before the
# rounding to uint8, so that a gradient reaches the generator's inputs. Its ``image`` output is
# float32[None, H, W, 3] in [-1, 1].
SAMPLE_FLOAT_SIGNATURE = "sample_float"
EMBEDDING_INPUT = "embedding"
NOISE_INPUT = "noise"
IMAGE_OUTPUT = "image"
# The exported student (the engine's differentiable twin): aligned face in, unit vector out.
STUDENT_DIR = "student"
STUDENT_IMAGE_INPUT = "image"
STUDENT_EMBEDDING_OUTPUT = "embedding"
# The student's differentiable entry: ``image`` float32[None, H, W, 3] in [-1, 1] (what
# ``sample_float`` returns) -> ``embedding``.
STUDENT_FLOAT_SIGNATURE = "embed_float"
MIN_EMBEDDING_NORM = 1e-5
MAX_EMBEDDING_NORM = 1e18


def check_embeddings(embedding, dim: int | None = None, name: str = "embedding",
                     allow_single: bool = False, nonzero_rows: bool = True) -> np.ndarray:
    """``embedding`` as float32[N, dim], or a ValueError that names the problem.

    Args:
      embedding: array-like of raw engine vectors (any scale: the model normalises them).
      dim: the required number of columns (the engine's D); None accepts any.
      name: what to call the input in messages.
      allow_single: accept one vector [D] as a batch of one.
      nonzero_rows: the rows are directions that the model normalises: reject all-zero rows
        (no direction to invert) and rows whose L2 norm is outside [MIN_EMBEDDING_NORM,
        MAX_EMBEDDING_NORM]. False for noise, which may be zero and is not normalised.

    Returns:
      float32[N, D]; any real dtype is cast (see the module docstring).

    Raises:
      ValueError: for a ragged or non-numeric array (bool, complex, strings, objects), a
        wrong rank or D, no columns, an empty batch, NaN/Inf (also float64 values beyond
        float32's range), an all-zero row, or a row norm out of range.
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
    if values.shape[1] == 0:
        raise ValueError(f"{name} has no columns: each row must be an engine vector of D "
                         "values")
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
    if nonzero_rows:
        # float64: the float32 sum of squares is what overflows in the model.
        norms = np.linalg.norm(values.astype(np.float64), axis=1)
        out_of_range = np.flatnonzero((norms < MIN_EMBEDDING_NORM) | (norms > MAX_EMBEDDING_NORM))
        if out_of_range.size:
            shown = ", ".join(f"{norm:.3g}" for norm in norms[out_of_range[:10]])
            raise ValueError(
                f"{name} row(s) {out_of_range[:10].tolist()} have L2 norm {shown}, outside "
                f"[{MIN_EMBEDDING_NORM:g}, {MAX_EMBEDDING_NORM:g}] where the model's float32 "
                "normalisation keeps the direction; rescale them (the scale does not change "
                "the face)")
    return values
