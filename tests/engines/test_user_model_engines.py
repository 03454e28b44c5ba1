"""``savedmodel:<dir>`` and ``onnx:<file>`` engines on tiny models exported by the tests."""

import numpy as np
import pytest

from vec2face_tf.engines import EngineError, get_engine
from vec2face_tf.engines.base import l2_normalize_rows, resize_images

SIZE = 32
DIM = 16


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A tiny Keras embedder exported in every flavour the engines must read."""
    import keras
    import tensorflow as tf
    import tf2onnx

    keras.utils.set_random_seed(0)
    conv = keras.layers.Conv2D(8, 3, strides=2, activation="relu")
    pool = keras.layers.GlobalAveragePooling2D()
    dense = keras.layers.Dense(DIM)
    nhwc_in = keras.Input((SIZE, SIZE, 3))
    nhwc = keras.Model(nhwc_in, dense(pool(conv(nhwc_in))))
    # Same layers behind a transpose: an NCHW model with identical outputs.
    nchw_in = keras.Input((3, SIZE, SIZE))
    nchw = keras.Model(nchw_in, dense(pool(conv(keras.layers.Permute((2, 3, 1))(nchw_in)))))

    root = tmp_path_factory.mktemp("user_models")

    def export(name, spec, fn):
        archive = keras.export.ExportArchive()
        archive.track(nhwc)
        archive.add_endpoint(name="serving_default", fn=fn, input_signature=[spec])
        archive.write_out(str(root / name), verbose=False)
        return str(root / name)

    float_spec = tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32, name="images")
    paths = {
        "float": export("float", float_spec, lambda images: {"embedding": nhwc(images)}),
        "uint8": export("uint8", tf.TensorSpec([None, SIZE, SIZE, 3], tf.uint8, name="pixels"),
                        lambda pixels: {"embedding": nhwc(tf.cast(pixels, tf.float32) / 255)}),
        "dynamic": export("dynamic", tf.TensorSpec([None, None, None, 3], tf.float32,
                                                   name="images"),
                          lambda images: {"embedding": nhwc(images),
                                          "logits": nhwc(images)[:, :2]}),
    }
    for name, model, shape in [("nhwc", nhwc, [None, SIZE, SIZE, 3]),
                               ("nchw", nchw, [None, 3, SIZE, SIZE])]:
        paths[f"onnx_{name}"] = str(root / f"{name}.onnx")
        tf2onnx.convert.from_keras(model, opset=17, output_path=paths[f"onnx_{name}"],
                                   input_signature=[tf.TensorSpec(shape, tf.float32,
                                                                  name="images")])
    paths["garbage_onnx"] = str(root / "garbage.onnx")
    with open(paths["garbage_onnx"], "wb") as garbage:
        garbage.write(b"not an onnx model")

    def reference(images, scale=lambda x: x / 255.0):
        batch = scale(resize_images(images, SIZE).astype(np.float32))
        return l2_normalize_rows(np.asarray(nhwc(batch)))

    return paths, reference


ENGINES = {
    "savedmodel_float": lambda p: get_engine(f"savedmodel:{p['float']}"),
    "savedmodel_uint8": lambda p: get_engine(f"savedmodel:{p['uint8']}"),
    "savedmodel_dynamic": lambda p: get_engine(f"savedmodel:{p['dynamic']}", input_size=SIZE,
                                               output="embedding"),
    "onnx_nhwc": lambda p: get_engine(f"onnx:{p['onnx_nhwc']}", threads=1),
    "onnx_nchw": lambda p: get_engine(f"onnx:{p['onnx_nchw']}", threads=1),
}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine_and_reference(request, models):
    paths, reference = models
    return ENGINES[request.param](paths), reference


@pytest.fixture(scope="module")
def crops(astronaut_crop):
    noise = np.random.default_rng(1).integers(0, 256, (3, SIZE, SIZE, 3), dtype=np.uint8)
    return np.concatenate([resize_images(astronaut_crop[None], SIZE), noise])


def test_contract_and_values(engine_and_reference, crops):
    engine, reference = engine_and_reference
    assert (engine.dim, engine.input_size) == (DIM, SIZE)
    assert engine.name.split(":")[0] in ("savedmodel", "onnx")
    vectors = engine.embed(crops)
    assert vectors.shape == (len(crops), DIM) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The engine reads the same numbers as the Keras model on [0, 1] pixels.
    np.testing.assert_allclose(vectors, reference(crops), atol=2e-5)
    # One crop alone gives its row of the batch; kernels may block a batch of 4 differently
    # (CI measured 1.5e-8 apart), so to float32 rounding, not bit for bit.
    np.testing.assert_allclose(engine.embed(crops[:1])[0], vectors[0], rtol=0, atol=1e-6)


def test_crops_of_other_sizes_are_resized(engine_and_reference, astronaut_crop):
    engine, reference = engine_and_reference
    np.testing.assert_allclose(engine.embed(astronaut_crop[None]),
                               reference(astronaut_crop[None]), atol=2e-5)


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, SIZE, SIZE, 3), np.float32), "uint8"),
    (np.zeros((2, SIZE, SIZE), np.uint8), r"\[N, H, W, 3\]"),
    (np.zeros((0, SIZE, SIZE, 3), np.uint8), "empty"),
])
def test_bad_input_is_an_engine_error(engine_and_reference, bad, message):
    engine, _ = engine_and_reference
    with pytest.raises(EngineError, match=message):
        engine.embed(bad)


def test_defaults_follow_the_input_dtype(models):
    paths, _ = models
    assert get_engine(f"savedmodel:{paths['uint8']}").normalization == "uint8"
    assert get_engine(f"savedmodel:{paths['float']}").normalization == "zero_one"
    assert get_engine(f"onnx:{paths['onnx_nchw']}").layout == "NCHW"


@pytest.mark.parametrize("kind", ["float", "onnx_nhwc"])
def test_minus_one_one_normalization(models, crops, kind):
    paths, reference = models
    spec = f"savedmodel:{paths[kind]}" if kind == "float" else f"onnx:{paths[kind]}"
    engine = get_engine(spec, normalization="minus_one_one")
    np.testing.assert_allclose(engine.embed(crops),
                               reference(crops, scale=lambda x: x / 127.5 - 1), atol=2e-5)


def test_savedmodel_configuration_errors(models, tmp_path):
    paths, _ = models
    with pytest.raises(EngineError, match="not a SavedModel"):
        get_engine(f"savedmodel:{tmp_path}")
    with pytest.raises(EngineError, match="no fixed square input size"):
        get_engine(f"savedmodel:{paths['dynamic']}", output="embedding")
    with pytest.raises(EngineError, match=r"outputs \['embedding', 'logits'\]"):
        get_engine(f"savedmodel:{paths['dynamic']}", input_size=SIZE)
    with pytest.raises(EngineError, match="takes 32x32 input, but input_size=64"):
        get_engine(f"savedmodel:{paths['float']}", input_size=64)
    with pytest.raises(EngineError, match="must be 'uint8'"):
        get_engine(f"savedmodel:{paths['uint8']}", normalization="zero_one")
    with pytest.raises(EngineError, match="normalization must be one of"):
        get_engine(f"savedmodel:{paths['float']}", normalization="imagenet")
    with pytest.raises(EngineError, match="no signature 'embed'"):
        get_engine(f"savedmodel:{paths['float']}", signature="embed")
    with pytest.raises(EngineError, match="unknown option"):
        get_engine(f"savedmodel:{paths['float']}", layout="NCHW")
    with pytest.raises(EngineError, match="needs a directory"):
        get_engine("savedmodel")


def test_onnx_configuration_errors(models, tmp_path):
    paths, _ = models
    with pytest.raises(EngineError, match="does not exist"):
        get_engine(f"onnx:{tmp_path / 'missing.onnx'}")
    with pytest.raises(EngineError, match="cannot load ONNX model"):
        get_engine(f"onnx:{paths['garbage_onnx']}")
    with pytest.raises(EngineError, match="no 3-channel axis for layout NCHW"):
        get_engine(f"onnx:{paths['onnx_nhwc']}", layout="NCHW")
    with pytest.raises(EngineError, match="layout must be one of"):
        get_engine(f"onnx:{paths['onnx_nhwc']}", layout="CHW")
    with pytest.raises(EngineError, match="no output 'logits'"):
        get_engine(f"onnx:{paths['onnx_nhwc']}", output="logits")
    with pytest.raises(EngineError, match="needs a file"):
        get_engine("onnx")
