"""The ONNX export: contract names and types, parity with the SavedModel, the Python checks."""

import json

import numpy as np
import onnx
import onnxruntime
import pytest
import tensorflow as tf

from vec2face_tf.export import onnx as onnx_export
from vec2face_tf.export import savedmodel

D, SIZE = 128, 32
FLOAT_TOLERANCE = 1e-4
# A uint8 pixel may differ by one level only where the float image sits this close to a
# rounding boundary k + 0.5 in level units: the float tolerance, scaled by 127.5 levels per 1.
BOUNDARY_LEVELS = FLOAT_TOLERANCE * 127.5


@pytest.fixture(scope="module")
def written(smoke_export, tmp_path_factory):
    """``write_onnx`` of the smoke export: the one conversion of the uint8 contract model."""
    base = tmp_path_factory.mktemp("onnx_base")
    out_dir = savedmodel.format_dir(base, "smoke", "onnx", smoke_export.version)
    return onnx_export.write_onnx(smoke_export.path, out_dir)


@pytest.fixture(scope="module")
def model(written):
    return onnx.load(str(written))


@pytest.fixture(scope="module")
def session(written):
    return onnxruntime.InferenceSession(str(written), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def generator(written):
    return onnx_export.OnnxGenerator(written)


@pytest.fixture(scope="module")
def loaded(smoke_export):
    return tf.saved_model.load(str(smoke_export.path))


@pytest.fixture(scope="module")
def float_pair(float_export):
    """The float-output export as a loaded SavedModel signature and the ONNX session converted
    from it by ``convert``."""
    path = float_export
    model = onnx_export.convert(path)
    float_session = onnxruntime.InferenceSession(model.SerializeToString(),
                                                 providers=["CPUExecutionProvider"])
    signature = tf.saved_model.load(str(path)).signatures[savedmodel.SERVING_SIGNATURE]

    def run_tf(embedding):
        return signature(embedding=tf.constant(embedding))["image"].numpy()

    def run_onnx(embedding):
        return float_session.run(["image"], {"embedding": embedding})[0]

    return run_tf, run_onnx


def _unit_rows(count, seed):
    rows = np.random.default_rng(seed).standard_normal((count, D)).astype(np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _serve(loaded, embedding):
    return loaded.signatures["serving_default"](embedding=tf.constant(embedding))["image"].numpy()


@pytest.fixture(params=["random", "real_faces"])
def embeddings(request):
    if request.param == "random":
        return _unit_rows(64, seed=11)
    return request.getfixturevalue("real_faces").embeddings


def test_model_passes_the_checker_with_the_contract_names_and_types(model, smoke_export):
    onnx.checker.check_model(model, full_check=True)
    default_opset = {o.domain: o.version for o in model.opset_import}[""]
    assert default_opset == 17
    (embedding,), (image,) = model.graph.input, model.graph.output
    assert (embedding.name, image.name) == ("embedding", "image")
    assert embedding.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert image.type.tensor_type.elem_type == onnx.TensorProto.UINT8
    in_dims = embedding.type.tensor_type.shape.dim
    out_dims = image.type.tensor_type.shape.dim
    assert [d.dim_value for d in in_dims[1:]] == [D]
    assert [d.dim_value for d in out_dims[1:]] == [SIZE, SIZE, 3]
    # Batch is symbolic (dynamic) and one symbol on both sides.
    assert not in_dims[0].HasField("dim_value") and in_dims[0].dim_param == "batch"
    assert out_dims[0].dim_param == "batch"
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["vec2face.json"]) == savedmodel.read_metadata(smoke_export.path)
    assert "embedding float32[batch, 128]" in model.doc_string


def test_tf2onnx_drops_the_in_graph_checks(model):
    op_types = {node.op_type for node in model.graph.node}
    assert not op_types & {"Assert", "If", "CheckNumerics", "Identity"}
    assert {"Conv", "Tanh", "Round", "Cast"} <= op_types


def test_float_output_matches_the_savedmodel_to_1e_4(float_pair, embeddings):
    run_tf, run_onnx = float_pair
    expected, got = run_tf(embeddings), run_onnx(embeddings)
    assert got.shape == (len(embeddings), SIZE, SIZE, 3) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= FLOAT_TOLERANCE
    assert expected.std() > 0.05  # a real image, not a flat one that matches trivially


def test_uint8_output_differs_only_at_rounding_boundaries(generator, loaded, float_pair,
                                                          embeddings):
    run_tf, _ = float_pair
    expected, got = _serve(loaded, embeddings), generator(embeddings)
    assert got.dtype == np.uint8 and got.shape == expected.shape
    diff = np.abs(got.astype(int) - expected.astype(int))
    assert diff.max() <= 1
    assert (diff > 0).mean() <= 1e-3
    levels = (run_tf(embeddings) + 1.0) * 127.5
    distance_to_boundary = np.abs(levels - np.floor(levels) - 0.5)
    assert (distance_to_boundary[diff > 0] <= BOUNDARY_LEVELS).all()


@pytest.mark.parametrize("batch", [1, 7])
def test_batches_work_row_by_row(generator, loaded, batch):
    embedding = _unit_rows(batch, seed=batch)
    images = generator(embedding)
    assert images.shape == (batch, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert np.abs(images.astype(int) - _serve(loaded, embedding).astype(int)).max() <= 1
    np.testing.assert_array_equal(generator(embedding[-1:]), images[-1:])
    assert len(np.unique(images)) > 20


def test_raw_features_are_normalised_inside(generator):
    embedding = _unit_rows(2, seed=3)
    diff = generator(embedding).astype(int) - generator(7.5 * embedding).astype(int)
    assert np.abs(diff).max() <= 1


@pytest.mark.parametrize("embedding, message", [
    (np.ones((2, 64), np.float32), r"has 64 columns; this model's engine dimension D is 128"),
    (np.ones((D,), np.float32), r"float32\[batch, 128\], got shape \(128,\)"),
    (np.ones((2, 1, D), np.float32), r"got shape \(2, 1, 128\)"),
    (np.zeros((0, D), np.float32), "batch is empty"),
    (np.stack([np.ones(D), np.full(D, np.nan)]).astype(np.float32),
     r"NaN or Inf \(as float32\) in row\(s\) \[1\]"),
    (np.full((1, D), np.inf, np.float32), r"NaN or Inf \(as float32\) in row\(s\) \[0\]"),
    (np.full((1, D), 1e300), r"NaN or Inf"),  # finite float64, Inf as float32
    (np.stack([np.zeros(D), np.ones(D)]).astype(np.float32), r"all-zero row\(s\) \[0\]"),
    (np.array([["a"] * D]), "real numbers"),
])
def test_generator_rejects_bad_embeddings(generator, embedding, message):
    with pytest.raises(ValueError, match=message):
        generator(embedding)


def test_generator_attributes_and_paths(generator, written, smoke_export):
    assert (generator.dim, generator.height, generator.width) == (D, SIZE, SIZE)
    assert generator.metadata == savedmodel.read_metadata(smoke_export.path)
    assert onnx_export.OnnxGenerator(written.parent).path == written
    with pytest.raises(FileNotFoundError, match="no ONNX generator"):
        onnx_export.OnnxGenerator(written.parent / "missing")


def test_raw_session_runs_what_the_savedmodel_rejects(session):
    """What onnxruntime itself does with the inputs the SavedModel's dropped asserts caught."""
    good = _unit_rows(1, seed=5)
    nan_first = np.concatenate([np.full((1, D), np.nan, np.float32), good])
    images = session.run(["image"], {"embedding": nan_first})[0]
    assert (images[0] == 0).all()  # NaN -> black image, no error
    np.testing.assert_array_equal(images[1:], session.run(["image"], {"embedding": good})[0])
    inf = session.run(["image"], {"embedding": np.full((1, D), np.inf, np.float32)})[0]
    assert (inf == 0).all()
    zero = session.run(["image"], {"embedding": np.zeros((1, D), np.float32)})[0]
    assert zero.shape == (1, SIZE, SIZE, 3)  # an all-zero row gives an image, no error
    empty = session.run(["image"], {"embedding": np.zeros((0, D), np.float32)})[0]
    assert empty.shape == (0, SIZE, SIZE, 3)
    # Rank and D are the only checks ORT keeps, from the declared input shape.
    with pytest.raises(onnxruntime.capi.onnxruntime_pybind11_state.InvalidArgument,
                       match="Got: 64 Expected: 128"):
        session.run(["image"], {"embedding": np.ones((1, 64), np.float32)})


def test_write_onnx_layout_and_metadata(written, smoke_export):
    out_dir = written.parent
    assert written.name == "generator.onnx"
    assert out_dir.parts[-3:] == ("smoke", "onnx", str(smoke_export.version))
    assert sorted(p.name for p in out_dir.iterdir()) == ["generator.onnx", "vec2face.json"]
    assert [p.name for p in out_dir.parent.iterdir()] == [out_dir.name]  # no staging left
    metadata = json.loads((out_dir / "vec2face.json").read_text())
    assert metadata.pop("onnx") == {
        "file": "generator.onnx", "opset": 17,
        "input": {"name": "embedding", "dtype": "float32", "shape": [None, D]},
        "output": {"name": "image", "dtype": "uint8", "shape": [None, SIZE, SIZE, 3]}}
    assert metadata == savedmodel.read_metadata(smoke_export.path)


def test_write_onnx_never_overwrites(written, smoke_export, tmp_path):
    stamp = written.stat().st_mtime_ns
    with pytest.raises(savedmodel.ExportError, match="never overwrites"):
        onnx_export.write_onnx(smoke_export.path, written.parent)
    assert written.stat().st_mtime_ns == stamp
    (tmp_path / "empty").mkdir()
    with pytest.raises(savedmodel.ExportError, match="never overwrites"):
        onnx_export.write_onnx(smoke_export.path, tmp_path / "empty")
    assert not any((tmp_path / "empty").iterdir())


@pytest.mark.parametrize("opset, message", [
    (16, "opset 16 is below 17"),
    (0, "opset 0 is below 17"),
    (19, r"opset 19 is newer than tf2onnx can write \(at most 18\)"),
    ("17", "must be an integer"),
])
def test_bad_opsets_are_rejected_before_converting(smoke_export, tmp_path, opset, message):
    with pytest.raises(savedmodel.ExportError, match=message):
        onnx_export.convert(smoke_export.path, opset=opset)
    with pytest.raises(savedmodel.ExportError, match=message):
        onnx_export.write_onnx(smoke_export.path, tmp_path / "onnx", opset=opset)
    assert not (tmp_path / "onnx").exists()


def test_convert_rejects_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(savedmodel.ExportError, match="no saved_model.pb"):
        onnx_export.convert(tmp_path)
