"""The ``onnx:<file>`` engine: any ONNX model that maps aligned crops to vectors.

Security: loading an ONNX file runs the graph its author wrote in onnxruntime (custom-op
libraries and external-data paths included). Only load models you trust.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from vec2face_tf.engines.base import Engine, EngineError, check_options
from vec2face_tf.engines.savedmodel_engine import (
    check_normalization,
    resolve_input_size,
    scale_pixels,
)

LAYOUTS = ("NHWC", "NCHW")
_OPTIONS = ("input_size", "normalization", "layout", "output", "threads")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16,
                "tensor(double)": np.float64, "tensor(uint8)": np.uint8}


def _static(dimension: Any) -> int | None:
    # onnxruntime reports symbolic dimensions as strings and unknown ones as None.
    return dimension if isinstance(dimension, int) and dimension > 0 else None


class OnnxEngine(Engine):
    """A user ONNX model: one image input (NHWC or NCHW) -> one output [N, D].

    Loading it runs the model author's graph: only load ONNX files you trust.
    """

    def __init__(self, path: str | pathlib.Path, input_size: int | None = None,
                 normalization: str | None = None, layout: str | None = None,
                 output: str | None = None, threads: int = 0):
        """Opens an onnxruntime CPU session and reads the input and output shapes.

        Args:
          path: the ``.onnx`` file.
          input_size: square input size; needed only when the model's H and W are not fixed,
            and must agree with them when they are.
          normalization: ``"uint8"``, ``"zero_one"`` or ``"minus_one_one"``; default
            ``"uint8"`` for a uint8 input, else ``"zero_one"``.
          layout: ``"NHWC"`` or ``"NCHW"``; default: the axis of size 3 decides.
          output: the output to read when the model has several.
          threads: onnxruntime intra-op threads; 0 lets onnxruntime choose (all cores).

        Raises:
          EngineError: when the file cannot be loaded, or the model does not take one RGB
            image input and give a [N, D] vector output.
        """
        import onnxruntime

        path = pathlib.Path(path)
        if not path.is_file():
            raise EngineError(f"ONNX model file {path} does not exist")
        if not isinstance(threads, int) or threads < 0:
            raise EngineError(f"threads must be an int >= 0, got {threads!r}")
        session_options = onnxruntime.SessionOptions()
        session_options.intra_op_num_threads = threads
        try:
            self._session = onnxruntime.InferenceSession(
                str(path), sess_options=session_options, providers=["CPUExecutionProvider"])
        except Exception as error:  # onnxruntime raises its own types for bad files.
            raise EngineError(f"cannot load ONNX model {path}: {error}") from None
        where = f"ONNX model {path}"

        inputs = self._session.get_inputs()
        if len(inputs) != 1:
            raise EngineError(f"{where} must take exactly one input, it takes "
                              f"{[i.name for i in inputs]}")
        model_input = inputs[0]
        self._input_name = model_input.name
        if model_input.type not in _NUMPY_TYPES:
            raise EngineError(f"{where} input must be float or uint8, it is {model_input.type}")
        self._input_dtype = _NUMPY_TYPES[model_input.type]
        shape = list(model_input.shape)
        if len(shape) != 4:
            raise EngineError(f"{where} input {self._input_name!r} must be a 4-D image batch, "
                              f"it is {shape}")
        self.layout = self._resolve_layout(shape, layout, where)
        height, width = (shape[1], shape[2]) if self.layout == "NHWC" else (shape[2], shape[3])
        height, width = _static(height), _static(width)
        if height is not None and width is not None and height != width:
            raise EngineError(f"{where} takes non-square {height}x{width} input; aligned crops "
                              "are square")
        self.input_size = resolve_input_size(height if height == width else None, input_size,
                                             where)
        self.normalization = check_normalization(normalization, self._input_dtype == np.uint8)

        output_names = [o.name for o in self._session.get_outputs()]
        if output is None:
            if len(output_names) != 1:
                raise EngineError(f"{where} has outputs {output_names}; choose one with "
                                  "output=<name>")
            output = output_names[0]
        if output not in output_names:
            raise EngineError(f"{where} has no output {output!r}; it has {output_names}")
        self._output_name = output
        output_shape = self._session.get_outputs()[output_names.index(output)].shape
        if len(output_shape) != 2:
            raise EngineError(f"{where} output {output!r} must be [N, D], it is {output_shape}")
        self.name = f"onnx:{path}"
        self.dim = _static(output_shape[1])
        if self.dim is None:
            probe = np.zeros((1, self.input_size, self.input_size, 3), np.uint8)
            self.dim = int(self._embed(probe).shape[-1])

    @staticmethod
    def _resolve_layout(shape: list, layout: str | None, where: str) -> str:
        channels_last, channels_first = _static(shape[3]) == 3, _static(shape[1]) == 3
        if layout is not None:
            if layout not in LAYOUTS:
                raise EngineError(f"layout must be one of {LAYOUTS}, got {layout!r}")
            if (layout == "NHWC" and _static(shape[3]) not in (None, 3)) or \
                    (layout == "NCHW" and _static(shape[1]) not in (None, 3)):
                raise EngineError(f"{where} input {shape} has no 3-channel axis for layout "
                                  f"{layout}")
            return layout
        if channels_last and not channels_first:
            return "NHWC"
        if channels_first and not channels_last:
            return "NCHW"
        raise EngineError(f"{where} input shape {shape} does not show where the 3 colour "
                          "channels are; pass layout='NHWC' or layout='NCHW'")

    def _embed(self, images: np.ndarray) -> np.ndarray:
        batch = scale_pixels(images, self.normalization).astype(self._input_dtype, copy=False)
        if self.layout == "NCHW":
            batch = np.ascontiguousarray(batch.transpose(0, 3, 1, 2))
        try:
            (vectors,) = self._session.run([self._output_name], {self._input_name: batch})
        except Exception as error:  # onnxruntime's own error types.
            raise EngineError(f"engine {self.name!r} failed on a batch of {len(images)}: "
                              f"{error}") from None
        return np.asarray(vectors)


def make_engine(argument: str | None = None, **options: Any) -> OnnxEngine:
    """Registry factory for ``get_engine("onnx:<file>", input_size=..., layout=..., ...)``.

    Loading the ONNX file runs its author's graph: only load models you trust.

    Args:
      argument: the ``.onnx`` file.
      **options: ``input_size``, ``normalization``, ``layout``, ``output``, ``threads``
        (see OnnxEngine).

    Returns:
      An OnnxEngine.

    Raises:
      EngineError: for a missing path, an unknown option, or an unusable model.
    """
    if not argument:
        raise EngineError("engine 'onnx' needs a file, e.g. 'onnx:/models/fr.onnx'")
    check_options("onnx", options, _OPTIONS)
    return OnnxEngine(argument, **options)
