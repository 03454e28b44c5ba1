import numpy as np
import pytest

from vec2face_tf.models.centering import CenteredUnitNormalization


def _unit(rows):
    return rows / np.linalg.norm(rows, axis=-1, keepdims=True)


def test_zero_center_is_plain_unit_normalisation():
    rows = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32) * 3.0
    layer = CenteredUnitNormalization()
    np.testing.assert_allclose(layer(rows), _unit(rows), atol=1e-6)


def test_center_is_removed_from_the_unit_vector():
    layer = CenteredUnitNormalization()
    layer.build((None, 2))
    layer.set_center(np.array([0.8, 0.0], np.float32))
    # unit([3, 4]) = [0.6, 0.8]; minus the centre [0.8, 0] -> [-0.2, 0.8].
    expected = np.array([[-0.2, 0.8]]) / np.hypot(0.2, 0.8)
    np.testing.assert_allclose(layer(np.array([[3.0, 4.0]], np.float32)), expected, atol=1e-6)


def test_centering_spreads_similar_vectors_apart():
    rng = np.random.default_rng(1)
    mean = _unit(rng.standard_normal(16))
    rows = _unit(mean + 0.1 * rng.standard_normal((50, 16))).astype(np.float32)
    layer = CenteredUnitNormalization()
    layer.build((None, 16))
    layer.set_center(rows.mean(axis=0))
    cosines_before = (rows @ rows.T)[np.triu_indices(50, 1)]
    centred = np.asarray(layer(rows))
    cosines_after = (centred @ centred.T)[np.triu_indices(50, 1)]
    assert cosines_before.mean() > 0.8 and abs(cosines_after.mean()) < 0.1


def test_zero_row_gives_zeros_not_nan():
    layer = CenteredUnitNormalization()
    assert np.all(np.asarray(layer(np.zeros((2, 3), np.float32))) == 0)


def test_center_is_a_saved_non_trainable_weight_and_config_round_trips():
    layer = CenteredUnitNormalization(epsilon=1e-9, name="norm")
    layer.build((None, 3))
    assert layer.trainable_weights == [] and [w.name for w in layer.weights] == ["center"]
    clone = CenteredUnitNormalization.from_config(layer.get_config())
    assert clone.epsilon == 1e-9 and clone.name == "norm"
    with pytest.raises(ValueError, match=r"center must have shape \(3,\)"):
        layer.set_center(np.zeros(4))
