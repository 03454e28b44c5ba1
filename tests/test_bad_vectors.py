"""Bad vectors at every entry point (issue 7 item 5).

The entry points: the engine API (what an engine's ``_embed`` returns, and the images it is
given), the exported SavedModel signatures, the TFLite and ONNX runners, the serving client's
local checks, the int8 calibration vectors, and ``vec2face-invert`` (its Python API and its
``.npy`` / ``.json`` files, through the binary too). Each bad kind (wrong dimension, wrong
rank, wrong dtype, NaN, +/-Inf, a float64 beyond float32, an all-zero row, an empty batch, a
norm outside the range the exported model normalises exactly) gets the error class and the
message fragment that ``EXPECTED`` lists, or the documented behaviour it names.

Dtypes, the same rule everywhere but the typed signatures: every numpy entry point (and the
engine base class, for what an engine returns) casts any real dtype (float16/32/64, integers)
to float32 and refuses bool, complex, strings and objects by name; a SavedModel signature
refuses a tensor of another dtype ("expected to be a float tensor but is a double tensor").

The runtimes run a copy of the smoke generator whose embedding centre is not zero, as after
training: there the scale of a row matters below a norm of 1e-6 (TFLite) and above 1.8e19
(every runtime), which a zero centre hides.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys
import warnings

import numpy as np
import onnxruntime
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from vec2face_tf.data import inputs
from vec2face_tf.data.inputs import InputError
from vec2face_tf.engines import Engine, EngineError
from vec2face_tf.evaluation import invert
from vec2face_tf.evaluation.invert import InvertError
from vec2face_tf.export import onnx as onnx_export
from vec2face_tf.export import savedmodel, tflite
from vec2face_tf.export.contract import MAX_EMBEDDING_NORM, MIN_EMBEDDING_NORM
from vec2face_tf.serving import ServingClient

pytestmark = pytest.mark.fault

D, Z, SIZE = 128, 8, 32
CALIBRATION_ROWS = tflite.MIN_CALIBRATION_EMBEDDINGS
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# Deterministic and stored nowhere: CI sees the same examples on every run.
SETTINGS = settings(max_examples=25, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def _unit_rows(count, seed=0, dim=D):
    rows = np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _levels(first, second):
    return int(np.abs(first.astype(int) - second.astype(int)).max())


def _bad_kinds() -> dict[str, np.ndarray]:
    """One input of each bad (or borderline) kind, built on one unit row of D values."""
    unit = _unit_rows(1, seed=0)
    planted = {}
    for name, value in (("NaN", np.nan), ("+Inf", np.inf), ("-Inf", -np.inf)):
        row = unit.copy()
        row[0, 3] = value
        planted[name] = row
    return {
        "wrong D": np.ones((1, D - 1), np.float32),
        "rank 1 [D]": unit[0],
        "rank 3": unit[None],
        "rank 0": np.float32(1.0),
        "float64": unit.astype(np.float64),
        "float16": unit.astype(np.float16),
        "int32": np.round(100 * unit).astype(np.int32),
        "bool": np.ones((1, D), bool),
        "complex": unit.astype(np.complex64),
        "string": np.array([["0.1"] * D]),
        "object": np.array([[0.1] * (D - 1) + [None]], dtype=object),
        **planted,
        "float64 beyond float32": np.full((1, D), 1e39),
        "all-zero row": np.zeros((1, D), np.float32),
        "empty batch": np.zeros((0, D), np.float32),
        "norm 1e-7": (1e-7 * unit).astype(np.float32),
        "norm 1e20": (1e20 * unit).astype(np.float32),
    }


KINDS = _bad_kinds()
OK = "ok"  # accepted: the same output as the float32 unit row (a cast, a batch of one)
SENT = "sent"  # the serving client forwards it unchecked: the server's assert names it
SKIP = "n/a"  # no such input exists at this entry point

_CHECK = {  # check_embeddings' messages, shared by every numpy entry point
    "wrong D": "has 127 columns; this model's engine dimension D is 128",
    "rank 1 [D]": "must be float32[batch, 128], got shape (128,)",
    "rank 3": "got shape (1, 1, 128)",
    "rank 0": "got shape ()",
    "float64": OK, "float16": OK, "int32": OK,
    "bool": "must be real numbers (float32), got dtype bool",
    "complex": "must be real numbers (float32), got dtype complex64",
    "string": "must be real numbers (float32), got dtype <U3",
    "object": "must be real numbers (float32), got dtype object",
    "NaN": "contains NaN or Inf (as float32) in row(s) [0]",
    "+Inf": "contains NaN or Inf (as float32) in row(s) [0]",
    "-Inf": "contains NaN or Inf (as float32) in row(s) [0]",
    "float64 beyond float32": "contains NaN or Inf (as float32) in row(s) [0]",
    "all-zero row": "has all-zero row(s) [0], which have no direction to invert",
    "empty batch": "batch is empty: send at least one row",
    "norm 1e-7": "row(s) [0] have L2 norm 1e-07, outside [1e-05, 1e+18]",
    "norm 1e20": "row(s) [0] have L2 norm 1e+20, outside [1e-05, 1e+18]",
}
_TF_DTYPE = "expected to be a float tensor but is a {} tensor"
_SIGNATURE = {
    **{kind: "embedding (engine dimension D) must be float32[batch, 128]; got shape"
       for kind in ("wrong D", "rank 1 [D]", "rank 3", "rank 0")},
    "float64": _TF_DTYPE.format("double"), "float16": _TF_DTYPE.format("half"),
    "int32": _TF_DTYPE.format("int32"), "bool": _TF_DTYPE.format("bool"),
    "complex": _TF_DTYPE.format("complex64"), "string": _TF_DTYPE.format("string"),
    "object": SKIP,  # TensorFlow cannot make a tensor of Python objects
    "NaN": "embedding contains NaN or Inf", "+Inf": "embedding contains NaN or Inf",
    "-Inf": "embedding contains NaN or Inf",
    "float64 beyond float32": _TF_DTYPE.format("double"),
    "all-zero row": "embedding has an all-zero row, which has no direction to invert",
    "empty batch": "embedding batch is empty: send at least one row",
    "norm 1e-7": "outside [1e-05, 1e+18]",
    "norm 1e20": "outside [1e-05, 1e+18]",
}
_INVERT_SHAPES = {
    "wrong D": "vector has 127 values but this model inverts dlib vectors of D=128",
    "rank 1 [D]": OK,
    "rank 3": "must be a [128] or [1, 128] vector, got shape (1, 1, 128)",
    "rank 0": "must be a [128] or [1, 128] vector, got shape ()",
    "empty batch": "holds 0 vectors; invert one template at a time",
}
_NPY_DTYPES = {
    "bool": "must hold real numbers, got dtype bool",
    "complex": "must hold real numbers, got dtype complex64",
    "string": "must hold real numbers, got dtype <U3",
    "object": "holds Python objects (dtype object), not numbers; it is refused without "
              "unpickling",
}

# entry point -> (error class, {bad kind: message fragment, OK, SENT or SKIP}).
EXPECTED = {
    "savedmodel serving_default": (tf.errors.InvalidArgumentError, _SIGNATURE),
    "savedmodel sample": (tf.errors.InvalidArgumentError, _SIGNATURE),
    "tflite TFLiteGenerator": (ValueError, _CHECK),
    "onnx OnnxGenerator": (ValueError, _CHECK),
    "serving ServingClient.reconstruct": (ValueError, {
        **_CHECK, "wrong D": SENT, "rank 1 [D]": OK,
        "rank 3": "must be float32[batch, D] or one vector, got shape (1, 1, 128)",
        "rank 0": "must be float32[batch, D] or one vector, got shape ()"}),
    "tflite int8 calibration vectors": (savedmodel.ExportError, _CHECK),
    "inputs.check_vector": (InputError, {**_CHECK, **_INVERT_SHAPES}),
    "inputs.load_vector (.npy)": (InputError, {**_CHECK, **_INVERT_SHAPES, **_NPY_DTYPES}),
}
assert all(set(table) == set(KINDS) for _, table in EXPECTED.values())
@pytest.fixture(scope="module")
def centred_export(smoke_run, tmp_path_factory):
    """``smoke_run``'s generator with a non-zero embedding centre (norm 0.9), exported."""
    generator, metadata = savedmodel.load_run(smoke_run)
    generator.embedding_normalization.set_center(0.9 * _unit_rows(1, seed=99)[0])
    return savedmodel.write_savedmodel(generator, metadata,
                                       tmp_path_factory.mktemp("centred_base"), "centred")


@pytest.fixture(scope="module")
def signatures(centred_export):
    return tf.saved_model.load(str(centred_export.path)).signatures


@pytest.fixture(scope="module")
def runtimes(centred_export, signatures, tmp_path_factory):
    """``name -> callable(embedding) -> uint8 images`` for the exported formats."""
    folder = tmp_path_factory.mktemp("bad_vector_runtimes")
    tflite_path = folder / tflite.tflite_file_name("float32")
    tflite_path.write_bytes(tflite.convert(centred_export.path, "float32"))
    onnx_path = onnx_export.write_onnx(centred_export.path, folder / "onnx")

    def serving_default(embedding):
        return signatures["serving_default"](embedding=tf.constant(embedding))["image"].numpy()

    def sample(embedding):
        embedding = tf.constant(embedding)
        rows = embedding.shape[0] if embedding.shape.rank else 1
        return signatures["sample"](embedding=embedding, noise=tf.zeros([rows, Z]))[
            "image"].numpy()

    return {"savedmodel serving_default": serving_default, "savedmodel sample": sample,
            "tflite TFLiteGenerator": tflite.TFLiteGenerator(tflite_path),
            "onnx OnnxGenerator": onnx_export.OnnxGenerator(onnx_path)}


class _RecordingClient(ServingClient):
    """A serving client whose ``predict`` records what it would send and answers grey faces,
    so the local checks are seen without a server: a bad vector never reaches ``sent``."""

    def __init__(self):
        super().__init__("smoke", "127.0.0.1", rest_port=1, grpc_port=1, timeout=1)
        self.sent = []

    def predict(self, inputs, signature_name="serving_default"):
        self.sent.append((signature_name, {k: np.asarray(v) for k, v in inputs.items()}))
        rows = len(np.asarray(inputs["embedding"]))
        return {"image": np.full((rows, SIZE, SIZE, 3), 128, np.uint8)}


def _calibration_rows(embedding):
    """A [1, D] input followed by 199 good rows of its dtype, so that messages name row 0."""
    if embedding.ndim != 2 or embedding.shape != (1, D):
        return embedding
    good = _unit_rows(CALIBRATION_ROWS - 1, seed=7)
    good = np.round(100 * good) if embedding.dtype.kind in "iu" else good
    return np.concatenate([embedding, good.astype(embedding.dtype)])


def _call(entry, embedding, runtimes, smoke_export, folder):
    """Feeds ``embedding`` to ``entry``; returns its output (images, or the checked vector)."""
    if entry in runtimes:
        return runtimes[entry](embedding)
    if entry == "serving ServingClient.reconstruct":
        client = _RecordingClient()
        client.reconstruct(embedding)
        return client.sent[0][1]["embedding"]
    if entry == "tflite int8 calibration vectors":
        return tflite.check_calibration_embeddings(_calibration_rows(embedding), D)
    metadata = savedmodel.read_metadata(smoke_export.path)
    if entry == "inputs.check_vector":
        return inputs.check_vector(embedding, metadata)
    path = folder / "template.npy"
    np.save(path, embedding, allow_pickle=True)
    return inputs.load_vector(path, metadata)


def _reference(entry, embedding, runtimes, smoke_export, folder):
    """What ``entry`` gives for the float32 cast of an accepted input."""
    if entry == "tflite int8 calibration vectors":
        embedding = _calibration_rows(embedding)
    cast = np.asarray(embedding, np.float32)
    if entry in runtimes or entry == "serving ServingClient.reconstruct":
        cast = cast.reshape(-1, D)
    return _call(entry, cast, runtimes, smoke_export, folder)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("entry", list(EXPECTED))
def test_every_entry_point_names_every_bad_kind(entry, kind, runtimes, smoke_export,
                                                tmp_path):
    error_class, table = EXPECTED[entry]
    expected = table[kind]
    embedding = KINDS[kind]
    if expected == SKIP:
        pytest.skip(f"{entry} has no {kind} input (see EXPECTED)")
    if expected == SENT:
        sent = _call(entry, embedding, runtimes, smoke_export, tmp_path)
        np.testing.assert_array_equal(sent, embedding)
        return
    if expected == OK:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # an accepted cast must not warn (e.g. complex)
            result = _call(entry, embedding, runtimes, smoke_export, tmp_path)
        reference = _reference(entry, embedding, runtimes, smoke_export, tmp_path)
        assert result.dtype == reference.dtype and result.dtype in (np.uint8, np.float32)
        np.testing.assert_array_equal(result, reference)
        if result.dtype == np.uint8 and kind not in ("int32", "float16"):  # same direction
            unit_image = _call(entry, _unit_rows(1, seed=0), runtimes, smoke_export, tmp_path)
            assert _levels(result, unit_image) <= 1
        return
    with pytest.raises(error_class) as raised:
        _call(entry, embedding, runtimes, smoke_export, tmp_path)
    message = raised.value.message if isinstance(raised.value, tf.errors.OpError) \
        else str(raised.value)
    assert expected in message, f"{entry} / {kind}: {message}"


# --- Generated inputs: every runtime, every non-finite value, every wrong width, every scale.

NUMPY_ENTRIES = ["tflite TFLiteGenerator", "onnx OnnxGenerator",
                 "serving ServingClient.reconstruct", "inputs.check_vector"]
RUNTIMES = ["savedmodel serving_default", "savedmodel sample", "tflite TFLiteGenerator",
            "onnx OnnxGenerator"]


@st.composite
def _with_non_finite(draw, max_rows=4):
    """float32 [B, D] of finite unit-scale values with NaN/+Inf/-Inf planted at >= 1 place."""
    rows = draw(st.integers(1, max_rows))
    values = draw(hnp.arrays(np.float32, (rows, D),
                             elements=st.floats(-4, 4, width=32, allow_subnormal=False)))
    values[:, 0] = 1.0  # no accidental all-zero row: only the planted values are bad
    places = draw(st.lists(st.tuples(st.integers(0, rows - 1), st.integers(0, D - 1),
                                     st.sampled_from([np.nan, np.inf, -np.inf])),
                           min_size=1, max_size=6))
    for row, column, value in places:
        values[row, column] = value
    return values, sorted({row for row, _, _ in places})


@pytest.mark.parametrize("entry", list(dict.fromkeys(RUNTIMES + NUMPY_ENTRIES)))
@SETTINGS
@given(case=_with_non_finite())
def test_any_non_finite_value_is_refused(entry, case, runtimes, smoke_export):
    values, bad_rows = case
    if entry == "inputs.check_vector":
        values, bad_rows = values[bad_rows[0]:bad_rows[0] + 1], [0]
    error_class, _ = EXPECTED[entry]
    with pytest.raises(error_class) as raised:
        _call(entry, values, runtimes, smoke_export, None)
    message = getattr(raised.value, "message", str(raised.value))
    if entry in RUNTIMES[:2]:
        assert "embedding contains NaN or Inf" in message
    else:
        assert f"contains NaN or Inf (as float32) in row(s) {bad_rows[:10]}" in message


@pytest.mark.parametrize("entry", RUNTIMES + ["inputs.check_vector"])
@SETTINGS
@given(width=st.integers(1, 3 * D).filter(lambda width: width != D),
       rows=st.integers(1, 3))
def test_any_wrong_width_is_refused(entry, width, rows, runtimes, smoke_export):
    values = _unit_rows(1 if entry == "inputs.check_vector" else rows, dim=width)
    error_class, _ = EXPECTED[entry]
    with pytest.raises(error_class) as raised:
        _call(entry, values, runtimes, smoke_export, None)
    message = getattr(raised.value, "message", str(raised.value))
    expected = {"inputs.check_vector": f"vector has {width} values but this model inverts",
                "tflite TFLiteGenerator": f"has {width} columns; this model's engine dimension",
                "onnx OnnxGenerator": f"has {width} columns; this model's engine dimension"}
    assert expected.get(entry, "must be float32[batch, 128]; got shape") in message


def _log_uniform(low, high):
    return st.floats(np.log10(low), np.log10(high)).map(lambda exponent: 10.0 ** exponent)


# Added to two fixed unit rows: any direction near them, with drawn outliers and zeros.
_OFFSETS = hnp.arrays(np.float32, (2, D), elements=st.floats(-1, 1, width=32))


@pytest.mark.parametrize("entry", RUNTIMES)
@SETTINGS
@given(offsets=_OFFSETS, scales=st.tuples(*[_log_uniform(MIN_EMBEDDING_NORM,
                                                               MAX_EMBEDDING_NORM)] * 2),
       dtype=st.sampled_from([np.float32, np.float64]))
def test_any_row_in_the_norm_range_gives_the_face_of_its_direction(entry, offsets, scales,
                                                                   dtype, runtimes):
    """The range is wide enough to be safe, not looser: inside it, every runtime gives the
    image of the unit row, whatever the scale (and float64 is cast)."""
    directions = _unit_rows(2, seed=5) + offsets
    norms = np.linalg.norm(directions.astype(np.float64), axis=1, keepdims=True)
    assume(np.all(norms > 1e-3))
    unit = (directions / norms).astype(np.float32)
    scaled = unit.astype(np.float64) * np.asarray(scales)[:, None]
    if entry.startswith("savedmodel"):
        dtype = np.float32  # typed float32 signatures: the dtype cases are in EXPECTED
    images = runtimes[entry](scaled.astype(dtype))
    assert images.dtype == np.uint8 and images.shape == (2, SIZE, SIZE, 3)
    assert _levels(images, runtimes[entry](unit)) <= 1


_OUT_OF_RANGE_NORMS = st.one_of(_log_uniform(1e-30, MIN_EMBEDDING_NORM / 1.01),
                                _log_uniform(MAX_EMBEDDING_NORM * 1.01, 1e38))


@pytest.mark.parametrize("entry", NUMPY_ENTRIES)
@SETTINGS
@given(norm=_OUT_OF_RANGE_NORMS, row=st.integers(0, 2))
def test_any_row_outside_the_norm_range_is_refused(entry, norm, row, runtimes, smoke_export):
    values = _unit_rows(3, seed=1)
    values[row] = (values[row].astype(np.float64) * norm).astype(np.float32)
    if entry == "inputs.check_vector":
        values, row = values[row:row + 1], 0
    error_class, _ = EXPECTED[entry]
    with pytest.raises(error_class, match=rf"row\(s\) \[{row}\] have L2 norm .* outside "
                                          r"\[1e-05, 1e\+18\]"):
        _call(entry, values, runtimes, smoke_export, None)


def _unchecked(entry, runtimes):
    """The runtime itself, without the runner's Python checks."""
    if entry.startswith("tflite"):
        runner = Interpreter(model_path=str(runtimes[entry].path)).get_signature_runner(
            "serving_default")
        return lambda embedding: runner(embedding=embedding)["image"]
    if entry.startswith("onnx"):
        session = onnxruntime.InferenceSession(str(runtimes[entry].path),
                                               providers=["CPUExecutionProvider"])
        return lambda embedding: session.run(["image"], {"embedding": embedding})[0]
    raise ValueError(f"no unchecked form of {entry}")


@pytest.mark.parametrize("entry", ["tflite TFLiteGenerator", "onnx OnnxGenerator"])
def test_rows_outside_the_range_would_give_a_face_of_no_identity(entry, runtimes):
    """Why the range exists: unchecked, such rows give another face, with no error."""
    run = _unchecked(entry, runtimes)
    unit = _unit_rows(1, seed=2)
    reference = run(unit)
    assert _levels(run((1e20 * unit).astype(np.float32)), reference) > 50
    if entry.startswith("tflite"):  # its fused L2_NORMALIZATION floors the squared norm
        assert _levels(run((1e-7 * unit).astype(np.float32)), reference) > 50
    else:
        assert _levels(run((1e-7 * unit).astype(np.float32)), reference) <= 1


def test_the_savedmodel_refuses_rows_outside_the_norm_range(runtimes):
    unit = _unit_rows(1, seed=2)
    for scale in (1e-14, 1e20):
        with pytest.raises(tf.errors.InvalidArgumentError, match="outside"):
            runtimes["savedmodel serving_default"]((scale * unit).astype(np.float32))


def test_the_loaded_signature_casts_numpy_arrays_itself(signatures):
    """TensorFlow's behaviour, not ours: a loaded signature given a numpy array (not a tensor)
    converts it to its declared float32 before the graph runs, so bool becomes 0/1 and complex
    loses its imaginary part with only a ComplexWarning. Tensors of another dtype are refused
    (``EXPECTED``); Python callers who want the checks use the runners, the client or
    ``inputs.check_vector``."""
    serve = signatures["serving_default"]
    ones = serve(embedding=tf.ones([1, D]))["image"].numpy()
    np.testing.assert_array_equal(serve(embedding=np.ones((1, D), bool))["image"].numpy(), ones)
    with pytest.warns(np.exceptions.ComplexWarning):
        image = serve(embedding=np.full((1, D), 1 + 5j))["image"].numpy()
    np.testing.assert_array_equal(image, ones)


def test_sample_noise_is_checked_like_an_embedding_but_may_be_zero(runtimes, signatures):
    signature = signatures["sample"]
    embedding = tf.constant(_unit_rows(1))
    zero = signature(embedding=embedding, noise=tf.zeros([1, Z]))["image"].numpy()
    np.testing.assert_array_equal(zero, runtimes["savedmodel serving_default"](
        embedding.numpy()))
    for noise, message in [(np.full((1, Z), np.inf, np.float32), "noise contains NaN or Inf"),
                           (np.full((1, Z), -np.inf, np.float32), "noise contains NaN or Inf"),
                           (np.ones((1, Z + 1), np.float32), "noise (noise dimension Z) must "
                                                             "be float32[batch, 8]"),
                           (np.ones((1, Z)), _TF_DTYPE.format("double"))]:
        with pytest.raises(tf.errors.InvalidArgumentError) as raised:
            signature(embedding=embedding, noise=tf.constant(noise))
        assert message in raised.value.message
    client = _RecordingClient()
    for noise, message in [(np.full((1, Z), np.nan), r"noise contains NaN or Inf \(as float32\)"),
                           (np.ones((1, Z), complex), "noise must be real numbers"),
                           (np.ones((2, Z)), "noise has 2 rows but embedding has 1")]:
        with pytest.raises(ValueError, match=message):
            client.sample(embedding.numpy(), noise)
    client.sample(embedding.numpy(), np.zeros(Z))  # zero noise is the serving_default face
    assert client.sent[0][1]["noise"].dtype == np.float32 and not client.sent[0][1]["noise"].any()


# --- The serving client knows no D: what it refuses locally without one.

@pytest.mark.parametrize("embedding, message", [
    (np.zeros((3, 0), np.float32), "embedding has no columns"),
    (np.zeros(0), "embedding has no columns"),
    ([], "embedding has no columns"),
    ([[1.0] * D, [1.0] * (D - 1)], "rectangular array of numbers"),
])
def test_the_client_refuses_vectors_without_values(embedding, message):
    client = _RecordingClient()
    with pytest.raises(ValueError, match=message):
        client.reconstruct(embedding)
    assert client.sent == []


# --- The engine API: whatever a (user) engine's _embed returns is checked by the base class.

ENGINE_DIM = 4


class _ScriptedEngine(Engine):
    """An engine whose ``_embed`` returns ``output`` (or ``output(images)``) as it is."""

    name = "scripted"
    dim = ENGINE_DIM
    input_size = 8

    def __init__(self, output):
        self.output = output

    def _embed(self, images):
        return self.output(images) if callable(self.output) else self.output


def _faces(count=2):
    return np.full((count, 8, 8, 3), 100, np.uint8)


def _two_rows(**planted):
    rows = np.array([[0.5, -1.0, 2.0, 0.25], [1.0, 2.0, -3.0, 4.0]], np.float32)
    for position, value in planted.items():
        row, column = (int(index) for index in position[1:].split("_"))
        rows[row, column] = value
    return rows


@pytest.mark.parametrize("output, message", [
    (np.ones((2, 5), np.float32), "returned shape (2, 5), expected (2, 4)"),
    (np.ones((1, 4), np.float32), "returned shape (1, 4), expected (2, 4)"),
    (np.ones((0, 4), np.float32), "returned shape (0, 4), expected (2, 4)"),
    (np.ones(4, np.float32), "returned shape (4,), expected (2, 4)"),
    (np.ones((2, 1, 4), np.float32), "returned shape (2, 1, 4), expected (2, 4)"),
    (None, "returned NoneType of dtype object, expected real numbers float32[N, 4]"),
    (np.ones((2, 4), bool), "returned ndarray of dtype bool, expected real numbers"),
    (np.ones((2, 4), np.complex64), "returned ndarray of dtype complex64"),
    (np.array([["0.5"] * 4] * 2), "returned ndarray of dtype <U3"),
    ([[0.5, 1.0, None, 1.0]] * 2, "returned list of dtype object"),
    (_two_rows(r1_2=np.nan), "'scripted' output has NaN or inf in rows [1]"),
    (_two_rows(r0_0=np.inf), "has NaN or inf in rows [0]"),
    (_two_rows(r1_3=-np.inf), "has NaN or inf in rows [1]"),
    (np.stack([np.ones(4), np.zeros(4)]).astype(np.float32), "all-zero rows [1]; they cannot"),
])
def test_an_engine_returning_bad_vectors_is_an_engine_error(output, message):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # caught by name, not by a cast that warns
        with pytest.raises(EngineError) as raised:
            _ScriptedEngine(output).embed(_faces())
    assert message in str(raised.value)


@pytest.mark.parametrize("images, message", [
    ([[[[0, 0, 0]]]], "images must be a numpy array, got list"),
    (np.zeros((2, 8, 8, 3), np.float32), "images must be uint8 RGB aligned crops, got dtype "
                                         "float32"),
    (np.full((2, 8, 8, 3), np.nan), "got dtype float64"),
    (np.zeros((0, 8, 8, 3), np.uint8), "images is an empty batch (N = 0)"),
    (np.zeros((8, 8, 3), np.uint8), "images must have shape [N, H, W, 3], got (8, 8, 3)"),
    (np.zeros((2, 8, 8, 4), np.uint8), "got (2, 8, 8, 4)"),
])
def test_an_engine_given_bad_images_is_an_engine_error(images, message):
    engine = _ScriptedEngine(lambda batch: pytest.fail("bad images reached _embed"))
    with pytest.raises(EngineError) as raised:
        engine.embed(images)
    assert message in str(raised.value)


@SETTINGS
@given(output=hnp.arrays(st.sampled_from([np.float16, np.float32, np.float64, np.int8,
                                          np.int64, np.uint8]),
                         (2, ENGINE_DIM), elements={"allow_nan": False,
                                                    "allow_infinity": False}))
def test_any_finite_non_zero_engine_output_becomes_unit_rows_of_its_direction(output):
    """Any real dtype and any scale, subnormal to float64's largest: unit float32 rows."""
    assume(np.all(np.any(output != 0, axis=1)))
    vectors = _ScriptedEngine(output).embed(_faces())
    assert vectors.dtype == np.float32 and vectors.shape == (2, ENGINE_DIM)
    np.testing.assert_allclose(np.linalg.norm(vectors.astype(np.float64), axis=1), 1, atol=1e-6)
    exact = output.astype(np.float64)
    exact /= np.max(np.abs(exact), axis=1, keepdims=True)
    exact /= np.linalg.norm(exact, axis=1, keepdims=True)
    np.testing.assert_allclose(vectors, exact, atol=1e-6)


@SETTINGS
@given(output=hnp.arrays(st.sampled_from([np.float32, np.float64]), (2, ENGINE_DIM),
                         elements={"allow_nan": False, "allow_infinity": False}),
       places=st.lists(st.tuples(st.integers(0, 1), st.integers(0, ENGINE_DIM - 1),
                                 st.sampled_from([np.nan, np.inf, -np.inf])),
                       min_size=1, max_size=4))
def test_any_engine_output_with_a_non_finite_value_is_an_engine_error(output, places):
    for row, column, value in places:
        output[row, column] = value
    bad_rows = sorted({row for row, _, _ in places})
    with pytest.raises(EngineError, match=re.escape(f"has NaN or inf in rows {bad_rows}")):
        _ScriptedEngine(output).embed(_faces())


# --- vec2face-invert's files: .npy never unpickles nor allocates what a header claims; .json.

class _TouchesWhenUnpickled:
    """Unpickling this opens (creates) ``marker``: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _pickle_npy(folder):
    marker = folder / "unpickled.txt"
    path = folder / "template.npy"
    np.save(path, np.array([_TouchesWhenUnpickled(marker)] * D, dtype=object),
            allow_pickle=True)
    assert not marker.exists()
    return path, marker


def test_an_npy_of_objects_is_refused_without_unpickling(smoke_export, tmp_path):
    path, marker = _pickle_npy(tmp_path)
    np.load(path, allow_pickle=True)[0].close()
    assert marker.exists()  # the payload works: loading with pickle runs it
    marker.unlink()
    with pytest.raises(InvertError, match=r"holds Python objects \(dtype object\), not numbers; "
                                          "it is refused without unpickling"):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)
    assert not marker.exists() and not (tmp_path / "out").exists()


@pytest.mark.parametrize("shape, message", [
    ((10 ** 12,), "vector has 1000000000000 values but this model inverts dlib vectors"),
    ((1, 10 ** 12), "vector has 1000000000000 values"),
    ((10 ** 6, D), "holds 1000000 vectors; invert one template at a time"),
])
def test_a_forged_npy_header_allocates_nothing(smoke_export, tmp_path, shape, message):
    """``np.load`` would ask for 3.6 TiB for the first (a MemoryError, not an InvertError)."""
    path = tmp_path / "forged.npy"
    with path.open("wb") as file:
        np.lib.format.write_array_header_1_0(file, {"descr": "<f4", "fortran_order": False,
                                                    "shape": shape})
        file.write(np.ones(D, np.float32).tobytes())
    with pytest.raises(InvertError, match=message):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)


@pytest.mark.parametrize("content, message", [
    (b"\x93NUMPY\x03\x00", "is a .npy file of format version 3.0; save the vector with np.save"),
    (b"PK\x03\x04rest of a zip", "is an .npz archive, not a single .npy array"),
    (b"", "cannot read"),
    (b"just text", "cannot read"),
])
def test_broken_npy_files_are_named(smoke_export, tmp_path, content, message):
    path = tmp_path / "broken.npy"
    path.write_bytes(content)
    with pytest.raises(InvertError, match=message):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)


def test_a_truncated_npy_is_named(smoke_export, tmp_path):
    path = tmp_path / "truncated.npy"
    np.save(path, _unit_rows(1)[0])
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(InvertError, match=f"cannot read {path} as a .npy array"):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)


@pytest.mark.parametrize("text, message", [
    ("[" + ", ".join(["1.0"] * (D - 1)) + ", null]", "must hold only numbers, found None"),
    ("[" + ", ".join(["1.0"] * (D - 1)) + ", NaN]", r"NaN or Inf \(as float32\) in row\(s\) \[0\]"),
    ("[" + ", ".join(["1.0"] * (D - 1)) + ", -Infinity]", r"NaN or Inf \(as float32\)"),
    ("[" + ", ".join(["1.0"] * (D - 1)) + ", 1" + "0" * 400 + "]",
     "holds an integer too large for a float"),
    ("[" + ", ".join(["0"] * D) + "]", r"all-zero row\(s\) \[0\]"),
    ("[" + ", ".join(["1e-9"] * D) + "]", r"have L2 norm 1.13e-08, outside \[1e-05, 1e\+18\]"),
    ("[]", "vector has 0 values but this model inverts dlib vectors of D=128"),
    ("[[], []]", "holds 2 vectors; invert one template at a time"),
    ("[[1.0, 2.0], [1.0]]", "the embedding rows have different lengths"),
    ("[[[1.0]]]", r"must hold only numbers, found \[1.0\]"),
    ('{"embedding": "0.1 0.2"}', "the embedding must be a JSON list of numbers, got str"),
    ('{"embedding": [1.0], "engine": 7}', "\"engine\" must be an engine name, got 7"),
    ("[1.0,", "cannot read .* as JSON"),
])
def test_bad_json_templates_are_named(smoke_export, tmp_path, text, message):
    path = tmp_path / "template.json"
    path.write_text(text)
    with pytest.raises(InvertError, match=message):
        invert.invert(smoke_export.path, tmp_path / "out", vector=path)
    assert not (tmp_path / "out").exists()


def test_invert_takes_a_template_file_not_an_array(smoke_export, tmp_path):
    with pytest.raises(InvertError, match="vector must be the path of a .npy or .json "
                                          "template, got ndarray; np.save an array"):
        invert.invert(smoke_export.path, tmp_path / "out", vector=_unit_rows(1)[0])


def test_a_float64_npy_is_cast_like_every_runtime_casts_it(smoke_export, tmp_path):
    """End to end: the float64 template inverts to the face of its float32 cast."""
    template = 3.0 * _unit_rows(1, seed=4)[0].astype(np.float64) + 1e-9
    np.save(tmp_path / "template.npy", template)
    invert.invert(smoke_export.path, tmp_path / "out", vector=tmp_path / "template.npy")
    from PIL import Image

    written = np.asarray(Image.open(tmp_path / "out" / "reconstruction.png"))
    signature = tf.saved_model.load(str(smoke_export.path)).signatures["serving_default"]
    expected = signature(embedding=tf.constant(template[None].astype(np.float32)))["image"]
    np.testing.assert_array_equal(written, expected.numpy()[0])


def test_the_binary_refuses_a_pickle_npy_without_running_it(smoke_export, tmp_path):
    path, marker = _pickle_npy(tmp_path)
    done = subprocess.run([sys.executable, str(REPO_ROOT / "train" / "invert.py"),
                           f"--model={smoke_export.path}", f"--out={tmp_path / 'out'}",
                           f"--vector={path}"],
                          capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"error: {path} holds Python objects (dtype object), not numbers; it is refused "
        "without unpickling")
    assert not marker.exists() and not (tmp_path / "out").exists()
