import keras
import pytest


@pytest.fixture
def mixed_precision():
    """Runs a test under the mixed_float16 global policy, and restores float32 after it."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")
