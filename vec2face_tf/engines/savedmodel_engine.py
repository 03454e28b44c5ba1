"""The ``savedmodel:<dir>`` engine: any TF SavedModel that maps aligned crops to vectors.

Security: loading a SavedModel runs the graph its author wrote (it can read files, open
sockets, ...). Only load models you trust.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from vec2face_tf.engines.base import Engine, EngineError, check_options

NORMALIZATIONS = ("uint8", "zero_one", "minus_one_one")
_OPTIONS = ("input_size", "normalization", "signature", "output")


def default_normalization(input_is_uint8: bool) -> str:
    """The pixel scaling assumed when the user gives none.

    A uint8 input takes raw pixels; a float input gets [0, 1], the most common convention
    (``keras.layers.Rescaling(1 / 255)`` outside the model). Models trained on [-1, 1] or on
    raw 0..255 floats must say so with ``normalization``.

    Args:
      input_is_uint8: whether the model's input tensor is uint8.

    Returns:
      ``"uint8"`` or ``"zero_one"``.
    """
    return "uint8" if input_is_uint8 else "zero_one"


def check_normalization(normalization: str | None, input_is_uint8: bool) -> str:
    """Validates a ``normalization`` option against the model's input dtype.

    Args:
      normalization: None (use the default), or one of ``NORMALIZATIONS``.
      input_is_uint8: whether the model's input tensor is uint8.

    Returns:
      The normalization to use.

    Raises:
      EngineError: for an unknown value, or a float scaling for a uint8 input.
    """
    if normalization is None:
        return default_normalization(input_is_uint8)
    if normalization not in NORMALIZATIONS:
        raise EngineError(f"normalization must be one of {NORMALIZATIONS}, got "
                          f"{normalization!r}")
    if input_is_uint8 and normalization != "uint8":
        raise EngineError(f"the model takes uint8 input, so normalization must be 'uint8', "
                          f"got {normalization!r}")
    return normalization


def scale_pixels(images: np.ndarray, normalization: str) -> np.ndarray:
    """Scales a uint8 batch as the model expects.

    Args:
      images: uint8[N, H, W, 3].
      normalization: ``"uint8"`` (unchanged, uint8), ``"zero_one"`` (float32 x / 255) or
        ``"minus_one_one"`` (float32 x / 127.5 - 1).

    Returns:
      The scaled batch.
    """
    if normalization == "uint8":
        return images
    scaled = images.astype(np.float32) / np.float32(255.0)
    return scaled if normalization == "zero_one" else scaled * np.float32(2.0) - np.float32(1.0)


def resolve_input_size(model_size: int | None, option: int | None, where: str) -> int:
    """Picks the input size from the model's static shape or the ``input_size`` option.

    Args:
      model_size: the model's square spatial size, or None when it is dynamic.
      option: the user's ``input_size`` option, or None.
      where: the model's description, for error messages.

    Returns:
      The input size.

    Raises:
      EngineError: when neither is known, they disagree, or the option is not a positive int.
    """
    if option is not None and (not isinstance(option, int) or option < 8):
        raise EngineError(f"input_size must be an int >= 8, got {option!r}")
    if model_size is not None and option is not None and model_size != option:
        raise EngineError(f"{where} takes {model_size}x{model_size} input, but input_size="
                          f"{option} was given")
    size = model_size if model_size is not None else option
    if size is None:
        raise EngineError(f"{where} has no fixed square input size; pass input_size=<pixels>")
    return size


class SavedModelEngine(Engine):
    """A user SavedModel signature: one image input [N, H, W, 3] -> one output [N, D].

    Loading it runs the model author's code: only load SavedModels you trust.
    """

    def __init__(self, path: str | pathlib.Path, input_size: int | None = None,
                 normalization: str | None = None, signature: str = "serving_default",
                 output: str | None = None):
        """Loads the SavedModel and reads its signature.

        Args:
          path: the SavedModel directory.
          input_size: square input size; needed only when the signature's H and W are not
            fixed, and must agree with them when they are.
          normalization: ``"uint8"``, ``"zero_one"`` or ``"minus_one_one"``; default
            ``"uint8"`` for a uint8 input, else ``"zero_one"``.
          signature: the signature to call.
          output: the output to read when the signature has several.

        Raises:
          EngineError: when the directory is not a SavedModel, or the signature does not
            take one NHWC RGB image input and give a [N, D] vector output.
        """
        import tensorflow as tf

        path = pathlib.Path(path)
        if not (path / "saved_model.pb").is_file():
            raise EngineError(f"{path} is not a SavedModel directory (no saved_model.pb)")
        try:
            self._model = tf.saved_model.load(str(path))
        except Exception as error:  # TF raises many types for a damaged model.
            raise EngineError(f"cannot load SavedModel {path}: {error}") from None
        if signature not in self._model.signatures:
            raise EngineError(f"SavedModel {path} has no signature {signature!r}; it has "
                              f"{sorted(self._model.signatures)}")
        self._function = self._model.signatures[signature]
        where = f"SavedModel {path} signature {signature!r}"

        _, input_specs = self._function.structured_input_signature
        if len(input_specs) != 1:
            raise EngineError(f"{where} must take exactly one input, it takes "
                              f"{sorted(input_specs)}")
        (self._input_name, input_spec), = input_specs.items()
        shape = input_spec.shape
        if shape.rank != 4 or shape[3] != 3:
            raise EngineError(f"{where} input {self._input_name!r} must be [N, H, W, 3] "
                              f"(NHWC RGB), it is {shape}")
        model_size = shape[1] if shape[1] is not None and shape[1] == shape[2] else None
        if shape[1] is not None and shape[2] is not None and shape[1] != shape[2]:
            raise EngineError(f"{where} takes non-square {shape[1]}x{shape[2]} input; aligned "
                              "crops are square")
        self.input_size = resolve_input_size(model_size, input_size, where)
        self._input_dtype = input_spec.dtype
        self.normalization = check_normalization(normalization, input_spec.dtype == tf.uint8)
        if not (input_spec.dtype.is_floating or input_spec.dtype == tf.uint8):
            raise EngineError(f"{where} input must be float or uint8, it is {input_spec.dtype}")

        output_specs = self._function.structured_outputs
        if output is None:
            if len(output_specs) != 1:
                raise EngineError(f"{where} has outputs {sorted(output_specs)}; choose one "
                                  "with output=<name>")
            output = next(iter(output_specs))
        if output not in output_specs:
            raise EngineError(f"{where} has no output {output!r}; it has "
                              f"{sorted(output_specs)}")
        self._output_name = output
        output_shape = output_specs[output].shape
        if output_shape.rank is not None and output_shape.rank != 2:
            raise EngineError(f"{where} output {output!r} must be [N, D], it is {output_shape}")
        self.name = f"savedmodel:{path}"
        self.dim = output_shape[-1] if output_shape.rank == 2 else None
        if self.dim is None:
            probe = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
            self.dim = int(self._run(probe).shape[-1])

    def _run(self, images: np.ndarray) -> np.ndarray:
        import tensorflow as tf

        batch = tf.cast(scale_pixels(images, self.normalization), self._input_dtype)
        outputs = self._function(**{self._input_name: batch})
        vectors = outputs[self._output_name].numpy()
        if vectors.ndim != 2:
            raise EngineError(f"engine {self.name!r} returned shape {vectors.shape}, "
                              "expected [N, D]")
        return vectors

    def _embed(self, images: np.ndarray) -> np.ndarray:
        return self._run(images)


def make_engine(argument: str | None = None, **options: Any) -> SavedModelEngine:
    """Registry factory for ``get_engine("savedmodel:<dir>", input_size=..., ...)``.

    Loading the SavedModel runs its author's code: only load models you trust.

    Args:
      argument: the SavedModel directory.
      **options: ``input_size``, ``normalization``, ``signature``, ``output`` (see
        SavedModelEngine).

    Returns:
      A SavedModelEngine.

    Raises:
      EngineError: for a missing path, an unknown option, or an unusable model.
    """
    if not argument:
        raise EngineError("engine 'savedmodel' needs a directory, e.g. 'savedmodel:/models/fr'")
    check_options("savedmodel", options, _OPTIONS)
    return SavedModelEngine(argument, **options)
