import numpy as np
import pytest

from vec2face_tf.data.pipeline import Faces
from vec2face_tf.engines.base import Engine
from vec2face_tf.evaluation import reconstruction

DIM = 8


class IndexEngine(Engine):
    """Reads a face index written into the image's first pixel and returns its vector."""

    name, dim, input_size = "index", DIM, 16

    def __init__(self, vectors):
        self.vectors = vectors

    def _embed(self, images):
        return self.vectors[images[:, 0, 0, 0].astype(int)]


def _faces(vectors, labels):
    count = len(labels)
    return Faces(crops=np.zeros((count, 16, 16, 3), np.uint8), embeddings=vectors,
                 labels=np.asarray(labels, np.int32),
                 identity_names=np.array([f"p{i}" for i in range(max(labels) + 1)]),
                 hashes=np.array([f"h{i}" for i in range(count)]))


@pytest.fixture
def world():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((30, DIM))
    vectors = np.repeat(centres, 4, axis=0) + 0.3 * rng.standard_normal((120, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    labels = np.repeat(np.arange(30), 4)
    probes = _faces(vectors[:40], labels[:40])  # identities 0-9
    gallery = _faces(vectors[40:], labels[40:] - 10)  # identities 10-29
    return vectors, probes, gallery, _faces(vectors, labels)


def test_perfect_reconstruction_passes_every_type1_threshold(world):
    vectors, probes, gallery, everyone = world

    def perfect_generator(inputs, training=False):
        # Each probe's image carries its own index, so the engine returns exactly x.
        index = [int(np.argmax(vectors[:40] @ x)) for x in np.asarray(inputs[0])]
        images = np.full((len(index), 16, 16, 3), -1.0, np.float32)
        images[:, 0, 0, 0] = np.array(index) / 127.5 - 1.0
        return images

    report = reconstruction.evaluate_reconstructions(
        perfect_generator, IndexEngine(vectors), probes, gallery, everyone, noise_dim=4)
    assert report["thresholds"].keys() == {"0.01"}  # 6,960 impostor pairs support only 1e-2
    attack = report["reconstruction"]
    assert attack["mean_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert attack["sar_type1@0.01"] == 1.0
    assert attack["type1_pairs"] == 40 and attack["type2_pairs"] == 40 * 3
    # The nearest neighbour comes from other identities: it cannot match as often.
    nn = report["nearest_neighbour"]
    assert nn["mean_cosine"] < attack["mean_cosine"]
    expected = np.max(probes.embeddings @ gallery.embeddings.T, axis=1).mean()
    assert nn["mean_cosine"] == pytest.approx(expected, abs=1e-6)
    assert report["images"].dtype == np.uint8 and report["vectors"].shape == (40, DIM)


def test_from_uint8_is_the_inverse_of_to_uint8():
    from vec2face_tf.evaluation.reconstruction import from_uint8, to_uint8

    pixels = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    images = from_uint8(pixels)
    assert images.dtype == np.float32 and images.min() == -1.0 and images.max() == 1.0
    np.testing.assert_array_equal(to_uint8(images), pixels)
