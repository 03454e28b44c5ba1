import numpy as np
import pytest

from vec2face_tf.evaluation import metrics


def test_pair_scores_golden():
    vectors = np.array([[1, 0], [1, 0], [0, 1], [0.6, 0.8]], np.float32)
    labels = np.array([0, 0, 1, 1])
    genuine, impostor = metrics.pair_scores(vectors, labels, block=3)
    # Genuine: (0,1) = 1.0, (2,3) = 0.8. Impostor: (0,2) 0, (0,3) 0.6, (1,2) 0, (1,3) 0.6.
    np.testing.assert_allclose(sorted(genuine), [0.8, 1.0], atol=1e-6)
    np.testing.assert_allclose(sorted(impostor), [0.0, 0.0, 0.6, 0.6], atol=1e-6)


def test_threshold_at_fmr_golden():
    # 1000 impostor scores 0.000, 0.001, ..., 0.999. FMR 1e-2 allows 10 false matches: the
    # threshold is the 11th highest score, 0.989, and exactly 10 scores lie above it.
    impostor = np.arange(1000) / 1000.0
    threshold = metrics.threshold_at_fmr(impostor, 1e-2)
    assert threshold.value == pytest.approx(0.989)
    assert threshold.false_matches == 10 and threshold.impostor_pairs == 1000
    assert metrics.success_rate(impostor, threshold) == pytest.approx(0.01)
    # A synthetic attack: 3 of 4 reconstructions score above 0.989.
    assert metrics.success_rate(np.array([0.99, 0.995, 1.0, 0.5]), threshold) == 0.75


def test_threshold_needs_enough_pairs():
    with pytest.raises(ValueError, match="FMR 0.001 needs >= 10000 impostor pairs, got 1000"):
        metrics.threshold_at_fmr(np.zeros(1000), 1e-3)
    supported = metrics.thresholds_at_fmrs(np.random.default_rng(0).random(20000))
    assert sorted(supported) == [1e-3, 1e-2]  # 1e-4 would need 10^5 pairs


def test_threshold_fmr_holds_on_random_scores():
    rng = np.random.default_rng(1)
    impostor = rng.normal(0.8, 0.05, 200_000)
    for fmr, threshold in metrics.thresholds_at_fmrs(impostor).items():
        assert np.mean(impostor > threshold.value) <= fmr
        # ... and it is the lowest such threshold: one step down lets too many through.
        lower = np.sort(impostor)[::-1][threshold.false_matches + 1]
        assert np.mean(impostor > lower) > fmr or lower == threshold.value


def test_nearest_neighbour_scores():
    gallery = np.array([[1, 0], [0, 1], [0.6, 0.8]], np.float32)
    probes = np.array([[0.8, 0.6], [0, 1]], np.float32)
    index, scores = metrics.nearest_neighbour_scores(probes, gallery)
    # Probe 0: cosines 0.8, 0.6, 0.96 -> gallery 2. Probe 1: 0, 1, 0.8 -> gallery 1.
    np.testing.assert_array_equal(index, [2, 1])
    np.testing.assert_allclose(scores, [0.96, 1.0], atol=1e-6)
