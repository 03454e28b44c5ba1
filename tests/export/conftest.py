import shutil

import pytest


@pytest.fixture(scope="session")
def float_export(smoke_run, smoke_export, tmp_path_factory):
    """``smoke_run``'s EMA generator exported with a float [-1, 1] image (before the uint8
    rounding of the contract), to measure conversion parity finer than one grey level."""
    import keras
    import tensorflow as tf

    from vec2face_tf.export import savedmodel

    ema, _ = savedmodel.load_run(smoke_run)
    archive = keras.export.ExportArchive()
    archive.track(ema)

    def serve(embedding):
        noise = tf.zeros([tf.shape(embedding)[0], ema.noise_dim], tf.float32)
        return {"image": ema([embedding, noise], training=False)}

    archive.add_endpoint(savedmodel.SERVING_SIGNATURE, serve, input_signature=[
        tf.TensorSpec([None, ema.embedding_dim], tf.float32, name="embedding")])
    path = tmp_path_factory.mktemp("float_export") / "1"
    archive.write_out(str(path), verbose=False)
    (path / "assets").mkdir(exist_ok=True)
    shutil.copy(smoke_export.path / "assets" / savedmodel.METADATA_FILE, path / "assets")
    return path
