"""The dlib engine: contract, golden values and verification accuracy on real faces."""

import time

import numpy as np
import pytest

from vec2face_tf.engines import EngineError, get_engine


@pytest.fixture(scope="module")
def engine():
    return get_engine("dlib")


def test_contract_attributes(engine):
    assert (engine.name, engine.dim, engine.input_size) == ("dlib", 128, 150)


def test_embeddings_are_unit_float32_rows(engine, astronaut_crop):
    batch = np.stack([astronaut_crop, astronaut_crop[:, ::-1]])
    vectors = engine.embed(batch)
    assert vectors.shape == (2, 128) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # The mirrored face is the same person: dlib's cosine for one person is well above 0.9.
    assert float(vectors[0] @ vectors[1]) > 0.95


def test_golden_astronaut_vector(engine, astronaut_crop):
    # dlib's raw descriptor (-0.0663, 0.0209, 0.0176, ...; norm 1.457) divided by its norm.
    vector = engine.embed(astronaut_crop[None])[0]
    np.testing.assert_allclose(vector[:5], [-0.04415, 0.01461, 0.01454, -0.04663, -0.10556],
                               atol=2e-4)


def test_same_image_gives_the_same_vector_alone_or_in_a_batch(engine, astronaut_crop):
    alone = engine.embed(astronaut_crop[None])
    noise = np.random.default_rng(0).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    batched = engine.embed(np.concatenate([noise, astronaut_crop[None]]))
    np.testing.assert_array_equal(alone[0], batched[3])


def test_other_sizes_are_resized_to_150(engine, astronaut_crop):
    import cv2

    small = cv2.resize(astronaut_crop, (64, 64), interpolation=cv2.INTER_AREA)
    vectors = engine.embed(np.stack([small]))
    reference = engine.embed(astronaut_crop[None])
    assert float(vectors[0] @ reference[0]) > 0.95


@pytest.mark.parametrize("bad, message", [
    (np.zeros((2, 150, 150, 3), np.float32), "uint8"),
    (np.zeros((150, 150, 3), np.uint8), r"\[N, H, W, 3\]"),
    (np.zeros((2, 150, 150, 1), np.uint8), r"\[N, H, W, 3\]"),
    (np.zeros((0, 150, 150, 3), np.uint8), "empty"),
])
def test_bad_input_is_an_engine_error(engine, bad, message):
    with pytest.raises(EngineError, match=message):
        engine.embed(bad)


def test_bad_specs_and_options():
    with pytest.raises(EngineError, match="unknown engine"):
        get_engine("nosuchkind")
    with pytest.raises(EngineError, match="takes no argument"):
        get_engine("dlib:resnet")
    with pytest.raises(EngineError, match="unknown option"):
        get_engine("dlib", input_size=112)
    with pytest.raises(EngineError, match="num_jitters"):
        get_engine("dlib", num_jitters=-1)


def test_embedding_runs_on_one_thread(engine, astronaut_crop):
    # dlib's CPU build must not compete with TF for the cores: CPU time ~= wall time.
    batch = np.repeat(astronaut_crop[None], 8, axis=0)
    wall, cpu = time.perf_counter(), time.process_time()
    engine.embed(batch)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    assert cpu < 1.3 * wall


def test_verification_accuracy_on_faces_dev(pair_set, dlib_pair_embeddings):
    embeddings, embed_seconds = dlib_pair_embeddings
    accuracy, threshold = pair_set.best_threshold(embeddings)
    genuine, impostor = int(pair_set.genuine.sum()), int((~pair_set.genuine).sum())
    print(f"\ndlib: {len(pair_set.crops)} crops, {genuine} genuine + {impostor} impostor pairs, "
          f"accuracy {accuracy:.4f} at cosine threshold {threshold:.4f}; "
          f"align {pair_set.align_seconds_per_image * 1000:.0f} ms/image, "
          f"embed {embed_seconds * 1000:.0f} ms/image")
    assert genuine >= 200 and impostor >= 200
    assert accuracy >= 0.95
    # DESIGN §4: different people still score ~0.83 on average with dlib.
    assert 0.85 < threshold < 0.97
