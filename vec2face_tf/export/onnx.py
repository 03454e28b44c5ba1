"""The exported generator as ONNX: ``serving_default`` of the SavedModel, converted by tf2onnx.

``<export_base>/<model_name>/onnx/<version>/`` holds ``generator.onnx`` and a copy of
``vec2face.json`` with an ``"onnx"`` section (file, opset, input, output). The ONNX graph has
the contract names of DESIGN §3: input ``embedding`` float32[batch, D] (raw engine output, the
model L2-normalises it) and output ``image`` uint8[batch, H, W, 3], with noise = 0. The model's
``metadata_props["vec2face.json"]`` carries the SavedModel's metadata as JSON.

What tf2onnx 1.17.0 does with the SavedModel's in-graph checks (measured on the smoke export,
opset 17; the frozen ``serving_default`` graph has 2 ``Assert``, 1 ``CheckNumerics`` and 1
``If`` from ``tf.debugging``): it converts without a warning and **drops them all**. The
``Assert``/``If`` nodes hang off control dependencies only and tf2onnx reads data inputs only,
so they are pruned; ``CheckNumerics`` becomes an ``Identity`` that the optimizer removes. So
the ``.onnx`` file checks only what ONNX Runtime checks itself, the declared input rank, D and dtype
("Invalid rank for input", "Got invalid dimensions for input"), and on the raw
``InferenceSession`` (CPUExecutionProvider, onnxruntime 1.32.0, x86-64):

- a NaN or Inf row runs without error and gives an all-zero (black) uint8 image: NaN passes
  through the generator and the float-to-uint8 ``Cast`` turns it into 0;
- an all-zero row runs and gives an image (of no identity) with no error;
- an empty batch runs and gives an empty ``[0, H, W, 3]`` result.

:class:`OnnxGenerator` therefore validates its input in Python before it runs the session.
"""

from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import onnx

from vec2face_tf.export import savedmodel
from vec2face_tf.export.contract import EMBEDDING_INPUT, IMAGE_OUTPUT, check_embeddings

MIN_OPSET = 17
ONNX_FILE = "generator.onnx"
METADATA_KEY = savedmodel.METADATA_FILE
_BATCH_DIM = "batch"
_ONNX_DTYPES = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.UINT8: "uint8"}


def _max_opset() -> int:
    """The newest opset tf2onnx can write (18 for tf2onnx 1.17.0)."""
    from tf2onnx import constants

    return max(constants.OPSET_TO_IR_VERSION)


def check_opset(opset: int) -> int:
    """``opset`` if tf2onnx can write it and it is at least :data:`MIN_OPSET`.

    Raises:
      savedmodel.ExportError: for an opset below 17 or above what tf2onnx supports.
    """
    if isinstance(opset, bool) or not isinstance(opset, int):
        raise savedmodel.ExportError(f"ONNX opset must be an integer, got {opset!r}")
    if opset < MIN_OPSET:
        raise savedmodel.ExportError(
            f"ONNX opset {opset} is below {MIN_OPSET}, the oldest this export supports; "
            f"pass opset={MIN_OPSET} or newer")
    newest = _max_opset()
    if opset > newest:
        raise savedmodel.ExportError(
            f"ONNX opset {opset} is newer than tf2onnx can write (at most {newest})")
    return opset


def _value_spec(value: onnx.ValueInfoProto) -> dict:
    """``{"name", "dtype", "shape"}`` of a graph input or output; a symbolic dim is None."""
    tensor = value.type.tensor_type
    return {
        "name": value.name,
        "dtype": _ONNX_DTYPES.get(tensor.elem_type,
                                  onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type).name),
        "shape": [dim.dim_value if dim.HasField("dim_value") else None
                  for dim in tensor.shape.dim],
    }


def _name_batch_dimension(model: onnx.ModelProto) -> None:
    """Gives the input and output batch dimension one name, so that tools show them as equal.

    tf2onnx leaves anonymous ``unk__<n>`` symbols there, a different one on each side.
    """
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        if dims and not dims[0].HasField("dim_value"):
            dims[0].dim_param = _BATCH_DIM


def convert(saved_model_dir: str | os.PathLike, opset: int = MIN_OPSET) -> onnx.ModelProto:
    """The ``serving_default`` signature of an exported version, as an ONNX model.

    Args:
      saved_model_dir: a version folder written by :func:`savedmodel.write_savedmodel` (it
        must hold ``assets/vec2face.json``).
      opset: ONNX opset of the default domain, at least 17.

    Returns:
      The model, input ``embedding`` and output ``image``, with the export metadata in
      ``metadata_props["vec2face.json"]``. It is not written anywhere; see :func:`write_onnx`.

    Raises:
      savedmodel.ExportError: for an opset below 17, a folder that is not a vec2face_tf
        export, or a signature whose input and output are not exactly ``embedding`` and
        ``image``.
    """
    check_opset(opset)
    path = pathlib.Path(saved_model_dir)
    if not (path / "saved_model.pb").exists():
        raise savedmodel.ExportError(f"{path} holds no SavedModel (no saved_model.pb)")
    metadata = savedmodel.read_metadata(path)

    import tensorflow as tf
    from tf2onnx import optimizer, tf_loader, tfonnx

    # tf2onnx 1.17.0 has no public from_saved_model; these are the steps its CLI takes, with
    # only serving_default loaded (it would otherwise pick the first signature it finds).
    frozen_graph, input_names, output_names, tables, renames = tf_loader.from_saved_model(
        str(path), None, None, tag=["serve"], signatures=[savedmodel.SERVING_SIGNATURE],
        return_initialized_tables=True, return_tensors_to_rename=True)
    with tf.Graph().as_default() as tf_graph:
        tf.import_graph_def(frozen_graph, name="")
        onnx_graph = tfonnx.process_tf_graph(
            tf_graph, opset=opset, input_names=input_names, output_names=output_names,
            tensors_to_rename=renames, initialized_tables=tables)
    onnx_graph = optimizer.optimize_graph(onnx_graph)
    model = onnx_graph.make_model(f"vec2face_tf generator {savedmodel.SERVING_SIGNATURE}")

    inputs = [value.name for value in model.graph.input]
    outputs = [value.name for value in model.graph.output]
    if inputs != [EMBEDDING_INPUT] or outputs != [IMAGE_OUTPUT]:
        raise savedmodel.ExportError(
            f"{path} {savedmodel.SERVING_SIGNATURE} converts to inputs {inputs} and outputs "
            f"{outputs}; the contract is exactly [{EMBEDDING_INPUT!r}] -> [{IMAGE_OUTPUT!r}]")
    _name_batch_dimension(model)
    model.doc_string = (
        f"vec2face_tf generator ({metadata.get('engine')} engine): {EMBEDDING_INPUT} "
        f"float32[batch, {metadata.get('embedding_dim')}] raw engine features -> "
        f"{IMAGE_OUTPUT} uint8[batch, {metadata.get('height')}, {metadata.get('width')}, 3] "
        f"RGB aligned crop. Export metadata: metadata_props['{METADATA_KEY}'].")
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata, sort_keys=True)})
    return model


def _check_contract_types(model: onnx.ModelProto, metadata: dict) -> tuple[dict, dict]:
    """The input and output specs, after checking them against the contract and metadata."""
    spec_in = _value_spec(model.graph.input[0])
    spec_out = _value_spec(model.graph.output[0])
    expected_in = {"name": EMBEDDING_INPUT, "dtype": "float32",
                   "shape": [None, metadata["embedding_dim"]]}
    expected_out = {"name": IMAGE_OUTPUT, "dtype": "uint8",
                    "shape": [None, metadata["height"], metadata["width"], 3]}
    if (spec_in, spec_out) != (expected_in, expected_out):
        raise savedmodel.ExportError(
            f"converted model is {spec_in} -> {spec_out}; the contract is {expected_in} -> "
            f"{expected_out}")
    return spec_in, spec_out


def write_onnx(saved_model_dir: str | os.PathLike, out_dir: str | os.PathLike,
               opset: int = MIN_OPSET) -> pathlib.Path:
    """Converts a version and writes ``generator.onnx`` and ``vec2face.json`` into ``out_dir``.

    The files go to a hidden temporary folder beside ``out_dir`` that is renamed into place,
    so a reader never sees half a model.

    Args:
      saved_model_dir: the SavedModel version folder to convert.
      out_dir: the folder to create, normally ``savedmodel.format_dir(base, name, "onnx",
        version)``; it must not exist.
      opset: ONNX opset, at least 17.

    Returns:
      The path of the written ``generator.onnx``.

    Raises:
      savedmodel.ExportError: if ``out_dir`` exists (never overwritten), for a bad opset, or
        a model that does not follow the contract.
    """
    check_opset(opset)
    target = pathlib.Path(out_dir)
    with savedmodel.publishing(target) as folder:
        model = convert(saved_model_dir, opset)
        onnx.checker.check_model(model, full_check=True)
        metadata = savedmodel.read_metadata(saved_model_dir)
        spec_in, spec_out = _check_contract_types(model, metadata)
        metadata["onnx"] = {"file": ONNX_FILE, "opset": opset, "input": spec_in,
                            "output": spec_out}
        onnx.save_model(model, str(folder / ONNX_FILE))
        savedmodel.write_metadata(folder, metadata)
    return target / ONNX_FILE


class OnnxGenerator:
    """Runs ``generator.onnx`` on ONNX Runtime's CPU provider, with the checks the file lost.

    Args:
      path: the ``.onnx`` file, or the folder :func:`write_onnx` wrote.

    Attributes:
      dim, height, width: the embedding dimension D and the image size.
      metadata: the export metadata the model carries (``{}`` if it carries none).
    """

    def __init__(self, path: str | os.PathLike):
        import onnxruntime

        model_path = pathlib.Path(path)
        if model_path.is_dir():
            model_path = model_path / ONNX_FILE
        if not model_path.is_file():
            raise FileNotFoundError(f"no ONNX generator at {model_path}")
        self.path = model_path
        self._session = onnxruntime.InferenceSession(
            str(model_path), providers=["CPUExecutionProvider"])
        inputs, outputs = self._session.get_inputs(), self._session.get_outputs()
        if ([i.name for i in inputs], [o.name for o in outputs]) != ([EMBEDDING_INPUT],
                                                                     [IMAGE_OUTPUT]):
            raise ValueError(f"{model_path} is not a vec2face_tf generator: inputs "
                             f"{[i.name for i in inputs]}, outputs {[o.name for o in outputs]}")
        self.dim = inputs[0].shape[1]
        self.height, self.width = outputs[0].shape[1:3]
        props = self._session.get_modelmeta().custom_metadata_map
        self.metadata = json.loads(props[METADATA_KEY]) if METADATA_KEY in props else {}

    def __call__(self, embedding) -> np.ndarray:
        """uint8 ``[N, H, W, 3]`` images for float ``[N, D]`` raw engine features.

        Any real dtype is cast to float32 (as ``contract.check_embeddings`` documents).

        Raises:
          ValueError: for a wrong rank or D, an empty batch, a non-numeric array, NaN/Inf,
            an all-zero row, or a row norm outside [1e-5, 1e18] (a float32 square of a
            larger one overflows in the graph, and the face loses its identity).
        """
        values = check_embeddings(embedding, self.dim)
        return self._session.run([IMAGE_OUTPUT], {EMBEDDING_INPUT: values})[0]
