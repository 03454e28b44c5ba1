"""Fixtures of the evaluation tests."""

import numpy as np
import pytest

from vec2face_tf.engines import Engine, register_engine


class PixelProjectionEngine(Engine):
    """A stand-in engine that really differs from dlib: a fixed random projection of the
    centred pixels of a 16 px crop to 64 numbers."""

    name = "pixel_projection"
    dim = 64
    input_size = 16

    def __init__(self, argument=None):
        self.matrix = np.random.default_rng(5).standard_normal((16 * 16 * 3, 64))

    def _embed(self, images):
        return (images.reshape(len(images), -1) / 127.5 - 1.0) @ self.matrix


@pytest.fixture(scope="session")
def pixel_projection():
    """Registers engine ``pixel_projection`` (a second engine for transfer) and returns it."""
    register_engine("pixel_projection", PixelProjectionEngine)
    return PixelProjectionEngine
