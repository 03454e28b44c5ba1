"""TFLite export of the generator's ``serving_default`` computation (DESIGN §3).

Each file holds one signature, ``serving_default``: input ``embedding`` float32[None, D] (raw
engine output; the model L2-normalises it), output ``image`` uint8[None, H, W, 3]. They are
converted from an exported SavedModel version and written beside it, to
``<export_base>/<model_name>/tflite/<version>/``, with a copy of its ``vec2face.json``.

Variants, with what they measured on the 32x32 smoke generator (TF 2.21, LiteRT 2.3,
against the SavedModel, on real dlib vectors; the tests print these numbers):

- ``float32``: no optimisation; 1321 KiB. Float image equal to ~1e-5; uint8 image equal but
  for one level at rounding boundaries (~5e-5 of the pixels).
- ``float16``: float16 weights, float32 compute; 692 KiB. Float image to ~5e-3 (<= 1 level).
- ``dynamic_range``: int8 weights, float activations; 390 KiB. Mean error ~1.5 levels.
- ``int8``: int8 weights and activations, calibrated on >= 200 real engine vectors; float32
  in, uint8 out, like the signature; 407 KiB. Mean error ~3.5-5 levels; the dlib cosine
  between its image and the SavedModel's is >= 0.99. What stays float, and why:

  * The uint8 conversion after the generator's tanh (``(x + 1) * 127.5``, round, clip,
    cast). A default int8 conversion quantises it, and the calibrator records for ``tanh``
    and ``tanh + 1`` the union of their own range and that of the next op (``tanh + 1``
    spanned [0, 254] instead of [0, 2]), consistent with it reading a buffer that the next,
    in-place, op has already overwritten. ``tanh + 1`` then gets a step of ~1.0 and the
    image has 3 distinct levels (e.g. 0, 126, 250; mean error 34 levels). These 6 ops on
    H*W*3 values cost nothing in float, and round exactly there.
  * The embedding normalisation and the zero-noise concatenation before the first dense
    layer (D values per row). In float, the centred unit normalisation keeps its precision
    and a raw vector of any scale works. In int8 the input is clipped to the calibrated
    range: a unit vector times 7.5 moved the image by 28 levels on average.
  * ``ROUND`` and ``CAST`` have no int8 kernel anyway. Setting
    ``target_spec.supported_ops=[TFLITE_BUILTINS_INT8]`` does not change that: the converter
    accepts it and writes a byte-identical file to the default op set.

  Everything between (every dense, conv, instance norm, AdaIN, resize, LeakyReLU and the
  tanh) runs in int8. The float ops are kept out of quantisation with TF's public
  ``tf.lite.experimental.QuantizationDebugger`` (``denylisted_nodes``), their names read
  from the float32 conversion of the same SavedModel; ``convert`` checks the result.

**No input checks in the files.** The SavedModel's ``tf.debugging`` asserts (wrong shape,
NaN/Inf, all-zero row, empty batch) are dropped by the converter without a word: conversion
succeeds and the file has no ASSERT op. Keeping them (``_experimental_preserve_assert_op``)
fails with "'tf.Assert' op is neither a custom op nor a flex op": they would need TF Select
(Flex) ops, which the builtin LiteRT runtime and a plain mobile build do not have. Measured
on the files: a NaN, Inf or all-zero row gives a plain white image (float variants) or
garbage (int8) with no error; an empty batch, a wrong D or a rank-1/rank-3 input fails with
an opaque "XNNPack delegate failed to reshape runtime" RuntimeError; float64 fails in
``SetTensor``. The converter also fuses the first unit normalisation into ``L2_NORMALIZATION``,
which floors the squared norm at 1e-12: with a trained (non-zero) embedding centre, a row of
norm below 1e-6 gives a face of no identity, where the SavedModel still gives the right one.
So every caller must validate first: ``TFLiteGenerator`` does, in Python
(``contract.check_embeddings``, norm range included), and mobile callers apply the same rules
(README).
"""

from __future__ import annotations

import collections
import hashlib
import os
import pathlib
import warnings
from collections.abc import Iterable

import numpy as np
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

from vec2face_tf.config import CropSpec
from vec2face_tf.export import savedmodel
from vec2face_tf.export.contract import EMBEDDING_INPUT, IMAGE_OUTPUT, check_embeddings

VARIANTS = ("float32", "float16", "dynamic_range", "int8")
MIN_CALIBRATION_EMBEDDINGS = 200
TFLITE_SECTION = "tflite"
_CALIBRATION_BATCH = 32  # Rows per calibration invocation: same statistics, fewer calls.
_FIRST_LEARNED_OPS = ("FULLY_CONNECTED", "CONV_2D")
_GENERATOR_OUTPUT_OP = "TANH"


def tflite_file_name(variant: str) -> str:
    """``generator_<variant>.tflite``."""
    return f"generator_{check_variant(variant)}.tflite"


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise savedmodel.ExportError(f"unknown TFLite variant {variant!r}; choose from "
                                     f"{', '.join(VARIANTS)}")
    return variant


def check_calibration_embeddings(embeddings, dim: int | None) -> np.ndarray:
    """The int8 representative dataset as float32[N >= 200, dim], or an ExportError."""
    if embeddings is None:
        raise savedmodel.ExportError(
            f"the int8 variant needs representative_embeddings: at least "
            f"{MIN_CALIBRATION_EMBEDDINGS} real engine vectors (calibration_embeddings() "
            "reads them from the embedding cache)")
    try:
        rows = check_embeddings(embeddings, dim, "representative_embeddings")
    except ValueError as error:
        raise savedmodel.ExportError(str(error)) from error
    if rows.shape[0] < MIN_CALIBRATION_EMBEDDINGS:
        raise savedmodel.ExportError(
            f"int8 calibration needs at least {MIN_CALIBRATION_EMBEDDINGS} real engine vectors, "
            f"got {rows.shape[0]}; too few give activation ranges that real inputs exceed")
    return rows


def calibration_embeddings(cache_dir: str | os.PathLike, engine_name: str,
                           crop: CropSpec | dict, count: int = 256,
                           seed: int = 0) -> np.ndarray:
    """A seeded random subset of the real engine vectors in an embedding cache.

    Args:
      cache_dir: the cache root given to ``vec2face-prepare`` / training.
      engine_name: ``Engine.name`` of the model's engine (``vec2face.json``'s ``engine``).
      crop: the crop spec, a ``CropSpec`` or its dict (``vec2face.json``'s ``crop``).
      count: vectors wanted, at least 200; a cache with fewer (but >= 200) gives all it has.
      seed: picks the subset.

    Returns:
      float32[min(count, cached), D], rows in random order.

    Raises:
      ExportError: for ``count`` < 200 or a cache holding fewer than 200 faces.
      CacheError: for a missing or unreadable cache.
    """
    from vec2face_tf.data import pipeline

    if isinstance(count, bool) or not isinstance(count, int) or count < \
            MIN_CALIBRATION_EMBEDDINGS:
        raise savedmodel.ExportError(f"count must be an integer >= {MIN_CALIBRATION_EMBEDDINGS} "
                                     f"(int8 calibration needs that many), got {count!r}")
    if isinstance(crop, dict):
        crop = CropSpec(**crop)
    embeddings = pipeline.load_faces(cache_dir, engine_name, crop).embeddings
    if embeddings.shape[0] < MIN_CALIBRATION_EMBEDDINGS:
        raise savedmodel.ExportError(
            f"the embedding cache {cache_dir} holds {embeddings.shape[0]} {engine_name} faces; "
            f"int8 calibration needs at least {MIN_CALIBRATION_EMBEDDINGS}: prepare more photos "
            "or leave int8 out")
    rows = np.random.default_rng(seed).choice(embeddings.shape[0],
                                              min(count, embeddings.shape[0]), replace=False)
    return embeddings[rows].astype(np.float32)


def convert(saved_model_dir: str | os.PathLike, variant: str,
            representative_embeddings=None) -> bytes:
    """One TFLite variant of an exported version's ``serving_default`` signature.

    Args:
      saved_model_dir: a SavedModel version folder, or a model base (its latest version).
      variant: one of ``VARIANTS``.
      representative_embeddings: float32[N >= 200, D] real engine vectors; needed for
        ``int8`` (calibration), ignored by the other variants.

    Returns:
      The flatbuffer bytes.

    Raises:
      ExportError: for an unknown variant, a missing SavedModel, missing or bad calibration
        vectors, or an int8 conversion that did not keep the float ops float.
    """
    check_variant(variant)
    saved_model_dir = savedmodel.resolve_version_dir(saved_model_dir)
    if variant == "int8":
        return _convert_int8(saved_model_dir, representative_embeddings)
    converter = _converter(saved_model_dir)
    if variant != "float32":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    return converter.convert()


def _converter(saved_model_dir: pathlib.Path) -> tf.lite.TFLiteConverter:
    return tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=[savedmodel.SERVING_SIGNATURE])


def _convert_int8(saved_model_dir: pathlib.Path, representative_embeddings) -> bytes:
    if representative_embeddings is None:
        check_calibration_embeddings(None, None)
    float_graph = _Graph(_converter(saved_model_dir).convert())
    rows = check_calibration_embeddings(representative_embeddings, float_graph.embedding_dim)
    keep_float = float_graph.head_names() + float_graph.tail_names()

    def representative_dataset():
        for start in range(0, rows.shape[0], _CALIBRATION_BATCH):
            # A list (not a dict) keeps the calibrator off the deprecated tf.lite.Interpreter.
            yield [rows[start:start + _CALIBRATION_BATCH]]

    converter = _converter(saved_model_dir)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative_dataset
    with warnings.catch_warnings():
        # The debugger opens its instrumented model with tf.lite.Interpreter; nothing here
        # runs it, and the file written is checked with LiteRT below.
        warnings.filterwarnings("ignore", message=r"(?s).*tf\.lite\.Interpreter is deprecated")
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=representative_dataset,
            debug_options=tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=keep_float))
        model = bytes(debugger.get_nondebug_quantized_model())
    _check_int8(_Graph(model))
    return model


def _check_int8(graph: _Graph) -> None:
    """Raises ExportError unless the body is int8 and the uint8 conversion stayed float."""
    not_int8 = sorted({op["op_name"] for op in graph.ops
                       if op["op_name"] in _FIRST_LEARNED_OPS
                       and graph.dtype(op["outputs"][0]) != np.int8})
    tail = graph.tail_ops()
    quantised_tail = [graph.name(op["outputs"][0]) for op in tail[1:]
                      if graph.dtype(op["outputs"][0]) != np.float32]
    if not_int8:
        raise savedmodel.ExportError(f"the int8 conversion left dense/conv ops {not_int8} in "
                                     "float; not writing it as int8")
    if quantised_tail or graph.dtype(tail[0]["outputs"][0]) != np.uint8:
        raise savedmodel.ExportError(
            f"the int8 conversion quantised the uint8 conversion after the tanh (tensors "
            f"{quantised_tail}), whose calibrated range is wrong; the image would have a few "
            "grey levels, so it is not written")


class _Graph:
    """Ops and tensors of a TFLite flatbuffer, as LiteRT's interpreter reports them.

    The op list comes from ``Interpreter._get_ops_details``: LiteRT has no public graph view,
    and the flatbuffer schema module is no lighter a dependency.
    """

    def __init__(self, model: bytes):
        interpreter = Interpreter(model_content=model)
        self._tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
        self.ops = interpreter._get_ops_details()
        runner = interpreter.get_signature_runner(savedmodel.SERVING_SIGNATURE)
        embedding = runner.get_input_details()[EMBEDDING_INPUT]
        self.input_index = embedding["index"]
        self.embedding_dim = int(embedding["shape_signature"][-1])
        self.output_index = runner.get_output_details()[IMAGE_OUTPUT]["index"]
        self._producer = {index: op for op in self.ops for index in op["outputs"]}
        self._consumers = collections.defaultdict(list)
        for op in self.ops:
            for index in op["inputs"]:
                self._consumers[index].append(op)

    def name(self, index: int) -> str:
        return self._tensors[index]["name"]

    def dtype(self, index: int) -> type:
        return self._tensors[index]["dtype"]

    def tail_ops(self) -> list[dict]:
        """The ops after the generator's tanh, from the output back (the uint8 conversion)."""
        ops, index = [], self.output_index
        while True:
            op = self._producer.get(index)
            if op is None:
                raise savedmodel.ExportError("no TANH before the image output: this is not a "
                                             "vec2face_tf generator")
            if op["op_name"] == _GENERATOR_OUTPUT_OP:
                return ops
            ops.append(op)
            computed = [i for i in op["inputs"] if i in self._producer]
            if len(computed) != 1:
                raise savedmodel.ExportError(
                    f"unexpected op {op['op_name']} with {len(computed)} computed inputs after "
                    "the generator's tanh")
            index = computed[0]

    def tail_names(self) -> list[str]:
        return [self.name(op["outputs"][0]) for op in self.tail_ops()]

    def head_names(self) -> list[str]:
        """Ops fed by the embedding before the first dense/conv layer (normalisation, noise)."""
        names, frontier, seen = [], [self.input_index], set()
        while frontier:
            for op in self._consumers[frontier.pop()]:
                if op["index"] in seen or op["op_name"] in _FIRST_LEARNED_OPS:
                    continue
                if self.output_index in op["outputs"] or op["op_name"] == _GENERATOR_OUTPUT_OP:
                    raise savedmodel.ExportError("the embedding reaches the image without a "
                                                 "dense or conv layer")
                seen.add(op["index"])
                names.append(self.name(op["outputs"][0]))
                frontier.extend(op["outputs"])
        return names


def describe_ops(model: bytes | str | os.PathLike) -> list[tuple[str, str]]:
    """``(op name, output dtype)`` of every op of a TFLite file, in execution order."""
    if not isinstance(model, bytes):
        model = pathlib.Path(model).read_bytes()
    graph = _Graph(model)
    return [(op["op_name"], np.dtype(graph.dtype(op["outputs"][0])).name) for op in graph.ops]


def write_tflite(saved_model_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 variants: Iterable[str] = VARIANTS,
                 representative_embeddings=None) -> dict[str, pathlib.Path]:
    """Writes ``generator_<variant>.tflite`` files and ``vec2face.json`` into ``out_dir``.

    ``vec2face.json`` is the SavedModel's, with a ``tflite`` section naming each variant's
    file, input and output. The folder is built under a hidden temporary name beside
    ``out_dir`` and renamed into place, so a reader never sees half of it.

    Args:
      saved_model_dir: a SavedModel version folder, or a model base (its latest version).
      out_dir: the folder to create, normally
        ``savedmodel.format_dir(export_base, model_name, "tflite", version)``.
      variants: which of ``VARIANTS`` to write.
      representative_embeddings: float32[N >= 200, D] real engine vectors, for ``int8``.

    Returns:
      ``{variant: path of its file}``.

    Raises:
      ExportError: for an existing ``out_dir`` (never overwritten), an unknown or no variant,
        missing calibration vectors for int8, or a folder that is not a vec2face_tf export.
    """
    saved_model_dir = savedmodel.resolve_version_dir(saved_model_dir)
    variants = list(dict.fromkeys(check_variant(v) for v in variants))
    if not variants:
        raise savedmodel.ExportError(f"no TFLite variant asked for; choose from "
                                     f"{', '.join(VARIANTS)}")
    metadata = savedmodel.read_metadata(saved_model_dir)
    if "int8" in variants:
        check_calibration_embeddings(representative_embeddings, metadata["embedding_dim"])
    out_dir = pathlib.Path(out_dir)
    with savedmodel.publishing(out_dir) as folder:
        section = {}
        for variant in variants:
            model = convert(saved_model_dir, variant, representative_embeddings)
            (folder / tflite_file_name(variant)).write_bytes(model)
            section[variant] = {
                "file": tflite_file_name(variant),
                "input": "embedding float32[None, D]",
                "output": "image uint8[None, H, W, 3]",
                "sha256": hashlib.sha256(model).hexdigest(),
            }
            if variant == "int8":
                section[variant]["calibration_embeddings"] = int(
                    np.asarray(representative_embeddings).shape[0])
        metadata[TFLITE_SECTION] = section
        savedmodel.write_metadata(folder, metadata)
    return {variant: out_dir / tflite_file_name(variant) for variant in variants}


class TFLiteGenerator:
    """Runs a TFLite generator file with LiteRT, after the checks the file cannot make.

    ``generator(embedding)`` takes float32[N, D] raw engine vectors and returns uint8[N, H, W,
    3] RGB aligned crops. Any real dtype is cast to float32. A wrong shape or dtype, NaN/Inf,
    an all-zero row, a row norm outside [1e-5, 1e18] or an empty batch raises a ValueError
    naming the problem (the file itself would return a white or wrong image, or fail with an
    XNNPack error). The signature runner resizes the input to each batch size. Not
    thread-safe: give each thread its own instance.

    Args:
      path: a ``generator_<variant>.tflite`` file.
      num_threads: LiteRT CPU threads (None: LiteRT's default).
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = pathlib.Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no TFLite file at {self.path}")
        self._interpreter = Interpreter(model_path=str(self.path), num_threads=num_threads)
        signatures = self._interpreter.get_signature_list()
        expected = {"inputs": [EMBEDDING_INPUT], "outputs": [IMAGE_OUTPUT]}
        if signatures.get(savedmodel.SERVING_SIGNATURE) != expected:
            raise savedmodel.ExportError(
                f"{self.path} is not a vec2face_tf generator: signatures {signatures}, "
                f"expected {savedmodel.SERVING_SIGNATURE} {expected}")
        self._runner = self._interpreter.get_signature_runner(savedmodel.SERVING_SIGNATURE)
        embedding = self._runner.get_input_details()[EMBEDDING_INPUT]
        image = self._runner.get_output_details()[IMAGE_OUTPUT]
        self.embedding_dim = int(embedding["shape_signature"][-1])
        self.height, self.width = (int(s) for s in image["shape_signature"][1:3])

    def __call__(self, embedding) -> np.ndarray:
        rows = check_embeddings(embedding, self.embedding_dim)
        return np.array(self._runner(**{EMBEDDING_INPUT: rows})[IMAGE_OUTPUT], copy=True)

    def __repr__(self) -> str:
        return (f"TFLiteGenerator({str(self.path)!r}, D={self.embedding_dim}, "
                f"{self.height}x{self.width})")
